// Package cache is consentguard's Redis adapter: the consent store of
// DESIGN.md ("Ingest rules") on go-redis/v9, behind guard's small Store
// interface.
//
// A record lives under keys that share a Cluster hash tag (its Salesforce
// Id), so one Lua compare-and-set script can apply an update atomically on
// any deployment: single server, Sentinel or Cluster (see NewClient for the
// URL forms). Identifiers are kept only as HMAC-SHA256(HashKey, id.Key()):
// the index maps each hash to record Ids, the record lists the hashes it
// carries, and every lookup verifies the record still carries the hash, so
// an index entry is only ever a hint and a crash between the record write
// and the index write cannot grant consent.
//
// README.md in this directory documents the key layout, the Lua rules and
// durability settings.
package cache
