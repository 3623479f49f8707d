package cache_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
)

// TestInitRefusesEvictingRedis: a Redis that may evict any key under memory
// pressure (allkeys-*) is refused; noeviction and volatile-* (only keys
// with a TTL, here the dedupe markers) are accepted, and so is a user who
// may not read the configuration.
func TestInitRefusesEvictingRedis(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	noconfig := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "noconfig", Password: "pw"})
	t.Cleanup(func() { noconfig.Close() })
	for _, tc := range []struct {
		policy string
		refuse bool
	}{
		{"noeviction", false},
		{"volatile-lru", false},
		{"volatile-ttl", false},
		{"allkeys-lru", true},
		{"allkeys-lfu", true},
		{"allkeys-random", true},
	} {
		if err := admin.ConfigSet(ctx, "maxmemory-policy", tc.policy).Err(); err != nil {
			t.Fatal(err)
		}
		err := cache.New(admin, cache.Options{HashKey: testKey}).Init(ctx)
		if got := errors.Is(err, cache.ErrEvictionPolicy); got != tc.refuse || (!tc.refuse && err != nil) {
			t.Fatalf("Init under %s: %v", tc.policy, err)
		}
		if err := cache.New(noconfig, cache.Options{HashKey: testKey}).Init(ctx); err != nil {
			t.Fatalf("Init as a user without CONFIG, under %s: %v", tc.policy, err)
		}
	}
}

// On Cluster every master is asked.
func TestInitRefusesEvictingCluster(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}})
	t.Cleanup(func() { rdb.Close() })
	if err := cache.New(rdb, cache.Options{HashKey: testKey}).Init(ctx); err != nil {
		t.Fatalf("Init under noeviction: %v", err)
	}
	if err := srv.Client(t).ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	err := cache.New(rdb, cache.Options{HashKey: testKey}).Init(ctx)
	if !errors.Is(err, cache.ErrEvictionPolicy) || !strings.Contains(err.Error(), srv.Addr()) {
		t.Fatalf("Init under allkeys-lru on a Cluster: %v", err)
	}
}
