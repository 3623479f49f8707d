package guard

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

type ctxKey struct{}

func TestSharedDeadlines(t *testing.T) {
	const timeout = 200 * time.Millisecond
	d := newSharedDeadlines(timeout)
	caller := context.WithValue(context.Background(), ctxKey{}, "v")
	now := time.Now()

	a := d.bound(caller, now)
	dl, ok := a.Deadline()
	if !ok || dl.Before(now.Add(timeout)) || dl.After(now.Add(timeout+timeout/sharedSlackDiv)) {
		t.Fatalf("deadline %v after start, want within [%v, %v]", dl.Sub(now), timeout, timeout+timeout/sharedSlackDiv)
	}
	if a.Value(ctxKey{}) != "v" {
		t.Fatal("caller's value lost")
	}
	// Within the window: the same deadline, the same Done channel.
	b := d.bound(context.Background(), now.Add(timeout/sharedSlackDiv/2))
	if b.Done() != a.Done() {
		t.Fatal("a check within the window got a deadline of its own")
	}
	if b.Value(ctxKey{}) != nil {
		t.Fatal("one caller's value seen by another")
	}
	// Past the window: the shared deadline would cut the check short, so
	// it gets a new one that gives it the whole timeout.
	later := now.Add(timeout/sharedSlackDiv + time.Millisecond)
	c := d.bound(caller, later)
	if c.Done() == a.Done() {
		t.Fatal("a check past the window shares a deadline shorter than the timeout")
	}
	if dl, _ := c.Deadline(); dl.Before(later.Add(timeout)) {
		t.Fatalf("new deadline %v after start, want >= %v", dl.Sub(later), timeout)
	}
}

func TestBoundContextEnds(t *testing.T) {
	d := newSharedDeadlines(20 * time.Millisecond)
	caller, cancel := context.WithCancel(context.Background())
	ctx := d.bound(caller, time.Now())
	// The caller's cancellation is not the lookup's (deadline.go).
	cancel()
	if ctx.Err() != nil {
		t.Fatalf("Err = %v right after start", ctx.Err())
	}
	derived, stop := context.WithCancel(ctx)
	defer stop()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("shared deadline never ended the context")
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) || !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, Cause = %v", ctx.Err(), context.Cause(ctx))
	}
	select {
	case <-derived.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a context derived from the bound one was not cancelled with it")
	}
}

// Contexts derived from a bound one attach to the shared context's
// cancellation (Value answers the context package's key from it) rather
// than each starting a goroutine that waits on Done.
func TestBoundContextDerivedWithoutGoroutines(t *testing.T) {
	d := newSharedDeadlines(time.Hour)
	ctx := d.bound(context.Background(), time.Now())
	before := runtime.NumGoroutine()
	var stops []context.CancelFunc
	for range 200 {
		_, stop := context.WithTimeout(ctx, time.Hour)
		stops = append(stops, stop)
	}
	after := runtime.NumGoroutine()
	for _, stop := range stops {
		stop()
	}
	if after-before > 50 {
		t.Fatalf("200 derived contexts started %d goroutines", after-before)
	}
	d.cur.Load().cancel()
}
