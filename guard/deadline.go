package guard

import (
	"context"
	"sync/atomic"
	"time"
)

// Single checks run their store lookup under a deadline shared with the
// other checks that start within the same short window, rather than under a
// context and timer of their own: context.WithTimeout on a request's
// context allocates a timer and a context, registers the child with its
// parent and deregisters it again, about 2 µs per check on the reference
// machine, a tenth of what the whole check costs beside its Redis round
// trip. One shared context per window needs one timer per window instead.
//
// The cost is precision and the caller's cancellation: a lookup is cut off
// between Timeout and Timeout+Timeout/sharedSlackDiv after it starts (at
// most 275 ms for the default 250 ms), and a caller that gives up (a
// client that disconnects) no longer stops a lookup already under way; it
// runs out at that deadline. A caller that is already done when the check
// starts is refused before the store is asked. Batches, which are rare and
// long, keep a context of their own.

// sharedSlackDiv sets the window: a shared deadline serves the lookups
// starting during Timeout/sharedSlackDiv.
const sharedSlackDiv = 10

// sharedDeadlines hands out the current shared deadline context.
type sharedDeadlines struct {
	timeout, slack time.Duration
	cur            atomic.Pointer[sharedDeadline]
}

type sharedDeadline struct {
	ctx    context.Context
	cancel context.CancelFunc // called by the context's own timer at at
	at     time.Time
}

func newSharedDeadlines(timeout time.Duration) *sharedDeadlines {
	return &sharedDeadlines{timeout: timeout, slack: timeout / sharedSlackDiv}
}

// bound returns a context that carries caller's values and ends at a
// deadline between now+timeout and now+timeout+slack.
func (d *sharedDeadlines) bound(caller context.Context, now time.Time) context.Context {
	want := now.Add(d.timeout)
	s := d.cur.Load()
	if s == nil || s.at.Before(want) {
		at := want.Add(d.slack)
		ctx, cancel := context.WithDeadline(context.Background(), at)
		next := &sharedDeadline{ctx: ctx, cancel: cancel, at: at}
		// Another check may have installed a fresh one meanwhile; either
		// serves. The replaced context is left to its timer.
		d.cur.CompareAndSwap(s, next)
		s = next
	}
	return &boundCtx{Context: caller, bound: s.ctx}
}

// boundCtx is the caller's context for values and the shared deadline
// context for everything else: Deadline, Done, Err and, through Value of
// the context package's own key, cancellation of contexts derived from it
// (they attach to the shared context, which really is done when Done is
// closed) and context.Cause.
type boundCtx struct {
	context.Context // the caller's
	bound           context.Context
}

func (c *boundCtx) Deadline() (time.Time, bool) { return c.bound.Deadline() }
func (c *boundCtx) Done() <-chan struct{}       { return c.bound.Done() }
func (c *boundCtx) Err() error                  { return c.bound.Err() }

// Value answers from the shared context first, which holds no values of
// its own, only the context package's key for its cancellation state.
func (c *boundCtx) Value(key any) any {
	if v := c.bound.Value(key); v != nil {
		return v
	}
	return c.Context.Value(key)
}

func (c *boundCtx) String() string { return "guard.boundCtx" }
