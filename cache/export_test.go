package cache

// UseClusterLookup makes s answer lookups the way it does on a
// *redis.ClusterClient (two pipelined round trips, no cross-slot script), so
// the contract suite covers that path against a standalone server.
func UseClusterLookup(s *Store) { s.cluster = true }
