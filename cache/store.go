package cache

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard"
)

// Defaults for Options.
const (
	DefaultPrefix       = "cg:"
	DefaultHistoryLimit = 1000
	// MinHashKeyLen is the shortest accepted Options.HashKey, in bytes.
	MinHashKeyLen = 16
)

// Options configure a Store.
type Options struct {
	// HashKey keys the HMAC-SHA256 under which identifiers are stored;
	// required, at least MinHashKeyLen bytes. Changing it makes every stored
	// identifier unreachable, so Init refuses a Redis written under another key.
	HashKey []byte
	// Vocabulary ranks consent words for the merge rules; zero value:
	// guard.DefaultVocabulary(). Ranks are computed when a word is written.
	Vocabulary guard.Vocabulary
	// Prefix starts every key; default "cg:". It must not contain '{' or '}'.
	Prefix string
	// HistoryLimit caps the history entries kept per record; default 1000.
	HistoryLimit int
	// Clock gives "now" for UpdatedAt, history and erase; default time.Now.
	Clock func() time.Time
	// Logger receives operational messages (never identifiers); default discards.
	Logger *slog.Logger
}

// Store is the Redis consent store. It is safe for concurrent use.
type Store struct {
	rdb     redis.UniversalClient
	cluster bool // *redis.ClusterClient: no cross-slot scripts, see Lookup
	vocab   guard.Vocabulary
	prefix  string
	limit   string // HistoryLimit as Lua argument
	now     func() time.Time
	log     *slog.Logger
	key     []byte
	err     error // configuration error: every call fails closed with it
	macs    sync.Pool
}

var _ guard.Store = (*Store)(nil)

// ErrConfig marks an unusable Options value (short hash key, bad prefix).
var ErrConfig = errors.New("cache: invalid configuration")

// ErrSchema marks a Redis whose data was written in another layout
// (prefix + "meta", field "schema") than this version reads and writes.
// Init refuses it; Upgrade converts schema 2 in place, older schemas
// have no migration.
var ErrSchema = errors.New("cache: data schema mismatch")

// schema is the data layout this version writes, recorded in prefix+"meta".
// 3: index keys are hashes from record Id to the record's lookup line.
// 2: index keys are sets of record Ids. 1: l without the identifier hashes.
const schema = "3"

// New returns a Store on rdb. It does not talk to Redis; call Init before
// serving. A configuration problem (e.g. a short HashKey) is reported by Init
// and by every other method, so a misconfigured store never answers.
func New(rdb redis.UniversalClient, opts Options) *Store {
	s := &Store{
		rdb:    rdb,
		vocab:  opts.Vocabulary.OrDefault(),
		prefix: opts.Prefix,
		now:    opts.Clock,
		log:    opts.Logger,
		key:    append([]byte(nil), opts.HashKey...),
	}
	_, s.cluster = rdb.(*redis.ClusterClient)
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	limit := opts.HistoryLimit
	if limit <= 0 {
		limit = DefaultHistoryLimit
	}
	s.limit = fmt.Sprint(limit)
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case rdb == nil:
		s.err = fmt.Errorf("%w: nil redis client", ErrConfig)
	case len(s.key) < MinHashKeyLen:
		s.err = fmt.Errorf("%w: hash key has %d bytes, need at least %d", ErrConfig, len(s.key), MinHashKeyLen)
	case strings.ContainsAny(s.prefix, "{}"):
		s.err = fmt.Errorf("%w: key prefix %q must not contain '{' or '}'", ErrConfig, s.prefix)
	}
	s.macs.New = func() any { return &mac{h: hmac.New(sha256.New, s.key), buf: make([]byte, 0, 128)} }
	return s
}

// fingerprintLabel is HMAC'd with the hash key to fingerprint it.
const fingerprintLabel = "consentguard-fingerprint"

// Init checks the configuration, records the hash key's fingerprint and
// the data schema in Redis (prefix + "meta", fields "fingerprint" and
// "schema") unless they are there, and refuses with an error wrapping
// guard.ErrHashKeyMismatch when the stored fingerprint belongs to another
// key, or wrapping ErrSchema when the data was written in another layout
// (schema 2 is upgraded in place by Upgrade; older data is not migrated:
// rebuild it with a full sync into an empty Redis or prefix). It also
// loads the Lua scripts.
func (s *Store) Init(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	fp := s.fingerprint()
	meta := s.prefix + "meta"
	v, err := initScript.Run(ctx, s.rdb, []string{meta}, fp, schema).StringSlice()
	if err != nil {
		return fmt.Errorf("cache: init: %w", err)
	}
	if len(v) != 3 {
		return fmt.Errorf("cache: init: unexpected reply of %d elements", len(v))
	}
	if v[2] == "1" {
		s.log.Info("cache: recorded the hash key's fingerprint in Redis", "key", meta, "fingerprint", fp, "schema", schema)
	}
	if v[0] != fp {
		return fmt.Errorf("%w: Redis holds fingerprint %s, the configured hash key has %s", guard.ErrHashKeyMismatch, v[0], fp)
	}
	if v[1] == schema2 {
		return fmt.Errorf("%w: %s was written with data schema %q, this version reads and writes schema %s; stop every older consentguard instance, then run `consentguard repair-index` once to upgrade in place (records and history kept)", ErrSchema, meta, v[1], schema)
	}
	if v[1] != schema {
		return fmt.Errorf("%w: %s was written with data schema %q, this version reads and writes schema %s and does not migrate; load the data again (consentguard sync) into an empty Redis or another key prefix", ErrSchema, meta, v[1], schema)
	}
	for _, sc := range []*redis.Script{casScript, repairScript} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("cache: load script: %w", err)
		}
	}
	return s.checkEviction(ctx)
}

// ErrEvictionPolicy marks a Redis that evicts keys of its own accord
// (maxmemory-policy allkeys-*). Init refuses it: an evicted record would
// take its consent with it (a Nein becomes unknown), and, outside Cluster,
// the index entries it leaves behind would still carry its last consent.
var ErrEvictionPolicy = errors.New("cache: Redis may evict consent data")

// checkEviction reads maxmemory-policy and refuses the allkeys-* policies.
// volatile-* evict only keys with a TTL, which here are the dedupe markers
// alone. Where the policy cannot be read (CONFIG refused to this user, as
// on many managed services, or missing, as on the embedded store) it logs
// and goes on: the operator is told to check it.
func (s *Store) checkEviction(ctx context.Context) error {
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		// Every master holds some of the records.
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return s.checkEvictionOn(ctx, c, c.Options().Addr)
		})
	}
	return s.checkEvictionOn(ctx, s.rdb, "")
}

// checkEvictionOn is checkEviction on one server (node names it in errors
// and logs on Cluster).
func (s *Store) checkEvictionOn(ctx context.Context, c redis.Cmdable, node string) error {
	v, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	policy, ok := v["maxmemory-policy"]
	where := ""
	if node != "" {
		where = " on " + node
	}
	switch {
	case err != nil && commandRefused(err):
		s.log.Debug("cache: cannot read maxmemory-policy"+where+"; it must not be allkeys-*", "reason", err.Error())
		return nil
	case err != nil:
		s.log.Warn("cache: cannot read maxmemory-policy"+where+"; it must not be allkeys-*", "err", err)
		return nil
	case !ok:
		s.log.Warn("cache: Redis did not report maxmemory-policy" + where + "; it must not be allkeys-*")
		return nil
	case strings.HasPrefix(policy, "allkeys-"):
		return fmt.Errorf("%w: maxmemory-policy is %s%s; set it to noeviction (see cache/README.md, Durability)", ErrEvictionPolicy, policy, where)
	}
	return nil
}

// commandRefused reports whether err is Redis refusing a command as such:
// unknown (the embedded store, some proxies) or not permitted to this ACL
// user.
func commandRefused(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "ERR unknown command") || strings.HasPrefix(msg, "NOPERM")
}

// Ping reports whether Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("cache: ping: %w", err)
	}
	return nil
}

// fingerprint is the hex of the first 16 bytes of HMAC(key, fingerprintLabel).
func (s *Store) fingerprint() string {
	m := s.getMAC()
	defer s.putMAC(m)
	return hex.EncodeToString(m.sumOf(fingerprintLabel, "", "")[:16])
}

// mac is a pooled HMAC-SHA256 state keyed with HashKey, with scratch space
// so hashing an identifier allocates nothing (crypto/hmac's Reset reuses
// the keyed state).
type mac struct {
	h   hash.Hash
	sum [sha256.Size]byte
	buf []byte
}

// sumOf returns HMAC(HashKey, a+b+c); the result is valid until m is
// returned to the pool.
func (m *mac) sumOf(a, b, c string) []byte {
	m.buf = append(append(append(m.buf[:0], a...), b...), c...)
	m.h.Reset()
	m.h.Write(m.buf)
	return m.h.Sum(m.sum[:0])
}

func (s *Store) getMAC() *mac { return s.macs.Get().(*mac) }

func (s *Store) putMAC(m *mac) {
	if cap(m.buf) > 1024 { // do not keep a huge identifier's buffer
		m.buf = nil
	}
	s.macs.Put(m)
}

// appendIDHash appends hex(HMAC-SHA256(HashKey, id.Key())) to dst.
func (s *Store) appendIDHash(dst []byte, id guard.Identifier) []byte {
	m := s.getMAC()
	dst = hex.AppendEncode(dst, m.sumOf(id.Kind.String(), ":", id.Value))
	s.putMAC(m)
	return dst
}

// IdentifierHash returns hex(HMAC-SHA256(HashKey, id.Key())): the only form
// in which the store keeps an identifier. The decision audit log writes the
// same digest, so an entry can be matched to an index key.
func (s *Store) IdentifierHash(id guard.Identifier) string {
	var out [2 * sha256.Size]byte
	return string(s.appendIDHash(out[:0], id))
}

// Keys. A record's keys share the hash tag {Id} and so one Cluster slot.
func (s *Store) recordKey(id string) string  { return s.prefix + "{" + id + "}:r" }
func (s *Store) historyKey(id string) string { return s.prefix + "{" + id + "}:h" }
func (s *Store) indexKey(h string) string    { return s.prefix + "i:" + h }

// appendIndexKey appends indexKey(idHash(id)) to dst.
func (s *Store) appendIndexKey(dst []byte, id guard.Identifier) []byte {
	return s.appendIDHash(append(append(dst, s.prefix...), "i:"...), id)
}

// appendRecordKey appends recordKey(id) to dst.
func (s *Store) appendRecordKey(dst []byte, id string) []byte {
	dst = append(dst, s.prefix...)
	dst = append(dst, '{')
	dst = append(dst, id...)
	return append(dst, "}:r"...)
}

// noteKey names a notification-dedupe key: the caller's key is HMAC'd so
// whatever it contains never reaches Redis in clear.
func (s *Store) noteKey(k string) string {
	var out [2 * 16]byte
	m := s.getMAC()
	hex.Encode(out[:], m.sumOf("n:", k, "")[:16])
	s.putMAC(m)
	return s.prefix + "n:" + string(out[:])
}
