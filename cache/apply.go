package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// Apply writes a batch of updates under the ingest rules of DESIGN.md and
// returns one Outcome per update, in order. Each update is one run of the
// compare-and-set script on its record's slot, which on a standalone or
// Sentinel-managed Redis also keeps the record's identifier index entries;
// the whole batch is one pipelined round trip. On Cluster one more pipeline
// maintains the index (maintainIndex).
//
// Rules, per record (versions compared in unix milliseconds):
//   - newer version: replaces consent and identifiers (Replaced; Created if
//     no record or a tombstone existed);
//   - older version: Stale;
//   - equal version: per channel the lesser consent (denied < missing <
//     pending < granted) and the identifiers both carry (Merged, or
//     Unchanged): ties never grant;
//   - no version: a channel can only move to a lesser consent, identifiers
//     and version stay (Restricted, or Unchanged);
//   - delete: a tombstone at the update's version (at max(stored, now) if
//     unversioned) with consent and identifiers cleared (Tombstoned); any
//     later write at or below the tombstone's version is Stale.
//
// Every applied change appends a guard.Change to the record's history. A
// non-nil error means the batch must not be acknowledged: some updates may
// have been applied, and re-applying them is harmless. Invalid record Ids
// fail the batch before anything is written (error wraps
// guard.ErrInvalidIdentifier).
func (s *Store) Apply(ctx context.Context, ups []guard.Update) ([]guard.Outcome, error) {
	if s.err != nil {
		return nil, s.err
	}
	if len(ups) == 0 {
		return []guard.Outcome{}, nil
	}
	now := strconv.FormatInt(s.now().UnixMilli(), 10)
	calls := make([]casCall, len(ups))
	for i := range ups {
		c, err := s.casArgs(&ups[i], now)
		if err != nil {
			return nil, fmt.Errorf("cache: apply update %d: %w", i, err)
		}
		calls[i] = c
	}
	res, err := s.runCAS(ctx, calls)
	if err != nil {
		return nil, err
	}
	if err := s.maintainIndex(ctx, calls, res); err != nil {
		return nil, err
	}
	out := make([]guard.Outcome, len(res))
	for i, r := range res {
		out[i] = r.outcome
	}
	return out, nil
}

// Erase is the administrator's erase (DELETE /v1/contacts/{id}): it leaves
// a tombstone at max(stored version, now), clears consent and identifiers,
// removes the index entries and records a history entry with source
// "erase". The history itself is kept (it holds no identifiers and is the
// consent proof). Erasing an unknown Id returns guard.ErrNotFound.
func (s *Store) Erase(ctx context.Context, id string) (guard.Outcome, error) {
	if s.err != nil {
		return 0, s.err
	}
	rid, err := guard.NormalizeRecordID(id)
	if err != nil {
		return 0, err
	}
	now := strconv.FormatInt(s.now().UnixMilli(), 10)
	c := s.cas(rid, "e", "0", now, "", [guard.NumChannels]string{}, "1111", "", "erase", "")
	res, err := s.runCAS(ctx, []casCall{c})
	if err != nil {
		return 0, err
	}
	if res[0].outcome == 0 {
		return 0, fmt.Errorf("cache: erase %s: %w", rid, guard.ErrNotFound)
	}
	if err := s.maintainIndex(ctx, []casCall{c}, res); err != nil {
		return 0, err
	}
	return res[0].outcome, nil
}

type casCall struct {
	id   string
	keys []string
	args []any
}

type casResult struct {
	outcome guard.Outcome
	carried string // hashes the record now carries
	dropped string // hashes it no longer carries
}

func (s *Store) casArgs(u *guard.Update, now string) (casCall, error) {
	rid, err := guard.NormalizeRecordID(u.ID)
	if err != nil {
		return casCall{}, err
	}
	ver := "0"
	if !u.Version.IsZero() {
		ms := u.Version.UnixMilli()
		if ms <= 0 {
			return casCall{}, fmt.Errorf("record %s: version %s is not after 1970", rid, u.Version.Format(time.RFC3339))
		}
		ver = strconv.FormatInt(ms, 10)
	}
	mode := "u"
	if u.Deleted {
		mode = "d"
	}
	var words [guard.NumChannels]string
	var ranks [guard.NumChannels]byte
	for c, w := range u.Consent {
		words[c] = noNUL(w)
		k, _ := s.vocab.Classify(words[c])
		ranks[c] = '0' + byte(k)
	}
	hashes := make([]string, 0, len(u.Identifiers))
	for _, id := range u.Identifiers {
		if indexed(id) {
			hashes = append(hashes, s.IdentifierHash(id))
		}
	}
	slices.Sort(hashes)
	hashes = slices.Compact(hashes)
	return s.cas(rid, mode, ver, now, noNUL(u.Object), words, string(ranks[:]), strings.Join(hashes, " "), u.Source, u.Ref), nil
}

// cas lays out one casScript call on record rid (see casScript for the
// meaning of each argument); the history limit and the index key prefix
// are the store's.
func (s *Store) cas(rid, mode, ver, now, object string, words [guard.NumChannels]string, ranks, hashes, source, ref string) casCall {
	return casCall{
		id:   rid,
		keys: []string{s.recordKey(rid), s.historyKey(rid)},
		args: []any{mode, ver, now, object, words[0], words[1], words[2], words[3], ranks,
			hashes, s.limit, source, ref, rid, s.scriptIndex()},
	}
}

// runCAS runs the script for every call in one pipeline (evalAll, which
// runs the calls answered NOSCRIPT again with EVAL) and reads the replies.
func (s *Store) runCAS(ctx context.Context, calls []casCall) ([]casResult, error) {
	cmds := s.evalAll(ctx, casScript, len(calls), func(i int) ([]string, []any) { return calls[i].keys, calls[i].args })
	out := make([]casResult, len(cmds))
	for i, cmd := range cmds {
		r, err := parseCAS(cmd)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

func parseCAS(cmd *redis.Cmd) (casResult, error) {
	v, err := cmd.Slice()
	if err != nil {
		return casResult{}, fmt.Errorf("cache: apply: %w", err)
	}
	if len(v) != 3 {
		return casResult{}, fmt.Errorf("cache: apply: unexpected script reply of %d elements", len(v))
	}
	o, ok1 := v[0].(int64)
	carried, ok2 := v[1].(string)
	dropped, ok3 := v[2].(string)
	if !ok1 || !ok2 || !ok3 || o < 0 || o > int64(guard.Unchanged) {
		return casResult{}, errors.New("cache: apply: unexpected script reply")
	}
	return casResult{outcome: guard.Outcome(o), carried: carried, dropped: dropped}, nil
}

// scriptIndex is casScript's ARGV[15]: the index key prefix where the
// script keeps the index (not on Cluster), else "".
func (s *Store) scriptIndex() string {
	if s.cluster {
		return ""
	}
	return s.prefix + "i:"
}

// maintainIndex makes the index agree with what the script wrote, on
// Cluster (elsewhere the script did it): HSET the record's field, with an
// empty value, under every hash it carries (this also repairs entries lost
// to a crash between script and index write, whenever the record is written
// again) and HDEL it under every hash it dropped, in one pipeline, followed
// by unindex's re-check of the dropped entries.
func (s *Store) maintainIndex(ctx context.Context, calls []casCall, res []casResult) error {
	if !s.cluster {
		return nil
	}
	pipe := s.rdb.Pipeline()
	var drops []pair
	for i, r := range res {
		id := calls[i].id
		for h := range strings.FieldsSeq(r.carried) {
			pipe.HSet(ctx, s.indexKey(h), id, "")
		}
		for h := range strings.FieldsSeq(r.dropped) {
			drops = append(drops, pair{hash: h, id: id})
		}
	}
	if err := s.unindex(ctx, pipe, drops); err != nil {
		return fmt.Errorf("cache: index: %w", err)
	}
	return nil
}

// pair is one index entry: record id under identifier hash.
type pair struct{ hash, id string }

// unindex removes the Cluster index entries ps, sending the removals along
// with whatever pipe already holds, then re-reads the records and adds back
// any entry whose record carries the hash again (lineCarries). The index
// and the record live in different slots, so the removal cannot be atomic
// with the check; this order makes a racing writer's HSET (which always
// follows its record write) or the re-check restore the entry, so a live
// identifier is never left unindexed. Round trips: one for pipe and the
// removals, and only with removals one for the re-read and at most one for
// the re-adds.
func (s *Store) unindex(ctx context.Context, pipe redis.Pipeliner, ps []pair) error {
	for _, p := range ps {
		pipe.HDel(ctx, s.indexKey(p.hash), p.id)
	}
	if pipe.Len() == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	if len(ps) == 0 {
		return nil
	}
	// HMGET: a missing record reads as nil rather than a redis.Nil error.
	checks := make([]*redis.SliceCmd, len(ps))
	for i, p := range ps {
		checks[i] = pipe.HMGet(ctx, s.recordKey(p.id), "l")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i, p := range ps {
		line := ""
		if v := checks[i].Val(); len(v) == 1 {
			line = str(v[0])
		}
		if lineCarries(line, p.hash) {
			pipe.HSet(ctx, s.indexKey(p.hash), p.id, "")
		}
	}
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// noNUL drops NUL bytes, which separate fields of the lookup line. No
// Salesforce value contains one.
func noNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "")
}
