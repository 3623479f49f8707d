// Package sfrest reconciles the consent store from the Salesforce REST API:
// `consentguard sync` of DESIGN.md.
//
// It implements the OAuth 2.0 client credentials flow of a Connected App or
// External Client App (POST /services/oauth2/token with
// grant_type=client_credentials; RFC 6749 section 4.4 as Salesforce
// documents it) and the REST API Query and QueryAll resources
// (GET /services/data/vXX.X/query?q=SOQL, /queryAll for deleted rows,
// following nextRecordsUrl until done). Requests that Salesforce answers
// with a transient failure (429, 502, 503, 504, 403 REQUEST_LIMIT_EXCEEDED,
// 500 to a GET, a dropped connection) are repeated with backoff; see
// Config.MaxAttempts. Every record goes through the same
// webhook.Mapping as the outbound messages and JSON events, and every page is
// written through the store's compare-and-set Apply, so a sync can never
// undo a newer change that arrived by webhook, and running it again is safe.
package sfrest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/consentguard/consentguard/webhook"
)

// Defaults for Config.
const (
	DefaultAPIVersion = "62.0"
	DefaultTimeout    = 2 * time.Minute // one HTTP request, body included
	DefaultMaxBody    = 64 << 20        // bytes of one response
	// DefaultMaxAttempts is how often one request is tried, the first
	// attempt included, when Salesforce fails transiently.
	DefaultMaxAttempts = 5
)

// Backoff between attempts: full jitter, a random wait between zero and
// retryBase·2^(n-1) after the nth attempt, never more than maxRetryWait. A
// Retry-After header replaces the random wait; one longer than maxRetryWait
// is not shortened: the client gives up at once instead.
const (
	retryBase    = 500 * time.Millisecond
	maxRetryWait = 30 * time.Second
)

// Config reaches one Salesforce org.
type Config struct {
	// URL is the org's My Domain login URL, e.g.
	// https://acme.my.salesforce.com. It must be https; plain http is
	// accepted only for loopback hosts (tests).
	URL          string
	ClientID     string // consumer key
	ClientSecret string // consumer secret
	APIVersion   string // "62.0" (default); a leading "v" is accepted
	// HTTPClient, when set, is used as is. The default has DefaultTimeout
	// and follows no redirects (the bearer token stays with the instance).
	HTTPClient *http.Client
	MaxBody    int64 // default DefaultMaxBody
	// MaxAttempts bounds how often one request (the token request, a
	// query, one queryMore page) is tried when Salesforce fails
	// transiently, the first attempt included. Zero or less means
	// DefaultMaxAttempts; 1 turns retries off. The re-authentication after a
	// 401 does not count as an attempt.
	MaxAttempts int
	// Logger gets a warning for each retry (operation, attempt, status and
	// errorCode or network error, wait) and never a token, secret or row.
	Logger *slog.Logger
}

// Client talks to one org's REST API. It authenticates lazily, keeps the
// access token in memory only, re-authenticates once when Salesforce
// answers 401 (INVALID_SESSION_ID), and repeats requests that failed
// transiently. It is safe for concurrent use.
type Client struct {
	login       *url.URL
	id          string
	secret      string
	version     string
	hc          *http.Client
	maxBody     int64
	maxAttempts int
	log         *slog.Logger

	// sleep waits d or until ctx is done; jitter picks a wait in [0, d].
	// Tests replace both.
	sleep  func(ctx context.Context, d time.Duration) error
	jitter func(d time.Duration) time.Duration

	mu       sync.Mutex
	token    string
	instance *url.URL
}

// ErrAuth marks a refused client credentials request (wrong consumer key
// or secret, flow not enabled, no run-as user). errors.Is(err, ErrAuth).
var ErrAuth = errors.New("salesforce refused the client credentials")

// ErrResponse marks a response that is not what the API documents (too
// large, not JSON, a foreign nextRecordsUrl).
var ErrResponse = errors.New("unexpected response from Salesforce")

// APIError is an error answer from Salesforce: the REST API's
// [{"message","errorCode"}] or the token endpoint's
// {"error","error_description"}. It holds no credentials or tokens.
type APIError struct {
	Op      string // "token", "query", "queryAll"
	Status  int    // HTTP status
	Code    string // errorCode / error, e.g. INVALID_FIELD, invalid_client
	Message string // message / error_description, cut to 300 characters
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("salesforce %s: HTTP %d", e.Op, e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is reports token-endpoint refusals as ErrAuth; a rate limit (429,
// REQUEST_LIMIT_EXCEEDED) is not a refusal of the credentials.
func (e *APIError) Is(target error) bool {
	return target == ErrAuth && e.Op == "token" && e.Status >= 400 && e.Status < 500 &&
		e.Status != http.StatusTooManyRequests && e.Code != codeLimitExceeded
}

// codeLimitExceeded is Salesforce's errorCode for an exceeded API request
// limit (HTTP 403), total or concurrent.
const codeLimitExceeded = "REQUEST_LIMIT_EXCEEDED"

var apiVersionRE = regexp.MustCompile(`^[0-9]{2,3}\.[0-9]$`)

// New checks the configuration and returns a client. It does not contact
// Salesforce. Missing settings are reported all at once.
func New(cfg Config) (*Client, error) {
	var errs []error
	login, err := checkURL(cfg.URL)
	if err != nil {
		errs = append(errs, fmt.Errorf("url: %w", err))
	}
	if cfg.ClientID == "" {
		errs = append(errs, errors.New("client_id: required"))
	}
	if cfg.ClientSecret == "" {
		errs = append(errs, errors.New("client_secret: required"))
	}
	ver := strings.TrimPrefix(strings.TrimSpace(cfg.APIVersion), "v")
	if ver == "" {
		ver = DefaultAPIVersion
	}
	if !apiVersionRE.MatchString(ver) {
		errs = append(errs, fmt.Errorf("api_version: %q is not like 62.0", webhook.Printable(cfg.APIVersion, 20)))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c := &Client{
		login: login, id: cfg.ClientID, secret: cfg.ClientSecret, version: ver,
		hc: cfg.HTTPClient, maxBody: cfg.MaxBody, maxAttempts: cfg.MaxAttempts, log: cfg.Logger,
		sleep:  sleep,
		jitter: func(d time.Duration) time.Duration { return rand.N(d + 1) },
	}
	if c.hc == nil {
		c.hc = &http.Client{
			Timeout: DefaultTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("salesforce answered with a redirect; set the org's My Domain URL")
			},
		}
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxBody
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = DefaultMaxAttempts
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// checkURL accepts an absolute https URL without query or fragment, or
// http to a loopback host. The path is dropped: Salesforce paths are fixed.
func checkURL(raw string) (*url.URL, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("required (the org's My Domain, e.g. https://acme.my.salesforce.com)")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return nil, errors.New("not an absolute URL like https://acme.my.salesforce.com")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	default:
		return nil, errors.New("must be https")
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// tokenResponse is the token endpoint's answer (success or error).
type tokenResponse struct {
	AccessToken      string `json:"access_token"`
	InstanceURL      string `json:"instance_url"`
	TokenType        string `json:"token_type"`
	IssuedAt         string `json:"issued_at"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

// authenticate runs the client credentials flow and keeps the token. The
// POST is repeated on transient failures except a 500 (see retryable):
// repeating a grant at most issues another short-lived token.
func (c *Client) authenticate(ctx context.Context) (string, *url.URL, error) {
	form := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {c.id},
		"client_secret": {c.secret},
	}.Encode()
	endpoint := c.login.JoinPath("/services/oauth2/token").String()
	var a answer
	for n := 1; ; n++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form))
		if err != nil {
			return "", nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		a, err = c.send(req)
		if err == nil && a.status == http.StatusOK {
			break
		}
		if err != nil {
			err = fmt.Errorf("salesforce token: %w", err)
		} else {
			err = tokenError(a.status, a.body)
		}
		if err := c.again(ctx, "token", n, false, a, err); err != nil {
			return "", nil, err
		}
	}
	var tr tokenResponse
	if jerr := json.Unmarshal(a.body, &tr); jerr != nil || tr.AccessToken == "" {
		return "", nil, fmt.Errorf("salesforce token: %w: no access_token in the answer", ErrResponse)
	}
	if tt := tr.TokenType; tt != "" && !strings.EqualFold(tt, "Bearer") {
		return "", nil, fmt.Errorf("salesforce token: %w: token_type %q, want Bearer", ErrResponse, webhook.Printable(tt, 20))
	}
	inst := c.login
	if tr.InstanceURL != "" {
		u, err := checkURL(tr.InstanceURL)
		if err != nil {
			return "", nil, fmt.Errorf("salesforce token: %w: instance_url %v", ErrResponse, err)
		}
		if c.login.Scheme == "https" && u.Scheme != "https" {
			return "", nil, fmt.Errorf("salesforce token: %w: instance_url is not https", ErrResponse)
		}
		inst = u
	}
	c.mu.Lock()
	c.token, c.instance = tr.AccessToken, inst
	c.mu.Unlock()
	c.log.Debug("salesforce: authenticated", "instance", inst.Host)
	return tr.AccessToken, inst, nil
}

// tokenError reads the token endpoint's {"error","error_description"}.
func tokenError(status int, body []byte) *APIError {
	e := &APIError{Op: "token", Status: status}
	var tr tokenResponse
	if json.Unmarshal(body, &tr) == nil {
		e.Code, e.Message = webhook.Printable(tr.Error, 60), webhook.Printable(tr.ErrorDescription, 300)
	}
	return e
}

// session returns the current token, authenticating when there is none.
func (c *Client) session(ctx context.Context) (string, *url.URL, error) {
	c.mu.Lock()
	tok, inst := c.token, c.instance
	c.mu.Unlock()
	if tok != "" {
		return tok, inst, nil
	}
	return c.authenticate(ctx)
}

// drop forgets tok unless another request already replaced it.
func (c *Client) drop(tok string) {
	c.mu.Lock()
	if c.token == tok {
		c.token = ""
	}
	c.mu.Unlock()
}

// answer is what one request got back.
type answer struct {
	status     int
	body       []byte
	retryAfter string // the Retry-After header
}

// send does one request and reads at most maxBody bytes of the answer.
func (c *Client) send(req *http.Request) (answer, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error names the URL; ours carry no credentials (the query
		// holds SOQL only), but keep the message short.
		return answer{}, err
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return a, fmt.Errorf("read answer: %w", err)
	}
	if int64(len(body)) > c.maxBody {
		return a, fmt.Errorf("%w: answer larger than %d bytes", ErrResponse, c.maxBody)
	}
	a.body = body
	return a, nil
}

// get fetches path (below the instance URL) with the bearer token,
// re-authenticating once on 401 and repeating transient failures. The
// re-authentication is not counted as an attempt, and the token request
// keeps its own attempts.
func (c *Client) get(ctx context.Context, op, pathAndQuery string) ([]byte, error) {
	reauthed := false
	for n := 1; ; {
		tok, inst, err := c.session(ctx)
		if err != nil {
			return nil, err
		}
		u, err := inst.Parse(pathAndQuery)
		if err != nil {
			return nil, fmt.Errorf("salesforce %s: %w", op, err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Accept", "application/json")
		a, err := c.send(req)
		if err == nil && a.status == http.StatusOK {
			return a.body, nil
		}
		if err != nil {
			err = fmt.Errorf("salesforce %s: %w", op, err)
		} else {
			e := apiError(op, a.status, a.body)
			if a.status == http.StatusUnauthorized && !reauthed {
				reauthed = true
				c.log.Info("salesforce: session expired, authenticating again", "code", e.Code)
				c.drop(tok)
				continue
			}
			err = e
		}
		if err := c.again(ctx, op, n, true, a, err); err != nil {
			return nil, err
		}
		n++
	}
}

// again decides after the nth attempt of op failed with err whether to try
// once more. If so, it logs, waits and returns nil; otherwise it returns
// the error to give up with: err itself, noting the number of attempts
// when there was more than one, and the wait Salesforce asked for when its
// Retry-After is longer than maxRetryWait; or, when ctx ends during the
// wait, err joined with ctx's error (errors.Is and errors.As find both).
func (c *Client) again(ctx context.Context, op string, n int, idempotent bool, a answer, err error) error {
	retry := retryable(ctx, idempotent, err)
	var attempts string
	if n > 1 {
		attempts = fmt.Sprintf(" (after %d attempts)", n)
	}
	d, asked := parseRetryAfter(a.retryAfter, time.Now())
	if retry && asked && d > maxRetryWait {
		// Trying again sooner than asked is futile (the 24-hour API
		// request limit, say), and a sync should not hang for that long:
		// give up now and say when Salesforce expects the next try.
		secs := int64((d + time.Second - 1) / time.Second)
		return fmt.Errorf("%w%s; Salesforce asks to wait %d s before retrying (more than the %d s this client waits); run sync again later",
			err, attempts, secs, int64(maxRetryWait/time.Second))
	}
	if !retry || n >= c.maxAttempts {
		if attempts == "" {
			return err
		}
		return fmt.Errorf("%w%s", err, attempts)
	}
	if !asked {
		d = c.backoff(n)
	}
	args := []any{"op", op, "attempt", n, "max_attempts", c.maxAttempts, "wait", d}
	if e, ok := errors.AsType[*APIError](err); ok {
		args = append(args, "status", e.Status, "code", e.Code)
	} else {
		// Without the *url.Error around it: no URL, no SOQL in the log.
		cause := err
		if ue, ok := errors.AsType[*url.Error](err); ok {
			cause = ue.Err
		}
		args = append(args, "error", cause.Error())
	}
	c.log.Warn("salesforce: transient failure, trying again", args...)
	if werr := c.sleep(ctx, d); werr != nil {
		return fmt.Errorf("%w; stopped waiting to try again after %d of %d attempts: %w", err, n, c.maxAttempts, werr)
	}
	return nil
}

// retryable reports whether a failed request may be repeated:
//   - 429, 502, 503 and 504, and 403 REQUEST_LIMIT_EXCEEDED (Salesforce's
//     API limit answer, total or concurrent requests);
//   - 500 only when the request is idempotent (our GETs are read-only; the
//     token POST is not repeated after the server failed processing it);
//   - network failures that are transient: connection refused, reset or
//     aborted, a connection closed before the whole answer, a timeout of
//     the HTTP client or the dialer, a temporary DNS failure.
//
// Nothing is repeated once ctx is done: the caller's cancellation and
// deadline end the request. Other answers (400, 401, 403, 404, …) are
// final; a 401 on a data request has its own path in get.
func retryable(ctx context.Context, idempotent bool, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if e, ok := errors.AsType[*APIError](err); ok {
		switch e.Status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		case http.StatusForbidden:
			return e.Code == codeLimitExceeded
		case http.StatusInternalServerError:
			return idempotent
		}
		return false
	}
	if errors.Is(err, ErrResponse) {
		return false
	}
	for _, t := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE, io.EOF, io.ErrUnexpectedEOF} {
		if errors.Is(err, t) {
			return true
		}
	}
	if de, ok := errors.AsType[*net.DNSError](err); ok {
		return de.IsTimeout || de.IsTemporary
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// backoff is the wait after the nth failed attempt when Salesforce sent no
// Retry-After: full jitter up to retryBase·2^(n-1), never more than
// maxRetryWait.
func (c *Client) backoff(n int) time.Duration {
	ceil := maxRetryWait
	if n <= 16 {
		ceil = min(retryBase<<(n-1), maxRetryWait)
	}
	return c.jitter(ceil)
}

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP date
// (RFC 9110 section 10.2.3). A date in the past means no wait.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > 1<<32 { // out of range: far too long anyway
			secs = 1 << 32
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// sleep waits d, or until ctx is done and then returns its error.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// apiError reads the REST API's [{"message","errorCode"}] error body.
func apiError(op string, status int, body []byte) *APIError {
	e := &APIError{Op: op, Status: status}
	type restError struct {
		Message   string `json:"message"`
		ErrorCode string `json:"errorCode"`
	}
	var list []restError
	var one restError
	if json.Unmarshal(body, &list) == nil && len(list) > 0 {
		one = list[0]
	} else if json.Unmarshal(body, &one) != nil {
		return e
	}
	e.Code, e.Message = webhook.Printable(one.ErrorCode, 60), webhook.Printable(one.Message, 300)
	return e
}

// Record is one row of a query result: its object type and its fields by
// API name (matched without regard to case).
type Record struct {
	Type   string // attributes.type
	fields map[string]json.RawMessage
}

// Field returns a field's value in the string form webhook.Mapping.Record
// reads: strings as they are, booleans "true"/"false", numbers as written.
// An absent or null field, and a compound (object or array) value, report
// false.
func (r Record) Field(name string) (string, bool) {
	raw, ok := r.fields[name]
	if !ok {
		raw, ok = r.fields[strings.ToLower(name)]
	}
	if !ok {
		return "", false
	}
	return webhook.JSONValue(raw)
}

// Page is one batch of a query result.
type Page struct {
	Number    int // 1, 2, …
	TotalSize int // of the whole result
	Done      bool
	Records   []Record
}

// queryResult is the Query / QueryAll resource's answer.
type queryResult struct {
	TotalSize      int                          `json:"totalSize"`
	Done           bool                         `json:"done"`
	NextRecordsURL string                       `json:"nextRecordsUrl"`
	Records        []map[string]json.RawMessage `json:"records"`
}

// Query runs a SOQL query and calls fn with each page, following
// nextRecordsUrl until Salesforce says done. With all set it uses the
// QueryAll resource, which also returns deleted (recycle bin) and merged
// rows. An error from fn stops the query and is returned as is.
func (c *Client) Query(ctx context.Context, soql string, all bool, fn func(Page) error) error {
	op := "query" // the resource's name, also naming it in errors
	if all {
		op = "queryAll"
	}
	next := "/services/data/v" + c.version + "/" + op + "?" + url.Values{"q": {soql}}.Encode()
	for n := 1; ; n++ {
		body, err := c.get(ctx, op, next)
		if err != nil {
			return err
		}
		var qr queryResult
		if err := json.Unmarshal(body, &qr); err != nil {
			return fmt.Errorf("salesforce %s page %d: %w: %v", op, n, ErrResponse, err)
		}
		p := Page{Number: n, TotalSize: qr.TotalSize, Done: qr.Done, Records: make([]Record, 0, len(qr.Records))}
		for _, raw := range qr.Records {
			p.Records = append(p.Records, newRecord(raw))
		}
		c.log.Debug("salesforce: page", "op", op, "page", n, "records", len(p.Records), "total", qr.TotalSize)
		if err := fn(p); err != nil {
			return err
		}
		if qr.Done || qr.NextRecordsURL == "" {
			return nil
		}
		// The locator must stay on the instance and below the data API: the
		// bearer token goes wherever it points.
		u, err := url.Parse(qr.NextRecordsURL)
		if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, "/services/data/") || strings.Contains(u.Path, "..") {
			return fmt.Errorf("salesforce %s page %d: %w: nextRecordsUrl is not a /services/data/ path", op, n, ErrResponse)
		}
		if u.String() == next {
			return fmt.Errorf("salesforce %s page %d: %w: nextRecordsUrl repeats", op, n, ErrResponse)
		}
		next = u.String()
	}
}

// newRecord indexes a record's fields by name and lower-cased name.
func newRecord(raw map[string]json.RawMessage) Record {
	r := Record{fields: make(map[string]json.RawMessage, 2*len(raw))}
	for k, v := range raw {
		if k == "attributes" {
			var a struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(v, &a) == nil {
				r.Type = a.Type
			}
			continue
		}
		r.fields[k] = v
		if lk := strings.ToLower(k); lk != k {
			if _, dup := r.fields[lk]; !dup {
				r.fields[lk] = v
			}
		}
	}
	return r
}
