package guard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// Store is what the guard needs from a consent store.
//
// Lookup returns, for each identifier in order, the live records that carry
// it: the record with that Id for KindRecordID, every record whose current
// identifiers include it for email and phone. Tombstones are left out. A
// store answers a whole batch in a bounded number of round trips.
type Store interface {
	Lookup(ctx context.Context, ids []Identifier) ([][]Record, error)
}

// DefaultTimeout bounds the store lookup of one check.
const DefaultTimeout = 250 * time.Millisecond

// DefaultBatchTimeout bounds the store lookup of a batch (up to 10,000
// identifiers in a few pipelines): it is still one bounded answer, but one
// that carries a lot more work than a single check.
const DefaultBatchTimeout = 2 * time.Second

// Options configure a Guard. The zero value gives the German vocabulary,
// region DE, a 250 ms store timeout, the wall clock and a discarding logger.
type Options struct {
	Vocabulary Vocabulary
	Region     string // default region for phone numbers without a country code
	// Timeout bounds the store lookup of one check (to within a tenth, see
	// Check); default DefaultTimeout.
	Timeout time.Duration
	// BatchTimeout bounds the lookup of a CheckBatch of more than one
	// identifier; default DefaultBatchTimeout, never less than Timeout.
	BatchTimeout time.Duration
	Clock        func() time.Time
	Logger       *slog.Logger
	// Observe, when set, sees every decision the guard makes (audit log,
	// metrics). It must not block.
	Observe func(Decision)
}

// Guard makes decisions. It is safe for concurrent use.
type Guard struct {
	store   Store
	vocab   Vocabulary
	region  string
	timeout time.Duration
	batch   time.Duration
	shared  *sharedDeadlines // single checks' store deadline (deadline.go)
	now     func() time.Time
	log     *slog.Logger
	observe func(Decision)
}

// New returns a Guard asking store.
func New(store Store, opts Options) *Guard {
	g := &Guard{
		store:   store,
		vocab:   opts.Vocabulary.OrDefault(),
		region:  opts.Region,
		timeout: opts.Timeout,
		batch:   opts.BatchTimeout,
		now:     opts.Clock,
		log:     opts.Logger,
		observe: opts.Observe,
	}
	if g.region == "" {
		g.region = "DE"
	}
	if g.timeout <= 0 {
		g.timeout = DefaultTimeout
	}
	if g.batch <= 0 {
		g.batch = DefaultBatchTimeout
	}
	g.batch = max(g.batch, g.timeout)
	g.shared = newSharedDeadlines(g.timeout)
	if g.now == nil {
		g.now = time.Now
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	return g
}

// Vocabulary returns the words the guard classifies consent with.
func (g *Guard) Vocabulary() Vocabulary { return g.vocab }

// Region returns the default phone region.
func (g *Guard) Region() string { return g.region }

// Parse normalises a raw identifier of the given kind.
func (g *Guard) Parse(k Kind, raw string) (Identifier, error) {
	switch k {
	case KindEmail:
		return ParseEmail(raw)
	case KindPhone:
		return ParsePhone(raw, g.region)
	case KindRecordID:
		return ParseRecordID(raw)
	}
	return Identifier{}, fmt.Errorf("%w: unknown identifier kind", ErrInvalidIdentifier)
}

// Check decides whether ch may be used to reach id.
//
// The Decision is always filled in and is a denial whenever err is non-nil:
// ErrUnavailable (reason store_unavailable) when the store did not answer in
// time, ErrInvalidIdentifier (reason invalid_identifier) for a zero
// Identifier.
//
// The store lookup is bounded by Options.Timeout, give or take a tenth:
// checks starting within Timeout/10 of each other share one deadline
// (deadline.go), which ends between Timeout and 1.1 × Timeout after each of
// them started. A ctx that is already done is refused without asking the
// store; a ctx cancelled while the lookup runs does not cut it short (the
// lookup ends at that deadline at the latest), and a ctx deadline sooner
// than the shared one applies as it is.
func (g *Guard) Check(ctx context.Context, ch Channel, id Identifier) (Decision, error) {
	if int(ch) >= NumChannels {
		d := g.deny(ch, id, ReasonInvalidIdentifier)
		return d, fmt.Errorf("%w: %d", ErrInvalidChannel, uint8(ch))
	}
	if id.zero() {
		d := g.deny(ch, id, ReasonInvalidIdentifier)
		g.emit1(d)
		return d, fmt.Errorf("%w: empty identifier", ErrInvalidIdentifier)
	}
	ids := [1]Identifier{id}
	recs, err := g.lookup(ctx, ch, ids[:])
	if err != nil {
		d := g.deny(ch, id, ReasonStoreUnavailable)
		g.emit1(d)
		return d, err
	}
	d := Decide(g.vocab, ch, recs[0])
	d.Identifier = id
	d.At = g.now()
	g.emit1(d)
	return d, nil
}

// lookup asks the store under the guard's timeout (the batch timeout for
// more than one identifier) and turns every failure
// into ErrUnavailable.
//
// A caller whose own deadline falls within the bound the guard would set
// (the timeout; for a single check up to the shared deadline's slack
// beyond) bounds the store at least as tightly; its context is passed on as
// it is. Otherwise a single check's lookup runs under the shared deadline
// of the checks starting around the same time (deadline.go), a batch's
// under a new context with the batch timeout.
func (g *Guard) lookup(ctx context.Context, ch Channel, ids []Identifier) ([][]Record, error) {
	var recs [][]Record
	var err error
	limit := g.batch
	if len(ids) == 1 {
		limit = g.timeout + g.shared.slack
	}
	now := time.Now()
	switch dl, ok := ctx.Deadline(); {
	case ok && !dl.After(now.Add(limit)):
		recs, err = g.store.Lookup(ctx, ids)
	case len(ids) == 1:
		if err = ctx.Err(); err == nil {
			recs, err = g.store.Lookup(g.shared.bound(ctx, now), ids)
		}
	default:
		lctx, cancel := context.WithTimeout(ctx, limit)
		recs, err = g.store.Lookup(lctx, ids)
		cancel()
	}
	if err == nil && len(recs) != len(ids) {
		err = fmt.Errorf("store answered %d of %d lookups", len(recs), len(ids))
	}
	if err == nil {
		return recs, nil
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	} else if !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	g.log.Warn("consent lookup failed; denying", "channel", ch.String(), "count", len(ids), "err", err)
	return nil, err
}

// CheckBatch decides for many identifiers with one store lookup. It returns
// one decision per identifier, in order. Zero identifiers (the caller's
// parse failures) get invalid_identifier and are not looked up. When the
// store fails every decision is store_unavailable and err wraps
// ErrUnavailable.
func (g *Guard) CheckBatch(ctx context.Context, ch Channel, ids []Identifier) ([]Decision, error) {
	out := make([]Decision, len(ids))
	if int(ch) >= NumChannels {
		for i, id := range ids {
			out[i] = g.deny(ch, id, ReasonInvalidIdentifier)
		}
		return out, fmt.Errorf("%w: %d", ErrInvalidChannel, uint8(ch))
	}
	// ask is ids itself unless some are zero (the caller's parse
	// failures): then only the valid ones, with their positions in pos.
	ask, pos := ids, []int(nil)
	if slices.ContainsFunc(ids, Identifier.zero) {
		ask, pos = make([]Identifier, 0, len(ids)), make([]int, 0, len(ids))
		for i, id := range ids {
			if id.zero() {
				out[i] = g.deny(ch, id, ReasonInvalidIdentifier)
				continue
			}
			ask = append(ask, id)
			pos = append(pos, i)
		}
	}
	at := func(j int) int {
		if pos == nil {
			return j
		}
		return pos[j]
	}
	if len(ask) == 0 {
		g.emit(out)
		return out, nil
	}
	recs, err := g.lookup(ctx, ch, ask)
	if err != nil {
		for j := range ask {
			i := at(j)
			out[i] = g.deny(ch, ids[i], ReasonStoreUnavailable)
		}
		g.emit(out)
		return out, err
	}
	// One backing array for every decision's records instead of one
	// allocation per decision.
	n := 0
	for _, rs := range recs {
		n += len(rs)
	}
	refs := make([]RecordRef, 0, n)
	var vc versionCache
	now := g.now()
	for j := range ask {
		i := at(j)
		var d Decision
		d, refs = decide(g.vocab, ch, recs[j], refs, &vc)
		d.Identifier = ids[i]
		d.At = now
		out[i] = d
	}
	g.emit(out)
	return out, nil
}

func (g *Guard) deny(ch Channel, id Identifier, r Reason) Decision {
	return Decision{Channel: ch, Reason: r, Records: []RecordRef{}, Identifier: id, At: g.now()}
}

func (g *Guard) emit1(d Decision) {
	if g.observe != nil {
		g.observe(d)
	}
}

func (g *Guard) emit(ds []Decision) {
	if g.observe == nil {
		return
	}
	for _, d := range ds {
		g.observe(d)
	}
}
