package guard_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard"
)

// memStore answers lookups from a fixed map. The decision rules are pure;
// the Redis store has its own contract suite in package cache.
type memStore struct {
	byKey map[string][]guard.Record
	err   error
	calls int
}

func (m *memStore) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	m.calls++
	if m.err != nil {
		return nil, m.err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([][]guard.Record, len(ids))
	for i, id := range ids {
		out[i] = m.byKey[id.Key()]
	}
	return out, nil
}

func rec(id string, consent ...string) guard.Record {
	r := guard.Record{ID: id, Object: "Contact", Version: time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)}
	copy(r.Consent[:], consent)
	return r
}

func mustEmail(tb testing.TB, s string) guard.Identifier {
	tb.Helper()
	id, err := guard.ParseEmail(s)
	if err != nil {
		tb.Fatalf("ParseEmail(%q): %v", s, err)
	}
	return id
}

var fixedNow = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)

func newGuard(st guard.Store, seen *[]guard.Decision) *guard.Guard {
	return guard.New(st, guard.Options{
		Clock: func() time.Time { return fixedNow },
		Observe: func(d guard.Decision) {
			if seen != nil {
				*seen = append(*seen, d)
			}
		},
	})
}

func TestCheckRules(t *testing.T) {
	// Consent order in rec(): email, phone, post, storage.
	tests := []struct {
		name    string
		ch      guard.Channel
		recs    []guard.Record
		allowed bool
		reason  guard.Reason
	}{
		{"no record", guard.Email, nil, false, guard.ReasonUnknownContact},
		{"granted", guard.Email, []guard.Record{rec("a", "Ja")}, true, guard.ReasonGranted},
		{"granted, storage granted", guard.Email, []guard.Record{rec("a", "Ja", "", "", "Ja")}, true, guard.ReasonGranted},
		{"granted, storage pending", guard.Email, []guard.Record{rec("a", "Ja", "", "", "Abfrage ausstehend")}, true, guard.ReasonGranted},
		{"denied", guard.Email, []guard.Record{rec("a", "Nein")}, false, guard.ReasonDenied},
		{"pending", guard.Email, []guard.Record{rec("a", "Abfrage ausstehend")}, false, guard.ReasonPending},
		{"missing", guard.Email, []guard.Record{rec("a", "")}, false, guard.ReasonMissing},
		{"unknown word counts as missing", guard.Email, []guard.Record{rec("a", "Vielleicht")}, false, guard.ReasonMissing},
		{"case and space tolerant", guard.Email, []guard.Record{rec("a", " ja ")}, true, guard.ReasonGranted},
		{"storage denied beats granted", guard.Email, []guard.Record{rec("a", "Ja", "", "", "Nein")}, false, guard.ReasonStorageDenied},
		{"phone channel reads phone", guard.Phone, []guard.Record{rec("a", "Ja", "Nein")}, false, guard.ReasonDenied},
		{"post channel", guard.Post, []guard.Record{rec("a", "Nein", "Nein", "Ja")}, true, guard.ReasonGranted},
		{"storage channel itself", guard.Storage, []guard.Record{rec("a", "", "", "", "Ja")}, true, guard.ReasonGranted},
		{"storage channel denied", guard.Storage, []guard.Record{rec("a", "Ja", "", "", "Nein")}, false, guard.ReasonStorageDenied},
		{"all records granted", guard.Email, []guard.Record{rec("a", "Ja"), rec("b", "Ja")}, true, guard.ReasonGranted},
		{"one of two missing", guard.Email, []guard.Record{rec("a", "Ja"), rec("b", "")}, false, guard.ReasonMissing},
		{"pending beats missing", guard.Email, []guard.Record{rec("a", ""), rec("b", "Abfrage ausstehend")}, false, guard.ReasonPending},
		{"denied beats pending", guard.Email, []guard.Record{rec("a", "Abfrage ausstehend"), rec("b", "Nein"), rec("c", "Ja")}, false, guard.ReasonDenied},
		{"storage denied beats denied", guard.Email, []guard.Record{rec("a", "Nein"), rec("b", "Ja", "", "", "Nein")}, false, guard.ReasonStorageDenied},
		{"tombstone alone is unknown", guard.Email, []guard.Record{{ID: "a", Deleted: true}}, false, guard.ReasonUnknownContact},
		{"tombstone ignored beside live", guard.Email, []guard.Record{{ID: "a", Deleted: true}, rec("b", "Ja")}, true, guard.ReasonGranted},
	}
	id := mustEmail(t, "Info@Firma.de")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &memStore{byKey: map[string][]guard.Record{id.Key(): tt.recs}}
			var seen []guard.Decision
			d, err := newGuard(st, &seen).Check(context.Background(), tt.ch, id)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if d.Allowed != tt.allowed || d.Reason != tt.reason {
				t.Fatalf("got allowed=%v reason=%s, want allowed=%v reason=%s", d.Allowed, d.Reason, tt.allowed, tt.reason)
			}
			if d.Channel != tt.ch || !d.At.Equal(fixedNow) || d.Identifier != id {
				t.Fatalf("decision metadata = %+v", d)
			}
			if len(seen) != 1 || seen[0].Reason != tt.reason {
				t.Fatalf("observer saw %+v", seen)
			}
			live := 0
			for _, r := range tt.recs {
				if !r.Deleted {
					live++
				}
			}
			if len(d.Records) != live {
				t.Fatalf("records = %+v, want %d", d.Records, live)
			}
		})
	}
}

func TestDecisionRecordRefs(t *testing.T) {
	id := mustEmail(t, "a@b.de")
	r := rec("003000000000001AAA", "Nein")
	st := &memStore{byKey: map[string][]guard.Record{id.Key(): {r}}}
	d, err := newGuard(st, nil).Check(context.Background(), guard.Email, id)
	if err != nil {
		t.Fatal(err)
	}
	want := guard.RecordRef{ID: r.ID, Object: "Contact", Consent: "Nein", Version: "2026-11-28T09:15:02.000Z", Reason: guard.ReasonDenied}
	if len(d.Records) != 1 || d.Records[0] != want {
		t.Fatalf("records = %+v, want %+v", d.Records, want)
	}
}

func TestCheckFailsClosed(t *testing.T) {
	id := mustEmail(t, "a@b.de")
	granted := map[string][]guard.Record{id.Key(): {rec("a", "Ja")}}
	t.Run("store error", func(t *testing.T) {
		st := &memStore{byKey: granted, err: errors.New("dial tcp: connection refused")}
		d, err := newGuard(st, nil).Check(context.Background(), guard.Email, id)
		if !errors.Is(err, guard.ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		if d.Allowed || d.Reason != guard.ReasonStoreUnavailable {
			t.Fatalf("decision = %+v", d)
		}
	})
	t.Run("store too slow", func(t *testing.T) {
		slow := slowStore{}
		g := guard.New(slow, guard.Options{Timeout: time.Millisecond})
		d, err := g.Check(context.Background(), guard.Email, id)
		if !errors.Is(err, guard.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if d.Allowed || d.Reason != guard.ReasonStoreUnavailable {
			t.Fatalf("decision = %+v", d)
		}
	})
	// The guard's timeout bounds the store whatever deadline the caller
	// brings: a later one (the guard's applies) or a sooner one (the
	// caller's applies, passed on as it is).
	t.Run("caller deadline later than timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		g := guard.New(slowStore{}, guard.Options{Timeout: time.Millisecond})
		d, err := g.Check(ctx, guard.Email, id)
		if !errors.Is(err, guard.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if d.Allowed || d.Reason != guard.ReasonStoreUnavailable {
			t.Fatalf("decision = %+v", d)
		}
	})
	t.Run("caller deadline sooner than timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		g := guard.New(slowStore{}, guard.Options{Timeout: time.Hour})
		ds, err := g.CheckBatch(ctx, guard.Email, []guard.Identifier{id})
		if !errors.Is(err, guard.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if ds[0].Allowed || ds[0].Reason != guard.ReasonStoreUnavailable {
			t.Fatalf("decision = %+v", ds[0])
		}
	})
	t.Run("caller cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		d, err := newGuard(&memStore{byKey: granted}, nil).Check(ctx, guard.Email, id)
		if !errors.Is(err, guard.ErrUnavailable) || d.Allowed {
			t.Fatalf("d=%+v err=%v", d, err)
		}
	})
	t.Run("short answer", func(t *testing.T) {
		d, err := newGuard(shortStore{}, nil).Check(context.Background(), guard.Email, id)
		if !errors.Is(err, guard.ErrUnavailable) || d.Allowed {
			t.Fatalf("d=%+v err=%v", d, err)
		}
	})
	t.Run("zero identifier", func(t *testing.T) {
		st := &memStore{byKey: granted}
		d, err := newGuard(st, nil).Check(context.Background(), guard.Email, guard.Identifier{})
		if !errors.Is(err, guard.ErrInvalidIdentifier) || d.Allowed || d.Reason != guard.ReasonInvalidIdentifier {
			t.Fatalf("d=%+v err=%v", d, err)
		}
		if st.calls != 0 {
			t.Fatalf("store asked for a zero identifier")
		}
	})
}

type slowStore struct{}

func (slowStore) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

type shortStore struct{}

func (shortStore) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	return nil, nil
}

func TestCheckBatch(t *testing.T) {
	st := &memStore{byKey: map[string][]guard.Record{}}
	var ids []guard.Identifier
	for i := range 50 {
		id := mustEmail(t, fmt.Sprintf("p%d@firma.de", i))
		ids = append(ids, id)
		switch i % 3 {
		case 0:
			st.byKey[id.Key()] = []guard.Record{rec(fmt.Sprint(i), "Ja")}
		case 1:
			st.byKey[id.Key()] = []guard.Record{rec(fmt.Sprint(i), "Nein")}
		}
	}
	ids[7] = guard.Identifier{} // a caller's parse failure
	ds, err := newGuard(st, nil).CheckBatch(context.Background(), guard.Email, ids)
	if err != nil {
		t.Fatal(err)
	}
	if st.calls != 1 {
		t.Fatalf("store calls = %d, want 1 for the whole batch", st.calls)
	}
	for i, d := range ds {
		want := []guard.Reason{guard.ReasonGranted, guard.ReasonDenied, guard.ReasonUnknownContact}[i%3]
		if i == 7 {
			want = guard.ReasonInvalidIdentifier
		}
		if d.Reason != want || d.Allowed != (want == guard.ReasonGranted) {
			t.Errorf("item %d: %+v, want %s", i, d, want)
		}
	}
	// Decisions share one backing array for their records; each must
	// still be its own: appending to one leaves its neighbour alone.
	_ = append(ds[0].Records, guard.RecordRef{ID: "x"})
	if ds[1].Records[0].ID != "1" || len(ds[3].Records) != 1 || ds[3].Records[0].ID != "3" {
		t.Fatalf("records bleed between decisions: %+v / %+v", ds[1].Records, ds[3].Records)
	}
	// No zero identifier: the ids go to the store as they are.
	ds, err = newGuard(st, nil).CheckBatch(context.Background(), guard.Email, ids[:7])
	if err != nil || len(ds) != 7 || ds[3].Reason != guard.ReasonGranted || ds[4].Reason != guard.ReasonDenied || ds[5].Reason != guard.ReasonUnknownContact {
		t.Fatalf("ds=%+v err=%v", ds, err)
	}
	// Zero identifiers first and last.
	ids2 := append([]guard.Identifier{{}}, ids[:4]...)
	ids2 = append(ids2, guard.Identifier{})
	ds, err = newGuard(st, nil).CheckBatch(context.Background(), guard.Email, ids2)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []guard.Reason{guard.ReasonInvalidIdentifier, guard.ReasonGranted, guard.ReasonDenied, guard.ReasonUnknownContact, guard.ReasonGranted, guard.ReasonInvalidIdentifier} {
		if ds[i].Reason != want || ds[i].Identifier != ids2[i] {
			t.Errorf("item %d: %+v, want %s", i, ds[i], want)
		}
	}
	st.err = errors.New("boom")
	ds, err = newGuard(st, nil).CheckBatch(context.Background(), guard.Email, ids)
	if !errors.Is(err, guard.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
	for i, d := range ds {
		if d.Allowed || (i != 7 && d.Reason != guard.ReasonStoreUnavailable) {
			t.Fatalf("item %d after store failure: %+v", i, d)
		}
	}
}

func TestVersionString(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 678_900_000, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999_999_999, time.FixedZone("CET", 3600)),
		time.UnixMilli(1),
	} {
		if got, want := guard.VersionString(tm), tm.UTC().Format("2006-01-02T15:04:05.000Z"); got != want {
			t.Errorf("VersionString(%v) = %s, want %s", tm, got, want)
		}
	}
	if guard.VersionString(time.Time{}) != "" {
		t.Error("zero time should render empty")
	}
}

// delayStore answers after a delay, unless its context ends first.
type delayStore struct{ d time.Duration }

func (s delayStore) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	select {
	case <-time.After(s.d):
		return make([][]guard.Record, len(ids)), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A batch carries more work than one check and has its own bound.
func TestBatchTimeout(t *testing.T) {
	g := guard.New(delayStore{200 * time.Millisecond}, guard.Options{Timeout: 5 * time.Millisecond, BatchTimeout: 10 * time.Second})
	id := mustEmail(t, "a@b.de")
	if _, err := g.Check(context.Background(), guard.Email, id); !errors.Is(err, guard.ErrUnavailable) {
		t.Fatalf("single check past Timeout: %v", err)
	}
	ds, err := g.CheckBatch(context.Background(), guard.Email, []guard.Identifier{id, mustEmail(t, "c@d.de")})
	if err != nil || ds[0].Reason != guard.ReasonUnknownContact {
		t.Fatalf("batch within BatchTimeout: %+v %v", ds, err)
	}
	g = guard.New(delayStore{time.Minute}, guard.Options{Timeout: 5 * time.Millisecond, BatchTimeout: 20 * time.Millisecond})
	if _, err := g.CheckBatch(context.Background(), guard.Email, []guard.Identifier{id, id}); !errors.Is(err, guard.ErrUnavailable) {
		t.Fatalf("batch past BatchTimeout: %v", err)
	}
}

// ctxStore records the context of its last lookup.
type ctxStore struct{ got context.Context }

func (s *ctxStore) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	s.got = ctx
	return make([][]guard.Record, len(ids)), nil
}

type valueKey struct{}

// A single check's lookup carries the caller's values and a deadline of at
// most the guard's timeout plus a tenth; a caller already done is refused
// without asking the store.
func TestCheckLookupContext(t *testing.T) {
	id := mustEmail(t, "a@b.de")
	st := &ctxStore{}
	g := guard.New(st, guard.Options{Timeout: time.Second})
	ctx := context.WithValue(context.Background(), valueKey{}, "trace")
	start := time.Now()
	if _, err := g.Check(ctx, guard.Email, id); err != nil {
		t.Fatal(err)
	}
	if st.got.Value(valueKey{}) != "trace" {
		t.Fatal("caller's value not passed to the store")
	}
	dl, ok := st.got.Deadline()
	if !ok || dl.Before(start.Add(time.Second)) || dl.After(time.Now().Add(1100*time.Millisecond)) {
		t.Fatalf("lookup deadline %v after start, want within [1s, 1.1s]", dl.Sub(start))
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	st.got = nil
	d, err := g.Check(done, guard.Email, id)
	if !errors.Is(err, guard.ErrUnavailable) || !errors.Is(err, context.Canceled) || d.Allowed || d.Reason != guard.ReasonStoreUnavailable {
		t.Fatalf("check with a cancelled caller: %+v, %v", d, err)
	}
	if st.got != nil {
		t.Fatal("store asked for a caller that was already done")
	}
}

// A single check whose caller's deadline falls within the shared one's
// reach passes the caller's context on as it is: the lookup never runs past
// the caller's own deadline.
func TestCheckCallerDeadlineWithinSlack(t *testing.T) {
	id := mustEmail(t, "a@b.de")
	st := &ctxStore{}
	g := guard.New(st, guard.Options{Timeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 1050*time.Millisecond)
	defer cancel()
	if _, err := g.Check(ctx, guard.Email, id); err != nil {
		t.Fatal(err)
	}
	want, _ := ctx.Deadline()
	if got, ok := st.got.Deadline(); !ok || !got.Equal(want) {
		t.Fatalf("lookup deadline %v, want the caller's %v", got, want)
	}
}

// An empty vocabulary means the default one; any word given keeps it as is.
func TestVocabularyOrDefault(t *testing.T) {
	if got := (guard.Vocabulary{}).OrDefault(); !slices.Equal(got.Granted, []string{"Ja"}) || !slices.Equal(got.Denied, []string{"Nein"}) {
		t.Fatalf("zero vocabulary: %+v", got)
	}
	only := guard.Vocabulary{Pending: []string{"offen"}}
	if got := only.OrDefault(); len(got.Granted) != 0 || !slices.Equal(got.Pending, []string{"offen"}) {
		t.Fatalf("pending-only vocabulary replaced: %+v", got)
	}
}
