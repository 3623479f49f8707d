package cache

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// UpgradeReport counts what Upgrade did.
type UpgradeReport struct {
	Upgraded bool // the schema was 2 and is now 3
	Keys     int  // index keys converted from a set
	Entries  int  // index entries written
	Dropped  int  // set members dropped: their record is gone, a tombstone or no longer carries the identifier
}

func (r *UpgradeReport) add(o UpgradeReport) {
	r.Keys += o.Keys
	r.Entries += o.Entries
	r.Dropped += o.Dropped
}

// schema2 is the layout Upgrade converts from: index keys were sets of
// record Ids; records were laid out as in schema 3.
const schema2 = "2"

// Upgrade converts data written with schema 2 to the current schema 3 in
// place, keeping every record and its history; Init refuses schema 2, so
// Upgrade runs on a Store that Init has not accepted. It reads the meta hash
// (prefix + "meta") first: a fingerprint of another hash key is refused
// with an error wrapping guard.ErrHashKeyMismatch, as Init refuses it;
// schema 3, or no meta hash at all (a Redis this store never wrote, where
// Init records schema 3), needs nothing and returns a zero report; any
// schema other than 2 is refused with ErrSchema.
//
// Schema 2 differs only in the identifier index: each index key was a set
// of record Ids. Upgrade SCANs the index keys (as RepairIndex does, on
// every master of a Cluster) and turns each set into a schema 3 hash that
// holds the members whose record is live and carries the identifier (the
// check of lineCarries), with the record's lookup line as value, or ""
// on Cluster. The other members are dropped. Outside Cluster one script
// converts a key atomically, in pipelines of up to repairBatch keys. On
// Cluster a script may touch only its own slot, so the sets and the
// records' lines are read first and a script on the index key alone
// replaces the set, keeping any member added in the meantime. Keys that
// are not sets (converted by an earlier run that was interrupted) are left
// alone, so Upgrade may simply be run again. Once every key is converted,
// the schema is set to 3 in the meta hash if it is still 2.
//
// Stop every older consentguard instance first. One still running cannot
// serve: its lookups of the converted keys fail with WRONGTYPE. Its writes
// fail too and are not acknowledged to Salesforce, but only after the
// record is written: the SADD or SREM that follows is what gets WRONGTYPE.
// The record then holds the new consent while, outside Cluster, the
// converted index entry keeps the old line, which lookups there trust: a
// withdrawal or a delete written this way is missed. If an older instance
// may have written after the upgrade, stop them all and run RepairIndex
// (consentguard repair-index) again: it rewrites stale lines from the
// records and adds the entries the older instance could not write. A set
// such an instance creates after the scan passed is left unconverted. On
// an error, including the end of ctx, Upgrade returns what it counted so
// far with the error, and the schema stays 2.
func (s *Store) Upgrade(ctx context.Context) (UpgradeReport, error) {
	var rep UpgradeReport
	if s.err != nil {
		return rep, s.err
	}
	fp := s.fingerprint()
	meta := s.prefix + "meta"
	m, err := s.rdb.HMGet(ctx, meta, "fingerprint", "schema").Result()
	if err != nil {
		return rep, fmt.Errorf("cache: upgrade: %w", err)
	}
	if len(m) != 2 {
		return rep, fmt.Errorf("cache: upgrade: unexpected reply of %d elements", len(m))
	}
	stored, old := str(m[0]), str(m[1])
	switch {
	case m[0] == nil:
		return rep, nil // never written: Init records the current schema
	case stored != fp:
		return rep, fmt.Errorf("%w: Redis holds fingerprint %s, the configured hash key has %s", guard.ErrHashKeyMismatch, stored, fp)
	case old == schema:
		return rep, nil
	case old != schema2:
		return rep, fmt.Errorf("%w: %s was written with data schema %q; only schema %s can be upgraded in place to %s", ErrSchema, meta, old, schema2, schema)
	}
	convert := s.upgradeDirect
	if s.cluster {
		convert = s.upgradeCluster
	}
	if err := scanPass(ctx, s, s.scanIndex, convert, rep.add); err != nil {
		return rep, fmt.Errorf("cache: upgrade: %w", err)
	}
	v, err := upgradeMetaScript.Run(ctx, s.rdb, []string{meta}, fp, schema, schema2).StringSlice()
	switch {
	case err != nil:
		return rep, fmt.Errorf("cache: upgrade: record schema %s: %w", schema, err)
	case len(v) != 2:
		return rep, fmt.Errorf("cache: upgrade: record schema %s: unexpected reply of %d elements", schema, len(v))
	case v[0] != fp:
		return rep, fmt.Errorf("%w: %s changed during the upgrade: Redis holds fingerprint %s, the configured hash key has %s", guard.ErrHashKeyMismatch, meta, v[0], fp)
	case v[1] == schema2:
		rep.Upgraded = true
		s.log.Info("cache: upgraded the data schema", "key", meta, "from", schema2, "to", schema, "index_keys", rep.Keys, "entries", rep.Entries, "dropped", rep.Dropped)
	case v[1] != schema:
		return rep, fmt.Errorf("%w: %s changed to data schema %q during the upgrade", ErrSchema, meta, v[1])
	}
	// Schema 3 already: a concurrent Upgrade recorded it first.
	return rep, nil
}

// upgradeDirect runs upgradeScript on the index key of each hash, in one
// pipeline (evalEach).
func (s *Store) upgradeDirect(ctx context.Context, hashes []string) (UpgradeReport, error) {
	return upgradeReplies(s.evalEach(ctx, upgradeScript, s.indexKey, hashes, func(h string) []any { return []any{s.prefix, h} }))
}

// upgradeCluster converts the index keys of hashes on Cluster: TYPE and
// SMEMBERS of each (one pipeline), the lookup line of every record the
// sets name (readLines, one pipeline), then upgradeClusterScript on each
// set with the members whose record does not carry the hash.
func (s *Store) upgradeCluster(ctx context.Context, hashes []string) (UpgradeReport, error) {
	var rep UpgradeReport
	types := make([]*redis.StatusCmd, len(hashes))
	members := make([]*redis.StringSliceCmd, len(hashes))
	pipe := s.rdb.Pipeline()
	for i, h := range hashes {
		types[i] = pipe.Type(ctx, s.indexKey(h))
		members[i] = pipe.SMembers(ctx, s.indexKey(h))
	}
	_, _ = pipe.Exec(ctx)
	var sets []string // hashes whose key is a set
	var setMembers []*redis.StringSliceCmd
	for i, h := range hashes {
		if err := types[i].Err(); err != nil {
			return rep, err
		}
		if types[i].Val() != "set" {
			continue // converted already, or gone
		}
		if err := cmdErr(members[i], nil); err != nil {
			return rep, err
		}
		sets = append(sets, h)
		setMembers = append(setMembers, members[i])
	}
	if len(sets) == 0 {
		return rep, nil
	}
	lines, err := s.readLines(ctx, setMembers)
	if err != nil {
		return rep, err
	}
	drops := make(map[string][]any, len(sets))
	for i, h := range sets {
		for _, id := range setMembers[i].Val() {
			if !lineCarries(lines[id].Val(), h) {
				drops[h] = append(drops[h], id)
			}
		}
	}
	return upgradeReplies(s.evalEach(ctx, upgradeClusterScript, s.indexKey, sets, func(h string) []any { return drops[h] }))
}

// upgradeReplies sums the {converted, entries, dropped} replies of the
// upgrade scripts and returns the first error.
func upgradeReplies(cmds []*redis.Cmd) (UpgradeReport, error) {
	var rep UpgradeReport
	var first error
	for _, cmd := range cmds {
		v, err := cmd.Int64Slice()
		if err == nil && len(v) != 3 {
			err = errors.New("unexpected upgrade script reply")
		}
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		rep.add(UpgradeReport{Keys: int(v[0]), Entries: int(v[1]), Dropped: int(v[2])})
	}
	return rep, first
}
