package cache

// UseClusterLookup makes s answer lookups the way it does on a
// *redis.ClusterClient (two pipelined round trips, no cross-slot script), so
// the contract suite covers that path against a standalone server.
func UseClusterLookup(s *Store) { s.cluster = true }

// UseScriptLookup makes s answer lookups with the read-only Lua script, the
// fallback for a Redis that refuses SORT_RO with GET patterns.
func UseScriptLookup(s *Store) { s.sortOff.Store(true) }

// LookupPath names the read path s uses now: "cluster", "sort" or "script".
func LookupPath(s *Store) string {
	switch {
	case s.cluster:
		return "cluster"
	case s.useSort():
		return "sort"
	}
	return "script"
}
