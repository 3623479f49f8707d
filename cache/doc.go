// Package cache is consentguard's Redis adapter: the consent store of
// DESIGN.md ("Ingest rules") on go-redis/v9, behind guard's small Store
// interface.
//
// A record lives under keys that share a Cluster hash tag (its Salesforce
// Id), so one Lua compare-and-set script can apply an update atomically on
// any deployment: single server, Sentinel or Cluster (see NewClient for the
// URL forms). Identifiers are kept only as HMAC-SHA256(HashKey, id.Key()):
// the index maps each hash to the Ids of the records carrying it and,
// outside Cluster, to each record's lookup line, which the write script
// keeps in the same atomic run as the record, so a lookup is one command on
// one key and no crash can leave an entry the record does not back. On
// Cluster the index lies in other slots and is written after the script;
// there every lookup verifies the entry against the record, so a crash
// between the two writes cannot grant consent. RepairIndex checks the whole
// index against the records, then every live record against the index,
// for keys deleted or restored behind the store's back. Upgrade converts data of the previous schema (2, whose
// index keys were sets) in place.
//
// README.md in this directory documents the key layout, the Lua rules and
// durability settings.
package cache
