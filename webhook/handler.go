package webhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/consentguard/consentguard/guard"
	"github.com/prometheus/client_golang/prometheus"
)

// Store is what the webhooks need from the consent store; *cache.Store
// satisfies it.
//
// Apply writes every update under the store's version compare-and-set and
// returns one outcome per update; an error means nothing may be
// acknowledged. Seen and Remember keep notification Ids for dedupe.
type Store interface {
	Apply(ctx context.Context, ups []guard.Update) ([]guard.Outcome, error)
	Seen(ctx context.Context, keys []string) ([]bool, error)
	Remember(ctx context.Context, keys []string, ttl time.Duration) error
}

// Defaults for Options.
const (
	DefaultMaxBody      = 5 << 20
	DefaultDedupeTTL    = 25 * time.Hour
	DefaultStoreTimeout = 10 * time.Second
	// SignatureSkew is how far X-Timestamp may be from the clock.
	SignatureSkew = 5 * time.Minute
)

// Paths served by Handler.
const (
	OutboundPath = "/salesforce/outbound"
	EventsPath   = "/salesforce/events"
)

// Options configure a Handler.
type Options struct {
	Mapping    Mapping          // default DefaultMapping()
	Vocabulary guard.Vocabulary // default guard.DefaultVocabulary()
	Region     string           // default phone region, default DE

	// OrgIDs allow-lists Salesforce organisations (15 or 18 characters,
	// compared on the first 15). Empty allows any organisation.
	OrgIDs []string
	// Token is the ?token= of /salesforce/outbound (compared in constant
	// time). Empty rejects every outbound message.
	Token string

	// BearerToken and HMACSecret authenticate /salesforce/events; with
	// both empty every event is rejected.
	BearerToken, HMACSecret string

	MaxBody      int64         // request body limit, default 5 MiB; larger → 413
	DedupeTTL    time.Duration // how long notification Ids are remembered, default 25 h
	StoreTimeout time.Duration // bound on one POST's store calls, default 10 s

	Clock      func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Handler serves POST /salesforce/outbound and POST /salesforce/events
// (exact paths; mount it under any mux). It is safe for concurrent use.
type Handler struct {
	st      Store
	mapping Mapping
	vocab   guard.Vocabulary
	region  string
	orgs    []string
	token   secret
	bearer  secret
	hmacKey []byte
	maxBody int64
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time
	log     *slog.Logger
	m       *metrics
	bufs    sync.Pool
}

// New returns a Handler writing to st.
func New(st Store, opts Options) *Handler {
	h := &Handler{
		st:      st,
		mapping: opts.Mapping,
		vocab:   opts.Vocabulary.OrDefault(),
		region:  opts.Region,
		orgs:    opts.OrgIDs,
		token:   newSecret(opts.Token),
		bearer:  newSecret(opts.BearerToken),
		maxBody: opts.MaxBody,
		ttl:     opts.DedupeTTL,
		timeout: opts.StoreTimeout,
		now:     opts.Clock,
		log:     opts.Logger,
		m:       newMetrics(opts.Registerer),
	}
	if opts.HMACSecret != "" {
		h.hmacKey = []byte(opts.HMACSecret)
	}
	if h.mapping == nil {
		h.mapping = DefaultMapping()
	}
	if h.region == "" {
		h.region = "DE"
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBody
	}
	if h.ttl <= 0 {
		h.ttl = DefaultDedupeTTL
	}
	if h.timeout <= 0 {
		h.timeout = DefaultStoreTimeout
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.bufs.New = func() any { return new(bytes.Buffer) }
	return h
}

// ServeHTTP routes the two webhook paths.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var serve func(http.ResponseWriter, *http.Request) int
	var endpoint string
	switch r.URL.Path {
	case OutboundPath:
		serve, endpoint = h.outbound, "outbound"
	case EventsPath:
		serve, endpoint = h.events, "events"
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		h.m.requests.WithLabelValues(endpoint, "405").Inc()
		return
	}
	start := time.Now()
	code := serve(w, r)
	h.m.duration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	h.m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
}

// secret is a configured token, kept as its SHA-256 so that comparing
// leaks neither content nor length.
type secret struct {
	set bool
	sum [sha256.Size]byte
}

func newSecret(s string) secret {
	if s == "" {
		return secret{}
	}
	return secret{set: true, sum: sha256.Sum256([]byte(s))}
}

// equal compares in constant time; an unset secret matches nothing.
func (s secret) equal(got string) bool {
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(s.sum[:], sum[:]) == 1 && s.set
}

// orgAllowed checks an organisation Id against the allow-list.
func (h *Handler) orgAllowed(org string) bool {
	if len(h.orgs) == 0 {
		return true
	}
	for _, o := range h.orgs {
		if guard.SameOrg(o, org) {
			return true
		}
	}
	return false
}

// errTooLarge: the body exceeds MaxBody.
var errTooLarge = errors.New("body too large")

// readBody reads the whole body, at most h.maxBody bytes, into a pooled
// buffer; release it with h.release.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) (*bytes.Buffer, error) {
	if r.ContentLength > h.maxBody {
		return nil, errTooLarge
	}
	buf := h.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		h.release(buf)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errTooLarge
		}
		return nil, fmt.Errorf("reading body: %w", err)
	}
	return buf, nil
}

func (h *Handler) release(buf *bytes.Buffer) {
	if buf.Cap() <= 1<<20 {
		h.bufs.Put(buf)
	}
}

// recordOptions are the Mapping.Record options for one request.
func (h *Handler) recordOptions() RecordOptions {
	return RecordOptions{Vocabulary: h.vocab, Region: h.region, Now: h.now()}
}

// countWarnings logs (without personal data) and counts what Record
// reported for one applied record.
func (h *Handler) countWarnings(endpoint string, up *guard.Update, ws []Warning) {
	for _, w := range ws {
		h.m.warnings.WithLabelValues(endpoint, up.Object, w.Field, string(w.Code)).Inc()
		switch w.Code {
		case WarnUnversioned:
			h.log.Info("unversioned record: can only lower consent", "endpoint", endpoint,
				"object", up.Object, "id", up.ID)
		default:
			h.log.Warn("field value not understood; stored record without it", "endpoint", endpoint,
				"object", up.Object, "id", up.ID, "field", w.Field, "code", string(w.Code), "value", w.Value)
		}
	}
}

// countOutcomes counts what the store did.
func (h *Handler) countOutcomes(endpoint string, outs []guard.Outcome) {
	for _, o := range outs {
		h.m.records.WithLabelValues(endpoint, o.String()).Inc()
	}
}

// contentTypeXML is the type of every /salesforce/outbound answer.
const contentTypeXML = "text/xml; charset=utf-8"

// writeBody answers with status and the whole body b, of type contentType,
// and returns status.
func writeBody(w http.ResponseWriter, status int, contentType string, b []byte) int {
	hdr := w.Header()
	hdr.Set("Content-Type", contentType)
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return status
}

// storeContext bounds the store calls of one request.
func (h *Handler) storeContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.timeout)
}
