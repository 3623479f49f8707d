package sfrest

import (
	"context"
	"slices"
	"sync"
	"time"
)

// ParseRetryAfter is parseRetryAfter for the tests.
var ParseRetryAfter = parseRetryAfter

// RecordWaits makes c's retries go on at once instead of sleeping, with the
// full backoff ceiling in place of the random jitter, and returns what
// reports the waits c would have made. A done context still ends the wait.
func RecordWaits(c *Client) func() []time.Duration {
	var mu sync.Mutex
	var waits []time.Duration
	c.jitter = func(d time.Duration) time.Duration { return d }
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(waits)
	}
}
