package cache

// UseClusterLookup makes s read and write the way it does on a
// *redis.ClusterClient (index kept by the caller after the script, lookups
// in two verified round trips), so the contract suite covers that path
// against a standalone server.
func UseClusterLookup(s *Store) { s.cluster = true }

// LookupPath names the read path s uses: "cluster" or "direct".
func LookupPath(s *Store) string {
	if s.cluster {
		return "cluster"
	}
	return "direct"
}
