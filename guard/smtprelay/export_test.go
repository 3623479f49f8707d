package smtprelay

// WithoutChunking makes s send every message with DATA, never BDAT, so
// that tests cover both ways of transferring a message upstream. Call it
// before Serve.
func WithoutChunking(s *Server) { s.up.noChunking = true }
