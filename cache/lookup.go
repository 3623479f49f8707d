package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
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
// Round trips: on a standalone or Sentinel-managed Redis, the whole batch is
// one pipeline of read-only script runs (SMEMBERS → HMGET → verify inside
// Redis, lookupChunk identifiers each), so a single check costs exactly one
// round trip, like a bare HGET. A *redis.ClusterClient cannot run a script
// that reads keys of other slots, so there Lookup takes two pipelined round
// trips: SMEMBERS of every index key, then HMGET of every record named.
//
// Index entries found stale are removed after the answer is built (best
// effort, never failing the lookup).
func (s *Store) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	if s.err != nil {
		return nil, s.err
	}
	out := make([][]guard.Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	var stale []pair
	var err error
	if s.cluster {
		stale, err = s.lookupCluster(ctx, ids, out)
	} else {
		stale, err = s.lookupScripted(ctx, ids, out)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: lookup: %w", err)
	}
	if len(stale) > 0 {
		if err := s.unindex(ctx, stale); err != nil {
			s.log.Debug("cache: could not remove stale index entries", "count", len(stale), "err", err)
		}
	}
	return out, nil
}

// lookupArgs builds the script's KEYS and ARGV for ids; ok is false for
// identifiers that cannot match anything (invalid record Id, unknown kind).
func (s *Store) lookupItem(id guard.Identifier) (key, arg string, ok bool) {
	switch id.Kind {
	case guard.KindEmail, guard.KindPhone:
		if id.Value == "" {
			return "", "", false
		}
		h := s.idHash(id)
		return s.indexKey(h), "h" + h, true
	case guard.KindRecordID:
		rid, err := recordID(id.Value)
		if err != nil {
			return "", "", false
		}
		return s.recordKey(rid), "r" + rid, true
	}
	return "", "", false
}

func (s *Store) lookupScripted(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, error) {
	type chunk struct {
		pos  []int // index into ids of each key
		keys []string
		args []any
	}
	chunks := make([]chunk, 0, (len(ids)+lookupChunk-1)/lookupChunk)
	var c *chunk
	for i, id := range ids {
		key, arg, ok := s.lookupItem(id)
		if !ok {
			continue
		}
		if c == nil || len(c.keys) == lookupChunk {
			n := min(lookupChunk, len(ids)-i)
			chunks = append(chunks, chunk{pos: make([]int, 0, n), keys: make([]string, 0, n), args: make([]any, 1, n+1)})
			c = &chunks[len(chunks)-1]
			c.args[0] = s.prefix
		}
		c.pos = append(c.pos, i)
		c.keys = append(c.keys, key)
		c.args = append(c.args, arg)
	}
	if len(chunks) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.Cmd, len(chunks))
	if len(chunks) == 1 {
		cmds[0] = lookupScript.EvalShaRO(ctx, s.rdb, chunks[0].keys, chunks[0].args...)
		if isNoScript(cmds[0].Err()) {
			cmds[0] = lookupScript.EvalRO(ctx, s.rdb, chunks[0].keys, chunks[0].args...)
		}
	} else {
		pipe := s.rdb.Pipeline()
		for i := range chunks {
			cmds[i] = lookupScript.EvalShaRO(ctx, pipe, chunks[i].keys, chunks[i].args...)
		}
		_, _ = pipe.Exec(ctx)
		var retry redis.Pipeliner
		for i, cmd := range cmds {
			if isNoScript(cmd.Err()) {
				if retry == nil {
					retry = s.rdb.Pipeline()
				}
				cmds[i] = lookupScript.EvalRO(ctx, retry, chunks[i].keys, chunks[i].args...)
			}
		}
		if retry != nil {
			_, _ = retry.Exec(ctx)
		}
	}
	var stale []pair
	for i, cmd := range cmds {
		v, err := cmd.Slice()
		if err != nil {
			return nil, err
		}
		if len(v) != 2 {
			return nil, fmt.Errorf("unexpected lookup reply of %d elements", len(v))
		}
		flat, _ := v[0].([]any)
		if err := decodeFlat(flat, chunks[i].pos, out); err != nil {
			return nil, err
		}
		st, _ := v[1].([]any)
		for j := 0; j+1 < len(st); j += 2 {
			h, _ := st[j].(string)
			id, _ := st[j+1].(string)
			stale = append(stale, pair{hash: h, id: id})
		}
	}
	return stale, nil
}

func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// decodeFlat reads the script's flat reply: per item a count n and n
// records of 8 fields.
func decodeFlat(flat []any, pos []int, out [][]guard.Record) error {
	k := 0
	for _, p := range pos {
		if k >= len(flat) {
			return fmt.Errorf("short lookup reply")
		}
		n, ok := flat[k].(int64)
		k++
		if !ok || n < 0 || k+int(n)*8 > len(flat) {
			return fmt.Errorf("malformed lookup reply")
		}
		if n == 0 {
			continue
		}
		recs := make([]guard.Record, n)
		for r := range recs {
			f := flat[k : k+8]
			k += 8
			rec := &recs[r]
			rec.ID = str(f[0])
			rec.Version = millis(str(f[1]))
			rec.Object = str(f[2])
			for c := range guard.NumChannels {
				rec.Consent[c] = str(f[3+c])
			}
			rec.UpdatedAt = millis(str(f[7]))
		}
		out[p] = recs
	}
	if k != len(flat) {
		return fmt.Errorf("long lookup reply")
	}
	return nil
}

// lookupCluster answers in two pipelined round trips without scripts:
// SMEMBERS (index) and HMGET (record Ids) first, then HMGET of every
// record the index named, verified here.
func (s *Store) lookupCluster(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, error) {
	hashes := make([]string, len(ids))
	sets := make([]*redis.StringSliceCmd, len(ids))
	direct := make([]*redis.SliceCmd, len(ids))
	rids := make([]string, len(ids))
	pipe := s.rdb.Pipeline()
	for i, id := range ids {
		key, arg, ok := s.lookupItem(id)
		if !ok {
			continue
		}
		if arg[0] == 'h' {
			hashes[i] = arg[1:]
			sets[i] = pipe.SMembers(ctx, key)
		} else {
			rids[i] = arg[1:]
			direct[i] = pipe.HMGet(ctx, key, recordFields...)
		}
	}
	if pipe.Len() == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	reads := map[string]*redis.SliceCmd{}
	pipe = s.rdb.Pipeline()
	for i := range ids {
		switch {
		case direct[i] != nil:
			if rec, ok := decodeRecord(rids[i], direct[i].Val()); ok && !rec.Deleted {
				out[i] = []guard.Record{rec}
			}
		case sets[i] != nil:
			for _, rid := range sets[i].Val() {
				if _, ok := reads[rid]; !ok {
					reads[rid] = pipe.HMGet(ctx, s.recordKey(rid), recordFields...)
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
		slices.Sort(members)
		for _, rid := range members {
			v := reads[rid].Val()
			rec, ok := decodeRecord(rid, v)
			if !ok || rec.Deleted || !carries(v[len(v)-1], hashes[i]) {
				stale = append(stale, pair{hash: hashes[i], id: rid})
				continue
			}
			out[i] = append(out[i], rec)
		}
	}
	return stale, nil
}

// recordFields are read by Get and the cluster lookup; "i" must stay last.
var recordFields = []string{"v", "o", "c0", "c1", "c2", "c3", "u", "d", "i"}

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
	rid, err := recordID(id)
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
	rid, err := recordID(id)
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
