package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// IndexReport counts what RepairIndex did.
type IndexReport struct {
	Keys     int // index keys scanned
	Entries  int // entries seen in them
	Repaired int // entries changed (a stale line replaced) or removed
}

func (r *IndexReport) add(o IndexReport) {
	r.Keys += o.Keys
	r.Entries += o.Entries
	r.Repaired += o.Repaired
}

// RepairIndex SCANs with COUNT repairScanCount and repairs the keys of a
// page in pipelines of at most repairBatch: COUNT is only a hint (the
// embedded store ignores it and returns every key at once), and a pipeline
// of scripts must answer within the client's read timeout.
const (
	repairScanCount = 500
	repairBatch     = 250
)

// RepairIndex checks every identifier index key under the store's prefix
// against the records it names and repairs it: an entry whose record is
// gone, is a tombstone or no longer carries the identifier is removed, and
// outside Cluster an entry whose value is not its record's current lookup
// line gets that line. It is for index entries the store did not leave
// behind itself: record keys deleted or restored by hand, or an index
// written by a Cluster client and moved to a standalone Redis (empty
// values). It does not add entries that are missing; the next write of the
// record does (a redelivery, consentguard sync).
//
// Outside Cluster it SCANs the index keys and runs the repair script once
// per key, in pipelines of up to repairBatch keys; each key is repaired
// atomically, so it is safe while the store serves. On Cluster it scans
// every master, reads each index key (HKEYS) and the lookup line of every
// record named, and removes the entries whose record does not carry the
// identifier, re-checking them as a write does (unindex); the empty values
// are left as they are.
//
// SCAN may return a key twice (while Redis resizes its table), which is
// then counted twice; repairing it again changes nothing. On an error,
// including the end of ctx, it returns what it counted so far.
func (s *Store) RepairIndex(ctx context.Context) (IndexReport, error) {
	var rep IndexReport
	if s.err != nil {
		return rep, s.err
	}
	var mu sync.Mutex
	err := s.forEachNode(ctx, func(ctx context.Context, node redis.Cmdable) error {
		return s.scanIndex(ctx, node, func(hashes []string) error {
			var r IndexReport
			var err error
			if s.cluster {
				r, err = s.repairCluster(ctx, hashes)
			} else {
				r, err = s.runRepair(ctx, hashes)
			}
			mu.Lock()
			rep.add(r)
			mu.Unlock()
			return err
		})
	})
	if err != nil {
		return rep, fmt.Errorf("cache: repair index: %w", err)
	}
	return rep, nil
}

// forEachNode calls fn with every master of a Cluster, concurrently, or
// once with the client itself. The first error ends the other calls (their
// context is cancelled) and is returned.
func (s *Store) forEachNode(ctx context.Context, fn func(ctx context.Context, node redis.Cmdable) error) error {
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		return fn(ctx, s.rdb)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	var first error
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		err := fn(ctx, c)
		if err != nil {
			once.Do(func() { first = err; cancel() })
		}
		return err
	})
	if first != nil {
		return first
	}
	return err // the cluster state could not be loaded
}

// scanIndex SCANs node for the store's index keys and hands the identifier
// hashes of each page to batch. Keys whose rest after prefix+"i:" is not a
// hash (64 lower-case hex digits) are skipped: this store never writes them.
func (s *Store) scanIndex(ctx context.Context, node redis.Cmdable, batch func(hashes []string) error) error {
	ip := s.prefix + "i:"
	match := globEscape(ip) + "*"
	var cursor uint64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		keys, next, err := node.Scan(ctx, cursor, match, repairScanCount).Result()
		if err != nil {
			return err
		}
		hashes := keys[:0]
		for _, k := range keys {
			if h, ok := strings.CutPrefix(k, ip); ok && isIDHash(h) {
				hashes = append(hashes, h)
			}
		}
		for len(hashes) > 0 {
			n := min(len(hashes), repairBatch)
			if err := batch(hashes[:n]); err != nil {
				return err
			}
			hashes = hashes[n:]
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// globEscape quotes the characters special to Redis's glob patterns (KEYS,
// SCAN MATCH), so that s matches only itself.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isIDHash reports whether h has the form of an identifier hash: 64
// lower-case hex digits (IdentifierHash).
func isIDHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// runRepair runs repairScript on the index key of each hash, all in one
// pipeline (evalEach). It sums the script's counts over the keys it
// repaired and returns the first error.
func (s *Store) runRepair(ctx context.Context, hashes []string) (IndexReport, error) {
	var rep IndexReport
	var first error
	for _, cmd := range s.evalEach(ctx, repairScript, hashes, func(h string) []any { return []any{s.prefix, h} }) {
		v, err := cmd.Int64Slice()
		if err == nil && len(v) != 2 {
			err = errors.New("unexpected repair script reply")
		}
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		rep.add(IndexReport{Keys: 1, Entries: int(v[0]), Repaired: int(v[1])})
	}
	return rep, first
}

// evalEach runs sc once on the index key of each hash, with the arguments
// args gives for it, all in one pipeline (EVALSHA); calls answered
// NOSCRIPT (a restarted or flushed Redis) go again with EVAL in a second
// one. It returns the commands, in order, for the caller to read each
// reply and error.
func (s *Store) evalEach(ctx context.Context, sc *redis.Script, hashes []string, args func(h string) []any) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(hashes))
	pipe := s.rdb.Pipeline()
	for i, h := range hashes {
		cmds[i] = sc.EvalSha(ctx, pipe, []string{s.indexKey(h)}, args(h)...)
	}
	_, _ = pipe.Exec(ctx) // errors are inspected per command
	var retry []int
	for i, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			retry = append(retry, i)
		}
	}
	if len(retry) > 0 {
		pipe := s.rdb.Pipeline()
		for _, i := range retry {
			cmds[i] = sc.Eval(ctx, pipe, []string{s.indexKey(hashes[i])}, args(hashes[i])...)
		}
		_, _ = pipe.Exec(ctx)
	}
	return cmds
}

// repairCluster checks the index keys of hashes the way a Cluster lookup
// does: HKEYS of each, then the lookup line of every record named (one
// pipeline each), and removes the entries whose record does not carry the
// hash with unindex, which adds back any that a racing write made valid
// again. Those count as repaired too.
func (s *Store) repairCluster(ctx context.Context, hashes []string) (IndexReport, error) {
	var rep IndexReport
	sets := make([]*redis.StringSliceCmd, len(hashes))
	pipe := s.rdb.Pipeline()
	for i, h := range hashes {
		sets[i] = pipe.HKeys(ctx, s.indexKey(h))
	}
	_, _ = pipe.Exec(ctx)
	for _, set := range sets {
		if err := cmdErr(set, nil); err != nil {
			return rep, err
		}
	}
	lines, err := s.readLines(ctx, sets)
	if err != nil {
		return rep, err
	}
	var stale []pair
	for i, set := range sets {
		rep.Keys++
		for _, id := range set.Val() {
			rep.Entries++
			if !lineCarries(lines[id].Val(), hashes[i]) {
				stale = append(stale, pair{hash: hashes[i], id: id})
			}
		}
	}
	if err := s.unindex(ctx, s.rdb.Pipeline(), stale); err != nil {
		return rep, err
	}
	rep.Repaired = len(stale)
	return rep, nil
}
