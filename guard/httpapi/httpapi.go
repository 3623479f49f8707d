package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/consentguard/consentguard/guard"
	"github.com/gin-gonic/gin"
	"github.com/go-playground/validator/v10"
	"github.com/prometheus/client_golang/prometheus"
)

// Contacts is what the contact routes and /readyz need from the store.
// *cache.Store satisfies it.
type Contacts interface {
	// Get returns a record, tombstones included; guard.ErrNotFound when
	// there is none.
	Get(ctx context.Context, id string) (guard.Record, error)
	// History returns a record's consent history, oldest first.
	History(ctx context.Context, id string) ([]guard.Change, error)
	// Erase tombstones a record (admin erase).
	Erase(ctx context.Context, id string) (guard.Outcome, error)
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// Key is one API key, configured by the hex SHA-256 of the key (the key
// itself is never stored) and the scopes it grants.
//
// Scopes: "check:<channel>" (e.g. "check:phone"), "check:*",
// "contacts:read", "contacts:erase", "*" (everything); more generally
// "x:*" grants every scope starting with "x:".
type Key struct {
	Name   string   `yaml:"name"`
	SHA256 string   `yaml:"sha256"`
	Scopes []string `yaml:"scopes"`
}

// Defaults for Options.
const (
	DefaultMaxBatch = 10000
	DefaultMaxBody  = 8 << 20
	DefaultTimeout  = time.Second
)

// Options configure the handler. The zero value serves anonymously with
// the defaults above, logs nothing and registers no metrics.
type Options struct {
	// AllowAnonymous lets requests without a key use every route. With no
	// Keys configured anonymous access is always allowed (cmd warns).
	// A request that presents a key must present a valid one either way.
	AllowAnonymous bool
	// Keys are accepted as "Authorization: Bearer <key>" or "X-API-Key".
	Keys []Key
	// MaxBatch bounds the items of one POST /v1/check/batch (default 10000).
	MaxBatch int
	// MaxBody bounds a request body in bytes (default 8 MiB).
	MaxBody int64
	// Timeout bounds the store calls of /v1/contacts and /readyz (default
	// 1s). Checks use the guard's own timeout.
	Timeout time.Duration
	// Logger gets request logs at debug level (queries masked), panics at
	// error level. nil discards.
	Logger *slog.Logger
	// Gatherer, when set, is served on /metrics.
	Gatherer prometheus.Gatherer
	// Registerer, when set, gets the request and decision metrics.
	Registerer prometheus.Registerer
	// Validate checks request structs; nil creates one instance.
	Validate *validator.Validate
	// ExtraRoutes, when set, mounts more routes (e.g. /v1/import) on the
	// engine after the built-in ones. Routes under /v1/ are authenticated
	// like the built-in ones; guard them with RequireScope.
	ExtraRoutes func(*gin.Engine)
}

// server holds what the handlers share.
type server struct {
	guard    *guard.Guard
	contacts Contacts
	log      *slog.Logger
	validate *validator.Validate
	auth     authenticator
	metrics  *metrics
	maxBatch int
	maxBody  int64
	timeout  time.Duration
	gatherer prometheus.Gatherer
}

// New returns the HTTP API over g (decisions) and contacts (record
// inspection, erase, readiness). It panics on a malformed Key.SHA256, which
// is a configuration error cmd validates first (see ValidateKeys).
func New(g *guard.Guard, contacts Contacts, opts Options) http.Handler {
	s := &server{
		guard:    g,
		contacts: contacts,
		log:      opts.Logger,
		validate: opts.Validate,
		maxBatch: opts.MaxBatch,
		maxBody:  opts.MaxBody,
		timeout:  opts.Timeout,
		gatherer: opts.Gatherer,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.validate == nil {
		s.validate = validator.New(validator.WithRequiredStructEnabled())
	}
	if s.maxBatch <= 0 {
		s.maxBatch = DefaultMaxBatch
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBody
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	auth, err := newAuthenticator(opts.Keys, opts.AllowAnonymous || len(opts.Keys) == 0)
	if err != nil {
		panic("httpapi: " + err.Error())
	}
	s.auth = auth
	s.metrics = newMetrics(opts.Registerer)

	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	s.routes(r)
	if opts.ExtraRoutes != nil {
		opts.ExtraRoutes(r)
	}
	return r
}

// ValidateKeys reports malformed keys (sha256 not 64 hex digits, no
// scopes, duplicate hashes), all at once, for cmd's config validation.
func ValidateKeys(keys []Key) error {
	_, err := newAuthenticator(keys, false)
	return err
}

// HashKey returns the hex SHA-256 of an API key, the form Key.SHA256 holds.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func keyName(k Key, i int) string {
	if strings.TrimSpace(k.Name) != "" {
		return fmt.Sprintf("%q", k.Name)
	}
	return fmt.Sprintf("#%d", i+1)
}
