package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// The read path on a standalone or Sentinel-managed Redis (see Lookup):
//
//	SORT_RO <prefix>i:<hash> BY nosort GET <prefix>{*}:r->l
//
// answers, for every record Id in the index set, the record's lookup line
// (nil for a tombstone or a missing record) in one native command with one
// GET pattern. The line starts with the identifier hashes the record
// carries and holds its Id, so the index entries are verified here in Go
// from it alone, exactly as the Lua script does it. A nil tells that some
// entry is stale but not which: only then is the set read (SMEMBERS) to
// clean up (sweepIndex). A record Id reads HGET <prefix>{<Id>}:r l. A batch
// is one pipeline, or a few concurrent ones (sortChunk).
//
// SORT with BY/GET patterns needs Redis >= 7.0 (SORT_RO) and, under ACLs, a
// user with read access to every key (~* or %R~*): Redis refuses GET
// patterns to a user restricted to key patterns such as ~cg:*. Where it is
// refused, the store falls back to the read-only Lua script for good
// (sortOff).

// sortArgCount is the number of SORT_RO arguments, command name included.
const sortArgCount = 6

// sortUsable reports whether prefix can go into a SORT GET pattern: Redis
// substitutes the member for the pattern's first '*' and reads the pattern
// as a C string.
func sortUsable(prefix string) bool { return !strings.ContainsAny(prefix, "*\x00") }

// useSort reports whether lookups go through SORT_RO.
func (s *Store) useSort() bool { return s.sortPatL != nil && !s.sortOff.Load() }

// disableSort switches lookups to the Lua script for the life of the Store,
// logging why once.
func (s *Store) disableSort(err error) {
	if s.sortOff.CompareAndSwap(false, true) {
		msg := err.Error()
		if len(msg) > 120 {
			msg = msg[:120]
		}
		s.log.Info("cache: SORT_RO with GET patterns is not available on this Redis (needs Redis >= 7.0 and, with ACLs, a user allowed to read all keys); lookups use the slower Lua script", "reason", msg)
	}
}

// probeSort runs a SORT_RO with GET patterns on a key that never exists, to
// learn before serving whether this Redis (version, ACL user) allows it.
// A refusal switches to the Lua path; any other error is returned.
func (s *Store) probeSort(ctx context.Context) error {
	if s.cluster || !s.useSort() {
		return nil
	}
	key := s.prefix + "i:probe"
	cmd := s.sortCmd(ctx, make([]any, sortArgCount), &key)
	err := s.rdb.Process(ctx, cmd)
	switch {
	case err == nil:
		return nil
	case sortRefused(err):
		s.disableSort(err)
		return nil
	}
	return err
}

// sortRefused reports whether err is Redis refusing the SORT_RO command
// itself: unknown command (Redis < 7.0, miniredis), NOPERM, "GET option of
// SORT denied …" (ACL key restrictions, cluster mode) or a syntax error from
// a Redis-compatible server that lacks BY/GET. Transient conditions and
// data errors (WRONGTYPE) are not refusals: they fail the lookup instead.
func sortRefused(err error) bool {
	var re redis.Error
	if err == nil || err == redis.Nil || !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	for _, p := range []string{"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "READONLY", "WRONGTYPE", "NOAUTH", "WRONGPASS", "OOM", "ERR max number of clients"} {
		if strings.HasPrefix(msg, p) {
			return false
		}
	}
	return true
}

// commandRefused reports whether err is Redis refusing a command as such:
// unknown (older Redis) or not permitted to this ACL user.
func commandRefused(err error) bool {
	if err == nil {
		return false
	}
	var re redis.Error // escapes: declared after the nil check
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "ERR unknown command") || (strings.HasPrefix(msg, "NOPERM") && strings.Contains(msg, "permissions to run"))
}

// sortCmd builds SORT_RO key BY nosort GET <l pattern> in args (len
// sortArgCount); key is passed by pointer, which go-redis writes like a
// string without boxing a copy.
func (s *Store) sortCmd(ctx context.Context, args []any, key *string) *redis.StringSliceCmd {
	args[0], args[1], args[2], args[3] = "sort_ro", key, "by", "nosort"
	args[4], args[5] = "get", s.sortPatL
	return redis.NewStringSliceCmd(ctx, args...)
}

// sortLookup is one identifier's lookup: set (SORT_RO of an index key) or
// line (HGET l of a record key), or neither for an identifier that cannot
// match anything.
type sortLookup struct {
	set        *redis.StringSliceCmd
	line       *redis.StringCmd
	start, end int    // the key's bytes in the batch's key buffer
	index      bool   // index key (email, phone) rather than record key
	hash       string // the identifier hash (index lookups)
}

// cmd is the lookup's command, nil (a nil interface) for none.
func (l *sortLookup) cmd() redis.Cmder {
	switch {
	case l.set != nil:
		return l.set
	case l.line != nil:
		return l.line
	}
	return nil
}

// argSlot is one command's key and arguments.
type argSlot struct {
	key  string
	args [sortArgCount]any
}

// errSortRefused wraps the Redis error that made lookupSorted give up.
type errSortRefused struct{ err error }

func (e errSortRefused) Error() string { return e.err.Error() }

// lookupSorted answers with SORT_RO / HGET: one command for a single
// identifier, one pipeline for a batch. It returns errSortRefused when
// Redis refuses SORT_RO; out is then untouched.
//
// Allocation: keys, arguments and commands are laid out per batch (one
// key buffer, one slot array, one command list); what remains per
// identifier is go-redis's command and its reply.
func (s *Store) lookupSorted(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, []sweep, error) {
	if len(ids) <= sortChunk {
		return s.lookupSortedChunk(ctx, ids, out)
	}
	// A large batch goes out as a few pipelines at once, on separate
	// connections: Go hashes, encodes and decodes one chunk while Redis
	// answers another.
	type result struct {
		stale []pair
		sweep []sweep
		err   error
	}
	chunks := (len(ids) + sortChunk - 1) / sortChunk
	res := make([]result, chunks)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(chunks, sortParallel) {
		wg.Go(func() {
			for c := int(next.Add(1) - 1); c < chunks; c = int(next.Add(1) - 1) {
				lo, hi := c*sortChunk, min((c+1)*sortChunk, len(ids))
				res[c].stale, res[c].sweep, res[c].err = s.lookupSortedChunk(ctx, ids[lo:hi], out[lo:hi])
			}
		})
	}
	wg.Wait()
	var stale []pair
	var sweeps []sweep
	var first error
	for _, r := range res {
		if _, ok := r.err.(errSortRefused); ok {
			return nil, nil, r.err
		}
		if first == nil {
			first = r.err
		}
		stale = append(stale, r.stale...)
		sweeps = append(sweeps, r.sweep...)
	}
	if first != nil {
		return nil, nil, first
	}
	return stale, sweeps, nil
}

// A batch of more than sortChunk identifiers is split into pipelines of
// sortChunk, at most sortParallel of them in flight (each on its own
// connection). On 2 cores, 10,000 lookups take ~20 ms this way against
// ~31 ms as one pipeline.
const (
	sortChunk    = 2500
	sortParallel = 4
)

func (s *Store) lookupSortedChunk(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, []sweep, error) {
	var one [1]sortLookup
	ls := one[:]
	if len(ids) > 1 {
		ls = make([]sortLookup, len(ids))
	}
	// Pass 1: every key into one buffer (on the stack for a single check).
	keyLen := len(s.prefix) + 2 + 2*sha256.Size // the longer kind: index key
	var small [128]byte
	buf := small[:0]
	if len(ids)*keyLen > len(small) {
		buf = make([]byte, 0, len(ids)*keyLen)
	}
	n := 0
	for i, id := range ids {
		l := &ls[i]
		l.start = len(buf)
		switch id.Kind {
		case guard.KindEmail, guard.KindPhone:
			if id.Value == "" {
				continue
			}
			buf = s.appendIndexKey(buf, id)
			l.index = true
		case guard.KindRecordID:
			rid, err := guard.NormalizeRecordID(id.Value)
			if err != nil {
				continue
			}
			buf = s.appendRecordKey(buf, rid)
		default:
			continue
		}
		l.end = len(buf)
		n++
	}
	if n == 0 {
		return nil, nil, nil
	}
	// Pass 2: commands. A slot holds a key string, so its address can go
	// into the arguments, and the arguments.
	all := string(buf)
	slots := make([]argSlot, n)
	for i := range ls {
		l := &ls[i]
		if l.end == 0 {
			continue
		}
		sl := &slots[0]
		slots = slots[1:]
		sl.key = all[l.start:l.end]
		if l.index {
			l.hash = sl.key[len(s.prefix)+2:]
			l.set = s.sortCmd(ctx, sl.args[:], &sl.key)
		} else {
			sl.args[0], sl.args[1], sl.args[2] = "hget", &sl.key, "l"
			l.line = redis.NewStringCmd(ctx, sl.args[:3]...)
		}
	}
	if n == 1 {
		for i := range ls {
			if c := ls[i].cmd(); c != nil {
				_ = s.rdb.Process(ctx, c)
			}
		}
	} else {
		cmds := make([]redis.Cmder, 0, n)
		for i := range ls {
			if c := ls[i].cmd(); c != nil {
				cmds = append(cmds, c)
			}
		}
		pipe := s.rdb.Pipeline()
		_ = pipe.BatchProcess(ctx, cmds...)
		_, _ = pipe.Exec(ctx)
	}
	// Errors first: a refusal anywhere means the Lua path answers all.
	for i := range ls {
		c := ls[i].cmd()
		if c == nil {
			continue
		}
		if err := c.Err(); err != nil && err != redis.Nil {
			if sortRefused(err) {
				return nil, nil, errSortRefused{err}
			}
			return nil, nil, err
		}
	}
	slab := recordSlab{hint: len(ids)}
	var stale []pair
	var sweeps []sweep
	for i := range ls {
		l := &ls[i]
		switch {
		case l.line != nil:
			line := l.line.Val()
			if line == "" {
				continue
			}
			recs := slab.take(1)
			if err := decodeLine(line, &recs[0]); err != nil {
				return nil, nil, err
			}
			out[i] = recs
		case l.set != nil:
			v := l.set.Val()
			recs, all, err := liveRecords(l.hash, v, &slab)
			if err != nil {
				return nil, nil, err
			}
			if len(recs) > 0 {
				out[i] = recs
			}
			if all {
				continue
			}
			gone := false
			for _, line := range v {
				switch {
				case line == "":
					gone = true // a tombstone or no record: Id unknown
				case !lineCarries(line, l.hash):
					id, ok := lineID(line)
					if !ok {
						return nil, nil, errMalformedLine
					}
					stale = append(stale, pair{hash: l.hash, id: id})
				}
			}
			if gone {
				sweeps = append(sweeps, sweep{hash: l.hash, keep: recs})
			}
		}
	}
	return stale, sweeps, nil
}

// sweep is an index set in which SORT_RO met an entry naming no live
// record: keep are the records found live under it.
type sweep struct {
	hash string
	keep []guard.Record
}

// sweepIndex reads the index sets of sweeps and returns their entries that
// name none of the records kept, for unindex (which re-checks each record
// before it lets a removal stand).
func (s *Store) sweepIndex(ctx context.Context, sweeps []sweep) ([]pair, error) {
	pipe := s.rdb.Pipeline()
	seen := make(map[string]bool, len(sweeps))
	cmds := make([]*redis.StringSliceCmd, len(sweeps))
	for i, sw := range sweeps {
		if seen[sw.hash] {
			continue
		}
		seen[sw.hash] = true
		cmds[i] = pipe.SMembers(ctx, s.indexKey(sw.hash))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	var stale []pair
	for i, sw := range sweeps {
		if cmds[i] == nil {
			continue
		}
	members:
		for _, id := range cmds[i].Val() {
			for _, r := range sw.keep {
				if r.ID == id {
					continue members
				}
			}
			stale = append(stale, pair{hash: sw.hash, id: id})
		}
	}
	return stale, nil
}

var errMalformedLine = errors.New("malformed lookup line")

// lineCarries reports whether a lookup line ("" for none) lists hash h in
// its first field, i.e. the record is live and carries the identifier.
func lineCarries(line, h string) bool {
	j := strings.IndexByte(line, 0)
	return j >= 0 && hasHash(line[:j], h)
}

// lineID returns the record Id, the second field of a lookup line.
func lineID(line string) (string, bool) {
	j := strings.IndexByte(line, 0)
	if j < 0 {
		return "", false
	}
	line = line[j+1:]
	j = strings.IndexByte(line, 0)
	if j < 0 {
		return "", false
	}
	return line[:j], true
}

// hasHash reports whether field (space-separated hashes: the first field
// of a lookup line) holds h as a whole entry, without allocating.
func hasHash(field, h string) bool {
	if h == "" {
		return false
	}
	for {
		j := strings.Index(field, h)
		if j < 0 {
			return false
		}
		end := j + len(h)
		if (j == 0 || field[j-1] == ' ') && (end == len(field) || field[end] == ' ') {
			return true
		}
		field = field[j+1:]
	}
}

// recordSlab hands out record slices from shared backing arrays, so a batch
// allocates records in blocks rather than one slice per identifier. Each
// slice is capped (three-index slice), so a caller's append cannot spill
// into its neighbour.
type recordSlab struct {
	buf  []guard.Record
	hint int // identifiers in the lookup: bounds the block size
}

const slabBlock = 256

func (sl *recordSlab) take(n int) []guard.Record {
	if cap(sl.buf)-len(sl.buf) < n {
		size := max(n, min(sl.hint, slabBlock))
		sl.buf = make([]guard.Record, 0, size)
	}
	start := len(sl.buf)
	sl.buf = sl.buf[:start+n]
	return sl.buf[start : start+n : start+n]
}

// liveRecords decodes the lookup lines that carry hash h (lineCarries)
// into records from slab, sorted by Id; all reports whether every line did.
// Lines of records that are gone ("") or no longer carry h are skipped: the
// caller removes their index entries.
func liveRecords(h string, lines []string, slab *recordSlab) (recs []guard.Record, all bool, err error) {
	live := 0
	for _, line := range lines {
		if lineCarries(line, h) {
			live++
		}
	}
	if live == 0 {
		return nil, len(lines) == 0, nil
	}
	recs = slab.take(live)
	r := 0
	for _, line := range lines {
		if lineCarries(line, h) {
			if err := decodeLine(line, &recs[r]); err != nil {
				return nil, false, err
			}
			r++
		}
	}
	if live > 1 {
		slices.SortFunc(recs, func(a, b guard.Record) int { return strings.Compare(a.ID, b.ID) })
	}
	return recs, live == len(lines), nil
}

// decodeLine parses exactly one lookup line (lineFields NUL-separated
// fields) into rec; the strings share the line's memory.
func decodeLine(line string, rec *guard.Record) error {
	if _, more, err := cutLine(line, rec); err != nil || more {
		return errMalformedLine
	}
	return nil
}

// cutLine parses the first lookup line of s (lineFields NUL-separated
// fields) into rec and returns what follows it; more reports whether a NUL
// followed, that is another line. The strings share s's memory.
func cutLine(s string, rec *guard.Record) (rest string, more bool, err error) {
	var f [lineFields]string
	for k := range lineFields - 1 {
		j := strings.IndexByte(s, 0)
		if j < 0 {
			return "", false, errMalformedLine
		}
		f[k], s = s[:j], s[j+1:]
	}
	f[lineFields-1], rest, more = strings.Cut(s, "\x00")
	// f[0]: the identifier hashes
	rec.ID = f[1]
	rec.Version = millis(f[2])
	rec.Object = f[3]
	for c := range guard.NumChannels {
		rec.Consent[c] = f[4+c]
	}
	rec.UpdatedAt = millis(f[8])
	return rest, more, nil
}
