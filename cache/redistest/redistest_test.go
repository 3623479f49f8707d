package redistest_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache/redistest"
)

func TestStartStopRestart(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
	if got := srv.URL(); got != "redis://"+srv.Addr()+"/0" {
		t.Fatalf("URL = %q", got)
	}

	srv.Stop(t)
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING after Stop succeeded; want error")
	}

	srv.Restart(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS k after Restart = %d, %v; want 0 (empty data)", n, err)
	}
}

func TestStartCluster(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartCluster(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}})
	t.Cleanup(func() { _ = c.Close() })
	for _, k := range []string{"a", "b", "{x}:1"} { // different slots, one node
		if err := c.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}
	masters := 0
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		masters++
		if got := m.Options().Addr; got != srv.Addr() {
			t.Errorf("master at %s, want %s", got, srv.Addr())
		}
		return nil
	})
	if err != nil || masters != 1 {
		t.Fatalf("ForEachMaster: %d masters, %v", masters, err)
	}
}
