package cache

import (
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Embedded is an in-process, in-memory Redis (miniredis) on a loopback
// port, for running without a Redis server. The Store talks to it through
// go-redis exactly as to a real server, Lua scripts included. Nothing is
// persisted: every record is lost when the process ends.
type Embedded struct {
	mr  *miniredis.Miniredis
	rdb *redis.Client
}

// NewEmbedded starts an embedded Redis on 127.0.0.1 (random port). Keys
// with a TTL expire in real time.
func NewEmbedded() (*Embedded, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("cache: start embedded redis: %w", err)
	}
	mr.ClockTTL(true)
	rdb := redis.NewClient(&redis.Options{
		Addr:                  mr.Addr(),
		ContextTimeoutEnabled: true,
	})
	return &Embedded{mr: mr, rdb: rdb}, nil
}

// Client returns the go-redis client connected to the embedded server.
func (e *Embedded) Client() redis.UniversalClient { return e.rdb }

// Addr is the embedded server's host:port.
func (e *Embedded) Addr() string { return e.mr.Addr() }

// Close closes the client and stops the server.
func (e *Embedded) Close() {
	_ = e.rdb.Close()
	e.mr.Close()
}
