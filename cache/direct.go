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
//	HVALS <prefix>i:<hash>
//
// answers, for one email or phone, the lookup line of every live record
// carrying it, in one native command on one key: the write script keeps
// each index entry equal to its record's line in the same atomic run
// (scripts.go), so the index holds no entry that the records do not back.
// Each line is still checked here to list the hash (lineCarries); an entry
// that does not (a hand-edited index, or one written by a Cluster client,
// whose values are empty) yields nothing and has its index rebuilt from the
// records by repairScript. A record Id reads HGET <prefix>{<Id>}:r l. A
// batch is one pipeline, or a few concurrent ones (directChunk).

// directLookup is one identifier's lookup: vals (HVALS of an index key) or
// line (HGET l of a record key), or neither for an identifier that cannot
// match anything.
type directLookup struct {
	vals       *redis.StringSliceCmd
	line       *redis.StringCmd
	start, end int    // the key's bytes in the batch's key buffer
	index      bool   // index key (email, phone) rather than record key
	hash       string // the identifier hash (index lookups)
}

// cmd is the lookup's command, nil (a nil interface) for none.
func (l *directLookup) cmd() redis.Cmder {
	switch {
	case l.vals != nil:
		return l.vals
	case l.line != nil:
		return l.line
	}
	return nil
}

// argSlot is one command's key and arguments.
type argSlot struct {
	key  string
	args [3]any
}

// lookupDirect answers with HVALS / HGET: one command for a single
// identifier, one pipeline for a batch. It returns the hashes whose index
// held an entry that did not back a live record, for repairIndex.
//
// Allocation: keys, arguments and commands are laid out per batch (one
// key buffer, one slot array, one command list); what remains per
// identifier is go-redis's command and its reply.
func (s *Store) lookupDirect(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]string, error) {
	if len(ids) <= directChunk {
		return s.lookupDirectChunk(ctx, ids, out)
	}
	// A large batch goes out as a few pipelines at once, on separate
	// connections: Go hashes, encodes and decodes one chunk while Redis
	// answers another.
	type result struct {
		repair []string
		err    error
	}
	chunks := (len(ids) + directChunk - 1) / directChunk
	res := make([]result, chunks)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(chunks, directParallel) {
		wg.Go(func() {
			for c := int(next.Add(1) - 1); c < chunks; c = int(next.Add(1) - 1) {
				lo, hi := c*directChunk, min((c+1)*directChunk, len(ids))
				res[c].repair, res[c].err = s.lookupDirectChunk(ctx, ids[lo:hi], out[lo:hi])
			}
		})
	}
	wg.Wait()
	var repair []string
	for _, r := range res {
		if r.err != nil {
			return nil, r.err
		}
		repair = append(repair, r.repair...)
	}
	return repair, nil
}

// A batch of more than directChunk identifiers is split into pipelines of
// directChunk, at most directParallel of them in flight (each on its own
// connection). On 2 cores this takes 10,000 lookups from ~31 ms as one
// pipeline to ~20 ms.
const (
	directChunk    = 2500
	directParallel = 4
)

func (s *Store) lookupDirectChunk(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]string, error) {
	var one [1]directLookup
	ls := one[:]
	if len(ids) > 1 {
		ls = make([]directLookup, len(ids))
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
		var ok bool
		if buf, l.index, ok = s.appendLookupKey(buf, id); !ok {
			continue
		}
		l.end = len(buf)
		n++
	}
	if n == 0 {
		return nil, nil
	}
	// Pass 2: commands. A slot holds a key string, so its address can go
	// into the arguments (go-redis writes a *string like a string, without
	// boxing a copy), and the arguments.
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
			sl.args[0], sl.args[1] = "hvals", &sl.key
			l.vals = redis.NewStringSliceCmd(ctx, sl.args[:2]...)
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
	for i := range ls {
		if c := ls[i].cmd(); c != nil {
			if err := c.Err(); err != nil && err != redis.Nil {
				return nil, err
			}
		}
	}
	slab := recordSlab{hint: len(ids)}
	var repair []string
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
				return nil, err
			}
			out[i] = recs
		case l.vals != nil:
			recs, all, err := liveRecords(l.hash, l.vals.Val(), &slab)
			if err != nil {
				return nil, err
			}
			if len(recs) > 0 {
				out[i] = recs
			}
			if !all {
				repair = append(repair, l.hash)
			}
		}
	}
	return repair, nil
}

// repairIndex rebuilds the index hashes of hashes from their records
// (repairScript), one script run per hash in one pipeline (runRepair).
func (s *Store) repairIndex(ctx context.Context, hashes []string) error {
	slices.Sort(hashes)
	hashes = slices.Compact(hashes)
	_, err := s.runRepair(ctx, hashes)
	return err
}

var errMalformedLine = errors.New("malformed lookup line")

// lineCarries reports whether a lookup line ("" for none) lists hash h in
// its first field, i.e. the record is live and carries the identifier.
func lineCarries(line, h string) bool {
	j := strings.IndexByte(line, 0)
	return j >= 0 && hasHash(line[:j], h)
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

// decodeLine parses one lookup line, exactly lineFields NUL-separated
// fields, into rec; the strings share the line's memory.
func decodeLine(line string, rec *guard.Record) error {
	var f [lineFields]string
	for k := range lineFields - 1 {
		j := strings.IndexByte(line, 0)
		if j < 0 {
			return errMalformedLine
		}
		f[k], line = line[:j], line[j+1:]
	}
	if strings.IndexByte(line, 0) >= 0 {
		return errMalformedLine
	}
	f[lineFields-1] = line
	// f[0]: the identifier hashes
	rec.ID = f[1]
	rec.Version = millis(f[2])
	rec.Object = f[3]
	for c := range guard.NumChannels {
		rec.Consent[c] = f[4+c]
	}
	rec.UpdatedAt = millis(f[8])
	return nil
}
