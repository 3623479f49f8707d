package cache_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// TestFailClosedWhenRedisStops kills the test's redis-server mid-run: the
// next check is a store_unavailable denial, writes fail, and everything
// works again once Redis is back (and re-initialised and re-fed, since the
// test server keeps no data).
func TestFailClosedWhenRedisStops(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	st := backend{rdb: srv.Client(t)}.store(t, cache.Options{})
	a := email(t, "ok@example.de")
	feed := upd(rid(t, 1), v(1), c4("Ja", "", "", ""), a)
	mustApply(t, st, feed)
	g := guard.New(st, guard.Options{Timeout: 5 * time.Second})

	d, err := g.Check(ctx, guard.Email, a)
	if err != nil || !d.Allowed || d.Reason != guard.ReasonGranted {
		t.Fatalf("before stop: %+v, %v", d, err)
	}

	srv.Stop(t)
	d, err = g.Check(ctx, guard.Email, a)
	if !errors.Is(err, guard.ErrUnavailable) || d.Allowed || d.Reason != guard.ReasonStoreUnavailable {
		t.Fatalf("with Redis stopped: %+v, %v; want store_unavailable denial", d, err)
	}
	ds, err := g.CheckBatch(ctx, guard.Email, []guard.Identifier{a, a})
	if !errors.Is(err, guard.ErrUnavailable) || ds[0].Allowed || ds[1].Reason != guard.ReasonStoreUnavailable {
		t.Fatalf("batch with Redis stopped: %+v, %v", ds, err)
	}
	if _, err := st.Apply(ctx, []guard.Update{feed}); err == nil {
		t.Fatal("Apply succeeded with Redis stopped")
	}
	if err := st.Ping(ctx); err == nil {
		t.Fatal("Ping succeeded with Redis stopped")
	}
	if _, err := st.Seen(ctx, []string{"x"}); err == nil {
		t.Fatal("Seen succeeded with Redis stopped")
	}

	srv.Restart(t)
	// The pool may hold dead connections for a moment; wait for Init to pass.
	deadline := time.Now().Add(20 * time.Second)
	for err := st.Init(ctx); err != nil; err = st.Init(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("Init after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d, err = g.Check(ctx, guard.Email, a)
	if err != nil || d.Allowed || d.Reason != guard.ReasonUnknownContact {
		t.Fatalf("after restart (empty Redis): %+v, %v", d, err)
	}
	mustApply(t, st, feed)
	d, err = g.Check(ctx, guard.Email, a)
	if err != nil || !d.Allowed {
		t.Fatalf("after restart and re-feed: %+v, %v", d, err)
	}
}

// TestFailClosedTimeout: a store that does not answer within the guard's
// timeout is a denial. CLIENT PAUSE makes the real server hold replies.
func TestFailClosedTimeout(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	st := backend{rdb: srv.Client(t)}.store(t, cache.Options{})
	a := email(t, "slow@example.de")
	mustApply(t, st, upd(rid(t, 2), v(1), c4("Ja", "", "", ""), a))
	admin := srv.Client(t)
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "3000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "CLIENT", "UNPAUSE") })
	g := guard.New(st, guard.Options{Timeout: 100 * time.Millisecond})
	d, err := g.Check(ctx, guard.Email, a)
	if !errors.Is(err, guard.ErrUnavailable) || d.Allowed || d.Reason != guard.ReasonStoreUnavailable {
		t.Fatalf("paused Redis: %+v, %v", d, err)
	}
}

func TestFailClosedEmbeddedClosed(t *testing.T) {
	ctx := context.Background()
	e, err := cache.NewEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	st := backend{rdb: e.Client()}.store(t, cache.Options{})
	e.Close()
	d, err := guard.New(st, guard.Options{}).Check(ctx, guard.Email, email(t, "a@b.de"))
	if !errors.Is(err, guard.ErrUnavailable) || d.Allowed {
		t.Fatalf("closed embedded store: %+v, %v", d, err)
	}
}
