package cache

import "github.com/redis/go-redis/v9"

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

// casScript applies one update to one record: the compare-and-set of the
// ingest rules. It touches only KEYS[1] (record) and KEYS[2] (history),
// which share a hash tag, so it runs on Cluster too.
//
// ARGV: 1 mode ("u" upsert, "d" delete, "e" admin erase), 2 version ms
// ("0" = unversioned), 3 now ms, 4 object, 5-8 consent words, 9 their ranks
// (four digits), 10 identifier hashes (sorted, space-separated), 11 history
// limit, 12 source, 13 ref, 14 record Id.
//
// Returns {outcome, hashes the record now carries, hashes it no longer
// carries}; the caller maintains the index from the last two.
var casScript = redis.NewScript(`
local rk, hk = KEYS[1], KEYS[2]
local mode, vs, now = ARGV[1], ARGV[2], ARGV[3]
local ver = tonumber(vs)
local cur = redis.call('HMGET', rk, 'v', 'd', 'k', 'i', 'o', 'c0', 'c1', 'c2', 'c3')
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
  return {5, '', si}
end

local function write(v, words, k, ids, outcome)
  local line = table.concat({ids, ARGV[14], v, obj, words[1], words[2], words[3], words[4], now}, '\0')
  redis.call('HSET', rk, 'v', v, 'o', obj, 'c0', words[1], 'c1', words[2],
    'c2', words[3], 'c3', words[4], 'k', k, 'i', ids, 'u', now, 'l', line)
  redis.call('HDEL', rk, 'd')
  history(outcome, v, words, false)
  return {outcome, ids, minus(si, ids)}
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
  if exists and tv < sv then return {6, si, ''} end
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
if ver ~= 0 and ver < sv then return {6, si, ''} end

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
if not changed then return {7, si, ''} end
return write(svs, w, table.concat(k), ids, outcome)
`)

// lookupScript answers a batch of lookups in one round trip on a
// non-cluster Redis. It only reads.
//
// KEYS[j] is an index key (prefix+"i:"+hash) or a record key
// (prefix+"{Id}:r"); ARGV[1] is the key prefix. For an index key it reads the
// lookup line of every record the set names and keeps the records that are
// live (have a line) and still carry the hash (the line's first field lists
// it): the index is only a hint. The record keys it reads are not in KEYS,
// which standalone Redis and Sentinel allow and Cluster does not:
// Store.Lookup uses two pipelined round trips there instead.
//
// Returns {lines, stale}: lines[j] holds the lookup lines of the records
// found for item j joined by NUL ("" for none); stale lists (hash, id) pairs
// whose index entry named a record not carrying the hash. A single key with
// no stale entry, the common check, returns just its lines as one string:
// every table a script builds and returns costs server time, and single
// checks are the hot path.
var lookupScript = redis.NewScript(`
local p = ARGV[1]
local pl = #p
local stale
-- the line's first field (64-hex hashes joined by spaces) holds h
local function carries(line, h)
  local e = string.find(line, '\0', 1, true)
  if not e or #h ~= 64 then return false end
  local i = 1
  while true do
    i = string.find(line, h, i, true)
    if not i or i > e then return false end
    if (i - 1) % 65 == 0 then return true end
    i = i + 1
  end
end
local function find(k)
  if string.byte(k, pl + 1) == 123 then
    return redis.call('HGET', k, 'l') or ''
  end
  local ids = redis.call('SMEMBERS', k)
  local n = #ids
  if n == 0 then return '' end
  local h = string.sub(k, pl + 3)
  if n > 1 then table.sort(ids) end
  local line
  for m = 1, n do
    local l = redis.call('HGET', p .. '{' .. ids[m] .. '}:r', 'l')
    if l and carries(l, h) then
      if line then line = line .. '\0' .. l else line = l end
    else
      stale = stale or {}
      stale[#stale + 1] = h
      stale[#stale + 1] = ids[m]
    end
  end
  return line or ''
end
if #KEYS == 1 then
  local line = find(KEYS[1])
  if not stale then return line end
  return {{line}, stale}
end
local out = {}
for j = 1, #KEYS do out[j] = find(KEYS[j]) end
return {out, stale or {}}
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
