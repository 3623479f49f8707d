package cache

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Record hash fields (KEYS[1] of casScript, prefix+"{Id}:r"):
//
//	v   version, unix milliseconds ("0": created by an unversioned update)
//	o   Salesforce object ("Contact", "Lead")
//	c0…c3 raw consent word per channel (email, phone, post, storage), "" if none
//	k   four digits, the rank of each stored word (0 denied, 1 missing,
//	    2 pending, 3 granted), computed in Go from the vocabulary at write time
//	i   the identifier hashes the record carries, sorted, space-separated
//	d   "1" on a tombstone (consent and identifiers cleared)
//	u   last change, unix milliseconds
//	l   the lookup line: i, Id, v, o, c0, c1, c2, c3, u joined by NUL
//	    bytes; absent on a tombstone. Lookups read only l: it says whether
//	    the record is live (present) and which hashes it carries (its first
//	    field), so an index entry is verified from this one field.
//
// Outcome codes returned by casScript equal guard.Outcome values; 0 means
// "erase of a record that does not exist".
//
// Identifier index (prefix+"i:"+hash): a hash from record Id to that
// record's lookup line. On a standalone or Sentinel-managed Redis the write
// script keeps it, in the same atomic run as the record: for every hash the
// record carries, field Id holds exactly the record's l; no other field
// names the record. A lookup is then one HVALS of one key. On Cluster the
// index keys lie in other slots than the record, so the caller keeps the
// index after the script (fields with empty values, see maintainIndex) and
// lookups verify each entry against the record.

// casScript applies one update to one record: the compare-and-set of the
// ingest rules. Its declared keys are KEYS[1] (record) and KEYS[2]
// (history), which share a hash tag, so it runs on Cluster too.
//
// ARGV: 1 mode ("u" upsert, "d" delete, "e" admin erase), 2 version ms
// ("0" = unversioned), 3 now ms, 4 object, 5-8 consent words, 9 their ranks
// (four digits), 10 identifier hashes (sorted, space-separated), 11 history
// limit, 12 source, 13 ref, 14 record Id, 15 the index key prefix
// (prefix+"i:") when the script keeps the index, "" when the caller does
// (Cluster). Index keys are not in KEYS: standalone Redis and Sentinel allow
// that, Cluster does not, hence ARGV[15].
//
// Returns {outcome, hashes the record now carries, hashes it no longer
// carries}; on Cluster the caller maintains the index from the last two.
// Where the script keeps the index, an outcome that leaves the record as it
// is (Stale, Unchanged) rewrites the record's entries from its line, which
// repairs an entry lost some other way when Salesforce delivers again.
var casScript = redis.NewScript(`
local rk, hk = KEYS[1], KEYS[2]
local mode, vs, now = ARGV[1], ARGV[2], ARGV[3]
local ver = tonumber(vs)
local rid, ip = ARGV[14], ARGV[15]
local cur = redis.call('HMGET', rk, 'v', 'd', 'k', 'i', 'o', 'c0', 'c1', 'c2', 'c3', 'l')
local exists = cur[1] ~= false
local svs = cur[1] or '0'
local sv = tonumber(svs)
local tomb = cur[2] == '1'
local sk = cur[3] or '1111'
local si = cur[4] or ''
local obj = ARGV[4]
if obj == '' then obj = cur[5] or '' end
local sw = {cur[6] or '', cur[7] or '', cur[8] or '', cur[9] or ''}
local inw = {ARGV[5], ARGV[6], ARGV[7], ARGV[8]}
local ink = ARGV[9]
local ini = ARGV[10]

-- index: the record's entries under the hashes in add (space-separated)
-- get line, those under drop go; only where the script keeps the index.
local function index(add, line, drop)
  if ip == '' then return end
  for h in string.gmatch(add, '%S+') do redis.call('HSET', ip .. h, rid, line) end
  for h in string.gmatch(drop, '%S+') do redis.call('HDEL', ip .. h, rid) end
end

-- keep: the record stays as it is; its entries are rewritten from its line.
local function keep(outcome, carried)
  if carried ~= '' and cur[10] then index(carried, cur[10], '') end
  return {outcome, carried, ''}
end

local function rank(k, c) return tonumber(string.sub(k, c, c)) end

local function history(outcome, v, words, deleted)
  local e = {'{"at":', now, ',"v":', v, ',"o":', tostring(outcome),
    ',"s":', cjson.encode(ARGV[12]), ',"r":', cjson.encode(ARGV[13]), ',"c":['}
  for c = 1, 4 do
    if c > 1 then e[#e + 1] = ',' end
    e[#e + 1] = cjson.encode(words[c])
  end
  e[#e + 1] = '],"d":'
  e[#e + 1] = deleted and 'true' or 'false'
  e[#e + 1] = '}'
  redis.call('RPUSH', hk, table.concat(e))
  redis.call('LTRIM', hk, -tonumber(ARGV[11]), -1)
end

-- hashes in a but not in b (both space-separated)
local function minus(a, b)
  if a == '' then return '' end
  local set, out = {}, {}
  for h in string.gmatch(b, '%S+') do set[h] = true end
  for h in string.gmatch(a, '%S+') do
    if not set[h] then out[#out + 1] = h end
  end
  return table.concat(out, ' ')
end

local function intersect(a, b)
  local set, out = {}, {}
  for h in string.gmatch(b, '%S+') do set[h] = true end
  for h in string.gmatch(a, '%S+') do
    if set[h] then out[#out + 1] = h end
  end
  return table.concat(out, ' ')
end

local function tombstone(tvs)
  redis.call('HDEL', rk, 'c0', 'c1', 'c2', 'c3', 'i', 'l')
  redis.call('HSET', rk, 'v', tvs, 'd', '1', 'k', '1111', 'u', now, 'o', obj)
  history(5, tvs, {'', '', '', ''}, true)
  index('', nil, si)
  return {5, '', si}
end

local function write(v, words, k, ids, outcome)
  local line = table.concat({ids, rid, v, obj, words[1], words[2], words[3], words[4], now}, '\0')
  redis.call('HSET', rk, 'v', v, 'o', obj, 'c0', words[1], 'c1', words[2],
    'c2', words[3], 'c3', words[4], 'k', k, 'i', ids, 'u', now, 'l', line)
  redis.call('HDEL', rk, 'd')
  history(outcome, v, words, false)
  local drop = minus(si, ids)
  index(ids, line, drop)
  return {outcome, ids, drop}
end

if mode == 'e' then
  if not exists then return {0, '', ''} end
  if tonumber(now) > sv then return tombstone(now) end
  return tombstone(svs)
end

if mode == 'd' then
  local tvs = vs
  if ver == 0 then
    tvs = svs
    if tonumber(now) > sv then tvs = now end
  end
  local tv = tonumber(tvs)
  if exists and tomb and tv <= sv then return {6, '', ''} end
  if exists and tv < sv then return keep(6, si) end
  return tombstone(tvs)
end

-- upsert
if exists and tomb and ver <= sv then return {6, '', ''} end
if not exists or tomb then
  if ver == 0 then
    -- unversioned create: keep only what lowers "missing"; no identifiers
    local w, k = {}, {}
    for c = 1, 4 do
      if rank(ink, c) < 1 then w[c] = inw[c]; k[c] = string.sub(ink, c, c)
      else w[c] = ''; k[c] = '1' end
    end
    return write('0', w, table.concat(k), '', 1)
  end
  return write(vs, inw, ink, ini, 1)
end
if ver ~= 0 and ver > sv then return write(vs, inw, ink, ini, 2) end
if ver ~= 0 and ver < sv then return keep(6, si) end

-- equal version (merge) or unversioned (restrict): per channel the lesser
-- rank wins; ties and unversioned updates never raise a channel.
local w, k, changed = {}, {}, false
for c = 1, 4 do
  local a, b = rank(sk, c), rank(ink, c)
  if b < a then
    w[c] = inw[c]; k[c] = string.sub(ink, c, c); changed = true
  else
    w[c] = sw[c]; k[c] = string.sub(sk, c, c)
  end
end
local ids, outcome = si, 4
if ver ~= 0 then
  ids = intersect(si, ini)
  outcome = 3
  if ids ~= si then changed = true end
end
if not changed then return keep(7, si) end
return write(svs, w, table.concat(k), ids, outcome)
`)

// luaCarries defines carries(l, h) for the scripts that check index
// entries against records: whether lookup line l (false for none) lists
// hash h (64 hex digits) in its first field, the Lua form of lineCarries.
// The hashes there are 64 characters each, separated by one space, so a
// whole entry starts at a multiple of 65.
const luaCarries = `
local function carries(l, h)
  local e = l and string.find(l, '\0', 1, true)
  if not e or #h ~= 64 then return false end
  local i = 1
  while true do
    i = string.find(l, h, i, true)
    if not i or i > e then return false end
    if (i - 1) % 65 == 0 then return true end
    i = i + 1
  end
end
`

// repairScript rebuilds one identifier's index hash (KEYS[1]) from the
// records it names, on a non-cluster Redis: each entry whose record is live
// and carries the hash (ARGV[2]) gets the record's current lookup line,
// every other entry is removed. ARGV[1] is the key prefix. A lookup runs it
// when an entry did not hold a line carrying the hash, which the write
// script never leaves behind: only a hand-edited or Cluster-written index
// (whose values are empty) does; RepairIndex runs it on every index key.
// Returns {entries found, entries changed or removed}.
var repairScript = redis.NewScript(luaCarries + `
local rp, h = ARGV[1] .. '{', ARGV[2]
local kv = redis.call('HGETALL', KEYS[1])
local n = 0
for j = 1, #kv, 2 do
  local id, old = kv[j], kv[j + 1]
  local l = redis.call('HGET', rp .. id .. '}:r', 'l')
  if carries(l, h) then
    if l ~= old then redis.call('HSET', KEYS[1], id, l); n = n + 1 end
  else
    redis.call('HDEL', KEYS[1], id); n = n + 1
  end
end
return {#kv / 2, n}
`)

// reindexScript writes one live record's index entries from its lookup
// line, on a non-cluster Redis: under every hash the first field of the
// line (HGET KEYS[1] l) lists, field ARGV[2] (the record Id) of index key
// ARGV[1]..hash gets the line where it is missing or holds another value,
// as the write script's keep() does. A tombstone or a record that is gone
// has no line and gets nothing. RepairIndex runs it on every record, after
// the pass over the index keys, to put back entries missing entirely: no
// index key names the record, so that pass cannot see them. Returns the
// number of entries written.
var reindexScript = redis.NewScript(`
local l = redis.call('HGET', KEYS[1], 'l')
local e = l and string.find(l, '\0', 1, true)
if not e then return 0 end
local n = 0
for h in string.gmatch(string.sub(l, 1, e - 1), '%S+') do
  if #h == 64 then
    local k = ARGV[1] .. h
    if redis.call('HGET', k, ARGV[2]) ~= l then
      redis.call('HSET', k, ARGV[2], l)
      n = n + 1
    end
  end
end
return n
`)

// initScript records the hash key's fingerprint (ARGV[1]) and the data
// schema (ARGV[2]) in the meta hash KEYS[1] if it holds no fingerprint yet,
// both at once, so data written before there was a schema (a fingerprint
// without one) is never stamped with the current schema. Returns the
// stored fingerprint, the stored schema ("" for none) and "1" if it
// recorded them now, else "0".
var initScript = redis.NewScript(`
local m = redis.call('HMGET', KEYS[1], 'fingerprint', 'schema')
if not m[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'schema', ARGV[2])
  return {ARGV[1], ARGV[2], '1'}
end
return {m[1], m[2] or '', '0'}
`)

// Schema 2 → 3 (Store.Upgrade). Schema 2 kept each identifier index key
// as a SET of record Ids; schema 3 keeps a hash from record Id to the
// record's lookup line ("" on Cluster). Records are laid out alike in both.

// upgradeScript converts one schema 2 index key (KEYS[1]) on a non-cluster
// Redis, atomically: if it is a set, every member whose record is live and
// carries the hash (ARGV[2]; ARGV[1] is the key prefix) becomes a field
// holding the record's lookup line, the others are dropped, and the set is
// replaced by that hash (by nothing if none is left). Any other type (a
// key converted by an earlier, interrupted run) is left alone. Returns
// {1 if converted else 0, entries written, members dropped}.
var upgradeScript = redis.NewScript(luaCarries + `
local rp, h = ARGV[1] .. '{', ARGV[2]
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then return {0, 0, 0} end
local ids = redis.call('SMEMBERS', KEYS[1])
local kv = {}
for _, id in ipairs(ids) do
  local l = redis.call('HGET', rp .. id .. '}:r', 'l')
  if carries(l, h) then kv[#kv + 1] = id; kv[#kv + 1] = l end
end
redis.call('DEL', KEYS[1])
` + luaHSetChunks + `
return {1, #kv / 2, #ids - #kv / 2}
`)

// upgradeClusterScript converts one schema 2 index key (KEYS[1]) on
// Cluster, where a script may touch only its own slot: the caller has read
// the set and the records' lines, and passes the members whose record does
// not carry the hash (ARGV). If the key is still a set, its current
// members less those become fields with empty values, replacing the set;
// a member added since the caller read the set is kept (Cluster entries
// are hints that every lookup checks). Any other type is left alone.
// Returns as upgradeScript.
var upgradeClusterScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then return {0, 0, 0} end
local drop = {}
for _, id in ipairs(ARGV) do drop[id] = true end
local ids = redis.call('SMEMBERS', KEYS[1])
local kv = {}
for _, id in ipairs(ids) do
  if not drop[id] then kv[#kv + 1] = id; kv[#kv + 1] = '' end
end
redis.call('DEL', KEYS[1])
` + luaHSetChunks + `
return {1, #kv / 2, #ids - #kv / 2}
`)

// luaHSetChunks writes the field/value list kv into KEYS[1], 200 pairs per
// HSET: unpack of a long list would overflow Lua's C stack.
const luaHSetChunks = `
for j = 1, #kv, 400 do
  redis.call('HSET', KEYS[1], unpack(kv, j, math.min(j + 399, #kv)))
end
`

// upgradeMetaScript records schema ARGV[2] in the meta hash KEYS[1] if it
// still holds the fingerprint ARGV[1] and schema ARGV[3] (compare-and-set).
// Returns the stored fingerprint and schema as they were ("" for none).
var upgradeMetaScript = redis.NewScript(`
local m = redis.call('HMGET', KEYS[1], 'fingerprint', 'schema')
if m[1] == ARGV[1] and m[2] == ARGV[3] then
  redis.call('HSET', KEYS[1], 'schema', ARGV[2])
end
return {m[1] or '', m[2] or ''}
`)

// evalAll runs sc n times, run i on the keys and with the arguments call(i)
// gives, all in one pipeline (EVALSHA). Runs answered NOSCRIPT (a restarted
// or flushed Redis; the run did not happen) go again with EVAL, which also
// caches the script, in a second one. It returns the commands, in order,
// for the caller to read each reply and error.
func (s *Store) evalAll(ctx context.Context, sc *redis.Script, n int, call func(i int) (keys []string, args []any)) []*redis.Cmd {
	cmds := make([]*redis.Cmd, n)
	pipe := s.rdb.Pipeline()
	for i := range cmds {
		keys, args := call(i)
		cmds[i] = sc.EvalSha(ctx, pipe, keys, args...)
	}
	_, _ = pipe.Exec(ctx) // errors are inspected per command
	var retry []int
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			retry = append(retry, i)
		}
	}
	if len(retry) > 0 {
		pipe := s.rdb.Pipeline()
		for _, i := range retry {
			keys, args := call(i)
			cmds[i] = sc.Eval(ctx, pipe, keys, args...)
		}
		_, _ = pipe.Exec(ctx)
	}
	return cmds
}

// evalEach is evalAll for a script on one key: it runs sc once for each
// name (an identifier hash, a record Id), on the key key makes of it and
// with the arguments args gives for it.
func (s *Store) evalEach(ctx context.Context, sc *redis.Script, key func(name string) string, names []string, args func(name string) []any) []*redis.Cmd {
	return s.evalAll(ctx, sc, len(names), func(i int) ([]string, []any) {
		return []string{key(names[i])}, args(names[i])
	})
}
