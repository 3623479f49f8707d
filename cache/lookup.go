package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// Lookup returns, per identifier and in order, the live records carrying it
// (guard.Store). Email and phone identifiers go through the hashed index;
// record Ids read the record directly. Tombstones are left out.
//
// Round trips: every path answers a single check in one round trip, like
// a bare HGET, except Cluster.
//
//   - Standalone or Sentinel-managed Redis (and the embedded store): one
//     native command per identifier on one key, HVALS <index> (HGET l for a
//     record Id). The write script keeps every index entry equal to its
//     record's lookup line in the same atomic run, so no crash or race
//     leaves an entry the record does not back; each line is still checked
//     to list the identifier's hash. A batch is one pipeline, or up to
//     directParallel concurrent pipelines of directChunk (direct.go).
//   - *redis.ClusterClient: the index keys lie in other slots than the
//     records, so they are written after the record (maintainIndex) and
//     are only a hint: Lookup reads the index (HKEYS) and then the lookup
//     line of every record named, and keeps the records that still carry
//     the identifier. Two pipelined round trips.
//
// Repairs happen after the answer is built and never fail the lookup: on
// Cluster, entries naming a record that does not carry the identifier are
// removed; elsewhere an index holding such an entry is rebuilt from its
// records (repairIndex).
func (s *Store) Lookup(ctx context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	if s.err != nil {
		return nil, s.err
	}
	out := make([][]guard.Record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	if s.cluster {
		stale, err := s.lookupCluster(ctx, ids, out)
		if err != nil {
			return nil, fmt.Errorf("cache: lookup: %w", err)
		}
		if len(stale) > 0 {
			if err := s.unindex(ctx, s.rdb.Pipeline(), stale); err != nil {
				s.log.Debug("cache: could not remove stale index entries", "count", len(stale), "err", err)
			}
		}
		return out, nil
	}
	repair, err := s.lookupDirect(ctx, ids, out)
	if err != nil {
		return nil, fmt.Errorf("cache: lookup: %w", err)
	}
	if len(repair) > 0 {
		if err := s.repairIndex(ctx, repair); err != nil {
			s.log.Debug("cache: could not repair index entries", "count", len(repair), "err", err)
		}
	}
	return out, nil
}

// appendLookupKey appends the key a lookup reads for id to dst: the index
// key for an email or phone (index true), the record key for a record Id.
// ok is false, and dst comes back as it was, for an identifier that cannot
// match anything (no value, an invalid record Id, an unknown kind).
func (s *Store) appendLookupKey(dst []byte, id guard.Identifier) (_ []byte, index, ok bool) {
	switch {
	case indexed(id):
		return s.appendIndexKey(dst, id), true, true
	case id.Kind == guard.KindRecordID:
		if rid, err := guard.NormalizeRecordID(id.Value); err == nil {
			return s.appendRecordKey(dst, rid), false, true
		}
	}
	return dst, false, false
}

// indexed reports whether id is one the index holds: an email or phone
// with a value. A write hashes these alone, and a lookup reads the index
// for these alone.
func indexed(id guard.Identifier) bool {
	return (id.Kind == guard.KindEmail || id.Kind == guard.KindPhone) && id.Value != ""
}

// lineFields is the number of NUL-separated fields per record in a lookup
// line: identifier hashes, Id, version, object, four consent words,
// updated.
const lineFields = 9

// lookupCluster answers in two pipelined round trips without scripts:
// HKEYS (index) and HGET of the lookup line (record Ids) first, then HGET
// of the lookup line of every record the index named, verified here.
func (s *Store) lookupCluster(ctx context.Context, ids []guard.Identifier, out [][]guard.Record) ([]pair, error) {
	hashes := make([]string, len(ids))
	sets := make([]*redis.StringSliceCmd, len(ids))
	direct := make([]*redis.StringCmd, len(ids))
	pipe := s.rdb.Pipeline()
	kb := make([]byte, 0, 128)
	for i, id := range ids {
		var index, ok bool
		if kb, index, ok = s.appendLookupKey(kb[:0], id); !ok {
			continue
		}
		key := string(kb)
		if index {
			hashes[i] = key[len(s.prefix)+2:]
			sets[i] = pipe.HKeys(ctx, key)
		} else {
			direct[i] = pipe.HGet(ctx, key, "l")
		}
	}
	if pipe.Len() == 0 {
		return nil, nil
	}
	_, _ = pipe.Exec(ctx)
	// Every command's own error: Exec reports only the first, and a
	// redis.Nil (a record Id with no record) would hide a failure behind it.
	for i := range ids {
		if err := cmdErr(sets[i], direct[i]); err != nil {
			return nil, err
		}
	}
	slab := recordSlab{hint: len(ids)}
	for i := range ids {
		if direct[i] == nil {
			continue
		}
		if line := direct[i].Val(); line != "" {
			recs := slab.take(1)
			if err := decodeLine(line, &recs[0]); err != nil {
				return nil, err
			}
			out[i] = recs
		}
	}
	reads, err := s.readLines(ctx, sets)
	if err != nil || len(reads) == 0 {
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

// readLines reads the lookup line (HGET l) of every record that the index
// keys read in sets (nil for none) name, each record once, in one
// pipeline. A record that could not be read fails the whole read: skipping
// it would leave the other records to decide, and count its entry as stale.
// A record that does not exist reads as "".
func (s *Store) readLines(ctx context.Context, sets []*redis.StringSliceCmd) (map[string]*redis.StringCmd, error) {
	reads := map[string]*redis.StringCmd{}
	pipe := s.rdb.Pipeline()
	for _, set := range sets {
		if set == nil {
			continue
		}
		for _, rid := range set.Val() {
			if _, ok := reads[rid]; !ok {
				reads[rid] = pipe.HGet(ctx, s.recordKey(rid), "l")
			}
		}
	}
	if len(reads) == 0 {
		return reads, nil
	}
	_, _ = pipe.Exec(ctx)
	for _, c := range reads {
		if err := cmdErr(nil, c); err != nil {
			return nil, err
		}
	}
	return reads, nil
}

// cmdErr is the error of whichever of set and line is not nil, redis.Nil
// (no such key or field) not counting.
func cmdErr(set *redis.StringSliceCmd, line *redis.StringCmd) error {
	var err error
	switch {
	case set != nil:
		err = set.Err()
	case line != nil:
		err = line.Err()
	}
	if err == redis.Nil {
		return nil
	}
	return err
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
