package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// IndexReport counts what RepairIndex did: Keys, Entries and Repaired in
// its first pass over the index keys, Records and Added in its second pass
// over the records.
type IndexReport struct {
	Keys     int // index keys scanned
	Entries  int // entries seen in them
	Repaired int // entries changed (a stale line replaced) or removed
	Records  int // record keys scanned, tombstones included
	Added    int // entries written for a live record: missing, or outside Cluster holding another value than its line
}

func (r *IndexReport) add(o IndexReport) {
	r.Keys += o.Keys
	r.Entries += o.Entries
	r.Repaired += o.Repaired
	r.Records += o.Records
	r.Added += o.Added
}

// RepairIndex SCANs with COUNT repairScanCount and repairs the keys of a
// page in pipelines of at most repairBatch: COUNT is only a hint (the
// embedded store ignores it and returns every key at once), and a pipeline
// of scripts must answer within the client's read timeout.
const (
	repairScanCount = 500
	repairBatch     = 250
)

// RepairIndex makes the identifier index under the store's prefix agree
// with the records, in two passes. It is for index entries the store did
// not leave behind itself: record or index keys deleted or restored by
// hand, entries lost under schema 2 (Upgrade carries the index over as it
// was), or an index written by a Cluster client and moved to a standalone
// Redis (empty values).
//
// The key pass checks every index key against the records it names: an
// entry whose record is gone, is a tombstone or no longer carries the
// identifier is removed, and outside Cluster an entry whose value is not
// its record's current lookup line gets that line (Repaired). Outside
// Cluster it runs the repair script once per key, in pipelines of up to
// repairBatch keys. On Cluster it reads each index key (HKEYS) and the
// lookup line of every record named, and removes the entries whose record
// does not carry the identifier, re-checking them as a write does
// (unindex); the empty values are left as they are.
//
// The record pass then gives every live record an entry under each hash
// its lookup line lists (Added). An entry missing there would leave the
// identifier to the other records that carry it: a lookup would answer
// with those alone, and the missing record's consent, a refusal included,
// would count for nothing. Outside Cluster one script per record writes its line into
// each entry that is missing or holds another value (reindexScript), in
// pipelines of up to repairBatch records. On Cluster it reads the records'
// lines and adds an empty entry where none is (HSETNX), leaving existing
// entries alone.
//
// Both passes SCAN every master of a Cluster. Each key and each record is
// repaired atomically, so RepairIndex is safe while the store serves. SCAN
// may return a key twice (while Redis resizes its table), which is then
// counted twice; repairing it again changes nothing. On an error,
// including the end of ctx, it returns what it counted so far; the record
// pass does not run after an error in the key pass.
func (s *Store) RepairIndex(ctx context.Context) (IndexReport, error) {
	var rep IndexReport
	if s.err != nil {
		return rep, s.err
	}
	repair, reindex := s.runRepair, s.reindexDirect
	if s.cluster {
		repair, reindex = s.repairCluster, s.reindexCluster
	}
	if err := scanPass(ctx, s, s.scanIndex, repair, rep.add); err != nil {
		return rep, fmt.Errorf("cache: repair index: %w", err)
	}
	if err := scanPass(ctx, s, s.scanRecords, reindex, rep.add); err != nil {
		return rep, fmt.Errorf("cache: repair index: records: %w", err)
	}
	return rep, nil
}

// scanPass is one pass of RepairIndex or Upgrade: scan (scanIndex,
// scanRecords) hands the names it finds on each master (forEachNode, all
// masters at once) to fix a page at a time, and add sums each page's
// counts, one call at a time.
func scanPass[R any](ctx context.Context, s *Store, scan func(context.Context, redis.Cmdable, func([]string) error) error, fix func(context.Context, []string) (R, error), add func(R)) error {
	var mu sync.Mutex
	return s.forEachNode(ctx, func(ctx context.Context, node redis.Cmdable) error {
		return scan(ctx, node, func(names []string) error {
			r, err := fix(ctx, names)
			mu.Lock()
			add(r)
			mu.Unlock()
			return err
		})
	})
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
	return scanKeys(ctx, node, globEscape(ip)+"*", func(k string) (string, bool) {
		h, ok := strings.CutPrefix(k, ip)
		return h, ok && isIDHash(h)
	}, batch)
}

// scanRecords SCANs node for the store's record keys, prefix+"{<Id>}:r",
// and hands the Ids of each page to batch. Braces are literal in a Redis
// glob (and the prefix holds none), so only the prefix needs escaping.
// Keys whose Id is not a normalised 18-character Salesforce Id are
// skipped: this store never writes them.
func (s *Store) scanRecords(ctx context.Context, node redis.Cmdable, batch func(ids []string) error) error {
	rp := s.prefix + "{"
	return scanKeys(ctx, node, globEscape(rp)+"*}:r", func(k string) (string, bool) {
		id, ok := strings.CutPrefix(k, rp)
		if !ok {
			return "", false
		}
		id, ok = strings.CutSuffix(id, "}:r")
		if !ok || len(id) != 18 {
			return "", false
		}
		n, err := guard.NormalizeRecordID(id)
		return id, err == nil && n == id
	}, batch)
}

// scanKeys SCANs node with MATCH match and COUNT repairScanCount, and hands
// what name makes of each page's keys (those it accepts) to batch, at most
// repairBatch at a time. It checks ctx before every page.
func scanKeys(ctx context.Context, node redis.Cmdable, match string, name func(key string) (string, bool), batch func(names []string) error) error {
	var cursor uint64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		keys, next, err := node.Scan(ctx, cursor, match, repairScanCount).Result()
		if err != nil {
			return err
		}
		names := keys[:0]
		for _, k := range keys {
			if n, ok := name(k); ok {
				names = append(names, n)
			}
		}
		for len(names) > 0 {
			n := min(len(names), repairBatch)
			if err := batch(names[:n]); err != nil {
				return err
			}
			names = names[n:]
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
	for _, cmd := range s.evalEach(ctx, repairScript, s.indexKey, hashes, func(h string) []any { return []any{s.prefix, h} }) {
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

// reindexDirect runs reindexScript on the record of each Id, in one
// pipeline (evalEach): outside Cluster, every entry of a live record that
// is missing or holds another value than its lookup line gets the line.
func (s *Store) reindexDirect(ctx context.Context, ids []string) (IndexReport, error) {
	var rep IndexReport
	var first error
	ip := s.prefix + "i:"
	for _, cmd := range s.evalEach(ctx, reindexScript, s.recordKey, ids, func(id string) []any { return []any{ip, id} }) {
		n, err := cmd.Int64()
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		rep.add(IndexReport{Records: 1, Added: int(n)})
	}
	return rep, first
}

// reindexCluster reads the lookup line of the record of each Id (one
// pipeline) and, in a second, adds an entry with an empty value under
// every hash a live record's line lists where the record has none
// (HSETNX: an existing entry is left as it is). A record that changes in
// between may leave an entry its record no longer backs: a hint, like
// every Cluster entry, which lookups check and remove.
func (s *Store) reindexCluster(ctx context.Context, ids []string) (IndexReport, error) {
	var rep IndexReport
	lines := make([]*redis.StringCmd, len(ids))
	pipe := s.rdb.Pipeline()
	for i, id := range ids {
		lines[i] = pipe.HGet(ctx, s.recordKey(id), "l")
	}
	_, _ = pipe.Exec(ctx)
	var adds []*redis.BoolCmd
	for i, id := range ids {
		if err := cmdErr(nil, lines[i]); err != nil {
			return rep, err
		}
		first, _, ok := strings.Cut(lines[i].Val(), "\x00")
		if !ok {
			continue // a tombstone (no line) or no record any more
		}
		for h := range strings.FieldsSeq(first) {
			if isIDHash(h) {
				adds = append(adds, pipe.HSetNX(ctx, s.indexKey(h), id, ""))
			}
		}
	}
	rep.Records = len(ids)
	if len(adds) == 0 {
		return rep, nil
	}
	_, _ = pipe.Exec(ctx)
	var first error
	for _, c := range adds {
		switch err := c.Err(); {
		case err != nil:
			if first == nil {
				first = err
			}
		case c.Val():
			rep.Added++
		}
	}
	return rep, first
}
