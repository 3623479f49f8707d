package cache

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Seen reports, per key and in order, whether Remember stored it and its
// TTL has not run out. It is how the webhook skips notification Ids it
// already wrote. One pipelined round trip. Keys are HMAC'd before they reach
// Redis (prefix + "n:" + 32 hex digits).
func (s *Store) Seen(ctx context.Context, keys []string) ([]bool, error) {
	if s.err != nil {
		return nil, s.err
	}
	out := make([]bool, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Exists(ctx, s.noteKey(k))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("cache: seen: %w", err)
	}
	for i, c := range cmds {
		out[i] = c.Val() > 0
	}
	return out, nil
}

// Remember stores keys for ttl (the webhook uses 25 h, after a successful
// write). One pipelined round trip.
func (s *Store) Remember(ctx context.Context, keys []string, ttl time.Duration) error {
	if s.err != nil {
		return s.err
	}
	if ttl <= 0 {
		return fmt.Errorf("%w: remember needs a positive TTL, got %s", ErrConfig, ttl)
	}
	if len(keys) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	for _, k := range keys {
		pipe.Set(ctx, s.noteKey(k), "1", ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("cache: remember: %w", err)
	}
	return nil
}
