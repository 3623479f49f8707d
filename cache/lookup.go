package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// lookupChunk is how many identifiers one lookup script run handles. All
// chunks of a batch go out in one pipeline; chunking keeps each script run
// short so a 10,000-item batch does not stall other clients.
const lookupChunk = 256

// Lookup returns, per identifier and in order, the live records carrying it
// (guard.Store). Email and phone identifiers go through the hashed index;
// each index entry is verified against the record, so a stale entry never
// yields a record. Record Ids read the record directly. Tombstones are left
// out.
//
// Round trips: every path answers a single check in one round trip, like
// a bare HGET, except Cluster.
//
//   - Standalone or Sentinel-managed Redis >= 7.0: one native command per
//     identifier, SORT_RO <index> BY nosort GET <record>->l (HGET l for a
//     record Id), verified in Go from the lookup line alone; a batch is one
//     pipeline, or up to sortParallel concurrent pipelines of sortChunk
//     (sortlookup.go).
//   - Where Redis refuses that (Redis < 7.0, an ACL user without read access
//     to all keys, miniredis): the read-only Lua script (SMEMBERS → HGET l
//     → verify inside Redis, lookupChunk identifiers per run, all runs in one
//     pipeline). Init probes for this; a refusal met by a lookup also
//     switches, and the lookup is answered by the script. The switch lasts
//     for the life of the Store.
//   - *redis.ClusterClient: neither SORT GET patterns nor a script may read
//     keys of other slots, so Lookup takes two pipelined round trips there:
//     SMEMBERS of every index key, then HGET l of every record named.
//
// Index entries found stale are removed after the answer is built (best
// effort, never failing the lookup). On the SORT_RO path an entry naming a
// record that is gone or a tombstone comes back as nil, without its Id;
// only then does the lookup read the index set (SMEMBERS) to find and
// remove such entries (sweepIndex).
func (s *Store) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	if s.err != nil {
		return nil, s.err
	}
	out := make([][]guard.Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	var stale []pair
	var sweeps []sweep
	var err error
	switch {
	case s.cluster:
		stale, err = s.lookupCluster(ctx, ids, out)
	case s.useSort():
		stale, sweeps, err = s.lookupSorted(ctx, ids, out)
		if r, ok := err.(errSortRefused); ok {
			s.disableSort(r.err)
			stale, err = s.lookupScripted(ctx, ids, out)
		}
	default:
		stale, err = s.lookupScripted(ctx, ids, out)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: lookup: %w", err)
	}
	if len(sweeps) > 0 {
		more, err := s.sweepIndex(ctx, sweeps)
		if err != nil {
			s.log.Debug("cache: could not read index sets to remove stale entries", "count", len(sweeps), "err", err)
		}
		stale = append(stale, more...)
	}
	if len(stale) > 0 {
		if err := s.unindex(ctx, s.rdb.Pipeline(), stale); err != nil {
			s.log.Debug("cache: could not remove stale index entries", "count", len(stale), "err", err)
		}
	}
	return out, nil
}

// lookupKey returns the key a lookup reads for id: the index key for an
// email or phone, the record key for a record Id; ok is false for
// identifiers that cannot match anything (invalid record Id, unknown kind).
func (s *Store) lookupKey(id guard.Identifier) (key string, ok bool) {
	switch id.Kind {
	case guard.KindEmail, guard.KindPhone:
		if id.Value == "" {
			return "", false
		}
		return s.indexKeyOf(id), true
	case guard.KindRecordID:
		rid, err := guard.NormalizeRecordID(id.Value)
		if err != nil {
			return "", false
		}
		return s.recordKey(rid), true
	}
	return "", false
}

func (s *Store) lookupScripted(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, error) {
	type chunk struct {
		pos  []int // index into ids of each key
		keys []string
	}
	chunks := make([]chunk, 0, (len(ids)+lookupChunk-1)/lookupChunk)
	var c *chunk
	for i, id := range ids {
		key, ok := s.lookupKey(id)
		if !ok {
			continue
		}
		if c == nil || len(c.keys) == lookupChunk {
			n := min(lookupChunk, len(ids)-i)
			chunks = append(chunks, chunk{pos: make([]int, 0, n), keys: make([]string, 0, n)})
			c = &chunks[len(chunks)-1]
		}
		c.pos = append(c.pos, i)
		c.keys = append(c.keys, key)
	}
	if len(chunks) == 0 {
		return nil, nil
	}
	// EVALSHA_RO / EVAL_RO, or EVALSHA / EVAL where those are refused
	// (Redis < 7.0): the script only reads either way.
	ro := !s.roOff.Load()
	evalSha := func(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
		if ro {
			return lookupScript.EvalShaRO(ctx, c, keys, args...)
		}
		return lookupScript.EvalSha(ctx, c, keys, args...)
	}
	eval := func(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd {
		if ro {
			return lookupScript.EvalRO(ctx, c, keys, args...)
		}
		return lookupScript.Eval(ctx, c, keys, args...)
	}
	cmds := make([]*redis.Cmd, len(chunks))
	if len(chunks) == 1 {
		cmds[0] = evalSha(ctx, s.rdb, chunks[0].keys, s.prefix)
		if isNoScript(cmds[0].Err()) {
			cmds[0] = eval(ctx, s.rdb, chunks[0].keys, s.prefix)
		}
	} else {
		pipe := s.rdb.Pipeline()
		for i := range chunks {
			cmds[i] = evalSha(ctx, pipe, chunks[i].keys, s.prefix)
		}
		_, _ = pipe.Exec(ctx)
		var retry redis.Pipeliner
		for i, cmd := range cmds {
			if isNoScript(cmd.Err()) {
				if retry == nil {
					retry = s.rdb.Pipeline()
				}
				cmds[i] = eval(ctx, retry, chunks[i].keys, s.prefix)
			}
		}
		if retry != nil {
			_, _ = retry.Exec(ctx)
		}
	}
	if err := cmds[0].Err(); ro && commandRefused(err) {
		s.roOff.Store(true)
		s.log.Info("cache: EVALSHA_RO is not available on this Redis; the lookup script runs with EVALSHA", "reason", err.Error())
		return s.lookupScripted(ctx, ids, out)
	}
	var stale []pair
	for i, cmd := range cmds {
		reply, err := cmd.Result()
		if err != nil {
			return nil, err
		}
		var lines, st []any
		switch r := reply.(type) {
		case string: // one key, no stale entries
			lines = []any{r}
		case []any:
			if len(r) != 2 {
				return nil, fmt.Errorf("unexpected lookup reply of %d elements", len(r))
			}
			lines, _ = r[0].([]any)
			st, _ = r[1].([]any)
		default:
			return nil, fmt.Errorf("unexpected lookup reply %T", reply)
		}
		if len(lines) != len(chunks[i].pos) {
			return nil, fmt.Errorf("lookup reply has %d items for %d keys", len(lines), len(chunks[i].pos))
		}
		for j, p := range chunks[i].pos {
			line, _ := lines[j].(string)
			if line == "" {
				continue
			}
			recs, err := decodeLines(line)
			if err != nil {
				return nil, err
			}
			out[p] = recs
		}
		for j := 0; j+1 < len(st); j += 2 {
			stale = append(stale, pair{hash: str(st[j]), id: str(st[j+1])})
		}
	}
	return stale, nil
}

func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// lineFields is the number of NUL-separated fields per record in a lookup
// line: identifier hashes, Id, version, object, four consent words,
// updated.
const lineFields = 9

// decodeLines parses one or more lookup lines joined by NUL. The records'
// strings share the line's memory.
func decodeLines(line string) ([]guard.Record, error) {
	n := strings.Count(line, "\x00") + 1
	if n%lineFields != 0 {
		return nil, fmt.Errorf("malformed lookup line (%d fields)", n)
	}
	recs := make([]guard.Record, n/lineFields)
	for r := range recs {
		var err error
		if line, _, err = cutLine(line, &recs[r]); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// lookupCluster answers in two pipelined round trips without scripts:
// SMEMBERS (index) and HGET of the lookup line (record Ids) first, then
// HGET of the lookup line of every record the index named, verified here.
func (s *Store) lookupCluster(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, error) {
	hashes := make([]string, len(ids))
	sets := make([]*redis.StringSliceCmd, len(ids))
	direct := make([]*redis.StringCmd, len(ids))
	pipe := s.rdb.Pipeline()
	for i, id := range ids {
		key, ok := s.lookupKey(id)
		if !ok {
			continue
		}
		if id.Kind != guard.KindRecordID {
			hashes[i] = key[len(s.prefix)+2:]
			sets[i] = pipe.SMembers(ctx, key)
		} else {
			direct[i] = pipe.HGet(ctx, key, "l")
		}
	}
	if pipe.Len() == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	slab := recordSlab{hint: len(ids)}
	reads := map[string]*redis.StringCmd{}
	pipe = s.rdb.Pipeline()
	for i := range ids {
		switch {
		case direct[i] != nil:
			if line := direct[i].Val(); line != "" {
				recs := slab.take(1)
				if err := decodeLine(line, &recs[0]); err != nil {
					return nil, err
				}
				out[i] = recs
			}
		case sets[i] != nil:
			for _, rid := range sets[i].Val() {
				if _, ok := reads[rid]; !ok {
					reads[rid] = pipe.HGet(ctx, s.recordKey(rid), "l")
				}
			}
		}
	}
	if len(reads) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	var stale []pair
	for i := range ids {
		if sets[i] == nil {
			continue
		}
		members := sets[i].Val()
		lines := make([]string, len(members))
		for j, rid := range members {
			lines[j] = reads[rid].Val()
		}
		recs, all, err := liveRecords(hashes[i], lines, &slab)
		if err != nil {
			return nil, err
		}
		if len(recs) > 0 {
			out[i] = recs
		}
		if !all {
			for j, rid := range members {
				if !lineCarries(lines[j], hashes[i]) {
					stale = append(stale, pair{hash: hashes[i], id: rid})
				}
			}
		}
	}
	return stale, nil
}

// recordFields are read by Get.
var recordFields = []string{"v", "o", "c0", "c1", "c2", "c3", "u", "d"}

// decodeRecord turns an HMGET of recordFields into a Record; ok is false
// when the record does not exist.
func decodeRecord(id string, v []any) (guard.Record, bool) {
	if len(v) != len(recordFields) || v[0] == nil {
		return guard.Record{}, false
	}
	rec := guard.Record{
		ID:        id,
		Version:   millis(str(v[0])),
		Object:    str(v[1]),
		UpdatedAt: millis(str(v[6])),
		Deleted:   str(v[7]) == "1",
	}
	for c := range guard.NumChannels {
		rec.Consent[c] = str(v[2+c])
	}
	return rec, true
}

// Get returns the record with Salesforce Id id (15 or 18 characters),
// tombstones included (Deleted set); guard.ErrNotFound if there is none.
func (s *Store) Get(ctx context.Context, id string) (guard.Record, error) {
	if s.err != nil {
		return guard.Record{}, s.err
	}
	rid, err := guard.NormalizeRecordID(id)
	if err != nil {
		return guard.Record{}, err
	}
	v, err := s.rdb.HMGet(ctx, s.recordKey(rid), recordFields...).Result()
	if err != nil {
		return guard.Record{}, fmt.Errorf("cache: get: %w", err)
	}
	rec, ok := decodeRecord(rid, v)
	if !ok {
		return guard.Record{}, fmt.Errorf("cache: get %s: %w", rid, guard.ErrNotFound)
	}
	return rec, nil
}

// historyEntry is the JSON the write script appends to a record's history.
type historyEntry struct {
	At      int64                     `json:"at"`
	Version int64                     `json:"v"`
	Outcome int                       `json:"o"`
	Source  string                    `json:"s"`
	Ref     string                    `json:"r"`
	Consent [guard.NumChannels]string `json:"c"`
	Deleted bool                      `json:"d"`
}

// History returns the record's consent history, oldest first (at most
// Options.HistoryLimit entries). An unknown Id has an empty history.
func (s *Store) History(ctx context.Context, id string) ([]guard.Change, error) {
	if s.err != nil {
		return nil, s.err
	}
	rid, err := guard.NormalizeRecordID(id)
	if err != nil {
		return nil, err
	}
	raw, err := s.rdb.LRange(ctx, s.historyKey(rid), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("cache: history: %w", err)
	}
	out := make([]guard.Change, 0, len(raw))
	for _, r := range raw {
		var e historyEntry
		if err := json.Unmarshal([]byte(r), &e); err != nil {
			return nil, fmt.Errorf("cache: history of %s: %w", rid, err)
		}
		out = append(out, guard.Change{
			At:      time.UnixMilli(e.At).UTC(),
			Version: millisInt(e.Version),
			Outcome: guard.Outcome(e.Outcome),
			Source:  e.Source,
			Ref:     e.Ref,
			Consent: e.Consent,
			Deleted: e.Deleted,
		})
	}
	return out, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// millis parses unix milliseconds; "0", "" and garbage give the zero time
// (a record created by an unversioned update has no version).
func millis(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return millisInt(ms)
}

func millisInt(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
