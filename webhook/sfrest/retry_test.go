package sfrest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/consentguard/consentguard/webhook/sfrest"
	"github.com/consentguard/consentguard/webhook/sfrest/sfresttest"
)

const idSOQL = "SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id"

// mustRetryClient returns a client for cfg (URL and credentials default to
// sf's, if given) whose retries do not sleep, and what reports the waits
// they would have made.
func mustRetryClient(tb testing.TB, sf *sfresttest.Server, cfg sfrest.Config) (*sfrest.Client, func() []time.Duration) {
	tb.Helper()
	if sf != nil {
		cfg.URL, cfg.ClientID, cfg.ClientSecret = sf.URL(), sf.ClientID, sf.ClientSecret
	}
	c, err := sfrest.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c, sfrest.RecordWaits(c)
}

// orgWithRows is a fake org holding n Contact rows.
func orgWithRows(tb testing.TB, n int) *sfresttest.Server {
	tb.Helper()
	sf := sfresttest.Start(tb)
	for i := range n {
		sf.Add("Contact", map[string]any{"Id": fmt.Sprintf("0035g00000ABC%02d", i), "SystemModstamp": at(i)})
	}
	return sf
}

// countRows runs idSOQL and counts the rows of every page.
func countRows(ctx context.Context, c *sfrest.Client) (int, error) {
	rows := 0
	err := c.Query(ctx, idSOQL, false, func(p sfrest.Page) error { rows += len(p.Records); return nil })
	return rows, err
}

func ms(n ...int) []time.Duration {
	var out []time.Duration
	for _, v := range n {
		out = append(out, time.Duration(v)*time.Millisecond)
	}
	return out
}

// fails is what the fake org answers a query with, one after another.
type fails = []sfresttest.Failure

// TestRetry: which answers to a query are repeated, how long the client
// would wait before each attempt, and the error it gives up with.
func TestRetry(t *testing.T) {
	inAnHour := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	for _, tc := range []struct {
		name        string
		fail        fails
		maxAttempts int
		waits       []time.Duration
		status      int    // of the final error, 0 for success
		note        string // in the final error
	}{
		{name: "429 Retry-After seconds", fail: fails{{Status: 429, Message: "slow down", RetryAfter: "2", Times: 1}}, waits: ms(2000)},
		{name: "Retry-After at the cap", fail: fails{{Status: 503, Code: "SERVER_UNAVAILABLE", RetryAfter: "30", Times: 1}}, waits: ms(30000)},
		{name: "Retry-After beyond the cap gives up at once, without sleeping", fail: fails{{Status: 503, Code: "SERVER_UNAVAILABLE", RetryAfter: "3600", Times: 1}}, status: 503,
			note: "; Salesforce asks to wait 3600 s before retrying (more than the 30 s this client waits); run sync again later"},
		{name: "Retry-After date beyond the cap", fail: fails{{Status: 503, Code: "SERVER_UNAVAILABLE", RetryAfter: inAnHour, Times: 1}}, status: 503,
			note: " s before retrying (more than the 30 s this client waits)"},
		{name: "Retry-After beyond the cap after a retry", fail: fails{{Status: 503, Times: 1}, {Status: 403, Code: "REQUEST_LIMIT_EXCEEDED", Message: "TotalRequests Limit exceeded.", RetryAfter: "86400", Times: 9}}, waits: ms(500), status: 403,
			note: "(after 2 attempts); Salesforce asks to wait 86400 s before retrying"},
		{name: "Retry-After beyond the cap with MaxAttempts 1", fail: fails{{Status: 429, RetryAfter: "120", Times: 9}}, maxAttempts: 1, status: 429, note: "Salesforce asks to wait 120 s"},
		{name: "REQUEST_LIMIT_EXCEEDED", fail: fails{{Status: 403, Code: "REQUEST_LIMIT_EXCEEDED", Message: "ConcurrentPerOrgLongTxn Limit exceeded.", Times: 1}}, waits: ms(500)},
		{name: "500 on a GET", fail: fails{{Status: 500, Code: "UNKNOWN_EXCEPTION", Times: 1}}, waits: ms(500)},
		{name: "502 503 504", fail: fails{{Status: 502, Times: 1}, {Status: 503, Code: "SERVER_UNAVAILABLE", Times: 1}, {Status: 504, Times: 1}}, waits: ms(500, 1000, 2000)},
		{name: "400 not retried", fail: fails{{Status: 400, Code: "INVALID_FIELD", Message: "No such column", Times: 1}}, status: 400},
		{name: "400 with Retry-After not retried", fail: fails{{Status: 400, Code: "INVALID_FIELD", RetryAfter: "3600", Times: 1}}, status: 400},
		{name: "403 not retried", fail: fails{{Status: 403, Code: "INSUFFICIENT_ACCESS", Times: 1}}, status: 403},
		{name: "404 not retried", fail: fails{{Status: 404, Code: "NOT_FOUND", Times: 1}}, status: 404},
		{name: "attempts exhausted", fail: fails{{Status: 503, Code: "SERVER_UNAVAILABLE", Message: "down for maintenance", Times: 9}}, waits: ms(500, 1000, 2000, 4000), status: 503, note: "(after 5 attempts)"},
		{name: "MaxAttempts 2", fail: fails{{Status: 429, Times: 9}}, maxAttempts: 2, waits: ms(500), status: 429, note: "(after 2 attempts)"},
		{name: "MaxAttempts 1", fail: fails{{Status: 429, Times: 9}}, maxAttempts: 1, status: 429},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sf := orgWithRows(t, 1)
			c, waits := mustRetryClient(t, sf, sfrest.Config{MaxAttempts: tc.maxAttempts})
			sf.FailData(tc.fail...)
			status, note := tc.status, tc.note
			rows, err := countRows(context.Background(), c)
			if got := waits(); !slices.Equal(got, tc.waits) {
				t.Errorf("waits %v, want %v", got, tc.waits)
			}
			attempts := len(tc.waits) + 1
			if got := len(sf.APIVersions()); got != attempts {
				t.Errorf("%d data requests, want %d", got, attempts)
			}
			failed := attempts // all of them, or all but the last, which succeeds
			if status == 0 {
				failed--
			}
			if got := sf.Failed(); got != failed {
				t.Errorf("%d failures answered, want %d", got, failed)
			}
			if status == 0 {
				if err != nil || rows != 1 {
					t.Fatalf("rows %d, err %v", rows, err)
				}
				return
			}
			code := tc.fail[len(tc.fail)-1].Code
			var ae *sfrest.APIError
			if !errors.As(err, &ae) || ae.Status != status || ae.Code != code {
				t.Fatalf("err = %v, want an *APIError with HTTP %d %s", err, status, code)
			}
			if note != "" && !strings.Contains(err.Error(), note) {
				t.Errorf("err = %v, does not say %s", err, note)
			}
			if note == "" && (strings.Contains(err.Error(), "attempts") || strings.Contains(err.Error(), "asks to wait")) {
				t.Errorf("err = %v, names attempts after one or a wait", err)
			}
		})
	}
}

// TestRetryThenRefused: a final answer after a retry ends the request and
// says how many attempts were made.
func TestRetryThenRefused(t *testing.T) {
	sf := orgWithRows(t, 1)
	c, waits := mustRetryClient(t, sf, sfrest.Config{})
	sf.FailData(sfresttest.Failure{Status: 503, Times: 1})
	err := c.Query(context.Background(), "SELECT Nope FROM Contact ORDER BY SystemModstamp, Id", false, func(sfrest.Page) error { return nil })
	var ae *sfrest.APIError
	if !errors.As(err, &ae) || ae.Code != "INVALID_FIELD" || !strings.Contains(err.Error(), "(after 2 attempts)") {
		t.Fatalf("err = %v", err)
	}
	if got := waits(); !slices.Equal(got, ms(500)) {
		t.Errorf("waits %v", got)
	}
}

// TestRetryQueryMorePage: a queryMore page that fails twice is fetched
// again with the same locator; no row is lost or read twice.
func TestRetryQueryMorePage(t *testing.T) {
	sf := orgWithRows(t, 5)
	sf.PageSize = 2
	c, waits := mustRetryClient(t, sf, sfrest.Config{})
	var ids []string
	err := c.Query(context.Background(), idSOQL, false, func(p sfrest.Page) error {
		for _, r := range p.Records {
			id, _ := r.Field("Id")
			ids = append(ids, id)
		}
		if p.Number == 1 {
			sf.FailData(sfresttest.Failure{Status: 503, Code: "SERVER_UNAVAILABLE", Times: 2})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 5 || len(slices.Compact(slices.Clone(ids))) != 5 {
		t.Errorf("rows %v", ids)
	}
	if got, want := waits(), ms(500, 1000); !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v", got, want)
	}
	if sf.Failed() != 2 || len(sf.Queries()) != 1 {
		t.Errorf("failures %d, queries %d; want 2 and 1", sf.Failed(), len(sf.Queries()))
	}
}

// TestRetryToken: the token request is repeated on 503 (after Retry-After)
// but not on 500 nor when Retry-After is beyond the cap, and a rate limit is
// not reported as refused credentials.
func TestRetryToken(t *testing.T) {
	t.Run("503 then success", func(t *testing.T) {
		sf := orgWithRows(t, 1)
		var logs bytes.Buffer
		c, waits := mustRetryClient(t, sf, sfrest.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		sf.FailToken(sfresttest.Failure{Status: 503, Code: "unavailable", RetryAfter: "1", Times: 1})
		if rows, err := countRows(context.Background(), c); err != nil || rows != 1 {
			t.Fatalf("rows %d, err %v", rows, err)
		}
		if got := waits(); !slices.Equal(got, ms(1000)) {
			t.Errorf("waits %v", got)
		}
		if sf.TokenRequests() != 1 || sf.Failed() != 1 {
			t.Errorf("tokens %d, failures %d; want 1 and 1", sf.TokenRequests(), sf.Failed())
		}
		out := logs.String()
		if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "op=token attempt=1 max_attempts=5 wait=1s status=503 code=unavailable") {
			t.Errorf("log:\n%s", out)
		}
		if strings.Contains(out, sf.ClientSecret) || strings.Contains(out, "00D000000000062!") {
			t.Errorf("log shows a secret or token:\n%s", out)
		}
	})
	t.Run("500 not retried", func(t *testing.T) {
		sf := orgWithRows(t, 1)
		c, waits := mustRetryClient(t, sf, sfrest.Config{})
		sf.FailToken(sfresttest.Failure{Status: 500, Code: "unknown_error", Times: 1})
		_, err := countRows(context.Background(), c)
		var ae *sfrest.APIError
		if !errors.As(err, &ae) || ae.Op != "token" || ae.Status != 500 || len(waits()) != 0 {
			t.Fatalf("err = %v, waits %v", err, waits())
		}
	})
	t.Run("rate limit exhausted", func(t *testing.T) {
		sf := orgWithRows(t, 1)
		c, waits := mustRetryClient(t, sf, sfrest.Config{MaxAttempts: 3})
		sf.FailToken(sfresttest.Failure{Status: 403, Code: "REQUEST_LIMIT_EXCEEDED", Message: "TotalRequests Limit exceeded.", Times: 9})
		_, err := countRows(context.Background(), c)
		var ae *sfrest.APIError
		if !errors.As(err, &ae) || ae.Code != "REQUEST_LIMIT_EXCEEDED" || !strings.Contains(err.Error(), "(after 3 attempts)") {
			t.Fatalf("err = %v", err)
		}
		if errors.Is(err, sfrest.ErrAuth) {
			t.Errorf("rate limit reported as ErrAuth: %v", err)
		}
		if got := waits(); !slices.Equal(got, ms(500, 1000)) {
			t.Errorf("waits %v", got)
		}
	})
	t.Run("Retry-After beyond the cap", func(t *testing.T) {
		sf := orgWithRows(t, 1)
		c, waits := mustRetryClient(t, sf, sfrest.Config{})
		sf.FailToken(sfresttest.Failure{Status: 429, Code: "rate_limited", RetryAfter: "3600", Times: 9})
		_, err := countRows(context.Background(), c)
		var ae *sfrest.APIError
		if !errors.As(err, &ae) || ae.Op != "token" || ae.Status != 429 || !strings.Contains(err.Error(), "Salesforce asks to wait 3600 s") {
			t.Fatalf("err = %v", err)
		}
		if errors.Is(err, sfrest.ErrAuth) {
			t.Errorf("rate limit reported as ErrAuth: %v", err)
		}
		if len(waits()) != 0 || sf.Failed() != 1 || strings.Contains(err.Error(), "attempts") {
			t.Errorf("err = %v, waits %v, %d failed requests; want one request, no wait", err, waits(), sf.Failed())
		}
	})
	t.Run("wrong secret not retried", func(t *testing.T) {
		sf := orgWithRows(t, 1)
		c, waits := mustRetryClient(t, nil, sfrest.Config{URL: sf.URL(), ClientID: sf.ClientID, ClientSecret: "not-the-secret"})
		_, err := countRows(context.Background(), c)
		if !errors.Is(err, sfrest.ErrAuth) || len(waits()) != 0 || strings.Contains(err.Error(), "attempts") {
			t.Fatalf("err = %v, waits %v", err, waits())
		}
	})
}

// TestRetryAfterReauth: the re-authentication after a 401 is not one of
// the attempts: an expired session followed by four 503s still succeeds
// with five attempts.
func TestRetryAfterReauth(t *testing.T) {
	sf := orgWithRows(t, 1)
	c, waits := mustRetryClient(t, sf, sfrest.Config{})
	if _, err := countRows(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	sf.ExpireSessions()
	sf.FailData(sfresttest.Failure{Status: 503, Times: 4})
	if rows, err := countRows(context.Background(), c); err != nil || rows != 1 {
		t.Fatalf("rows %d, err %v", rows, err)
	}
	if sf.Rejected() != 1 || sf.TokenRequests() != 2 || sf.Failed() != 4 {
		t.Errorf("401s %d, tokens %d, failures %d; want 1, 2, 4", sf.Rejected(), sf.TokenRequests(), sf.Failed())
	}
	if got := waits(); !slices.Equal(got, ms(500, 1000, 2000, 4000)) {
		t.Errorf("waits %v", got)
	}
}

// TestRetryCancelled: with the real sleep, a caller that cancels during a
// 10 s Retry-After wait gets its context error back at once, and the
// Salesforce error that caused the wait.
func TestRetryCancelled(t *testing.T) {
	sf := orgWithRows(t, 1)
	c, err := sfrest.New(sfrest.Config{URL: sf.URL(), ClientID: sf.ClientID, ClientSecret: sf.ClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	sf.FailData(sfresttest.Failure{Status: 503, Code: "SERVER_UNAVAILABLE", RetryAfter: "10", Times: 9})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(30*time.Millisecond, cancel)
	start := time.Now()
	_, err = countRows(ctx, c)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("returned after %v", took)
	}
	var ae *sfrest.APIError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ae) || ae.Status != 503 {
		t.Fatalf("err = %v", err)
	}
	if sf.Failed() != 1 {
		t.Errorf("%d failed requests, want 1", sf.Failed())
	}
}

// fakeOrg answers the token request with itself as the instance and hands
// data requests to data.
func fakeOrg(t *testing.T, data http.HandlerFunc) *httptest.Server {
	t.Helper()
	org := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/services/oauth2/token" {
			json.NewEncoder(w).Encode(map[string]string{"access_token": "tok", "instance_url": "http://" + r.Host, "token_type": "Bearer"})
			return
		}
		data(w, r)
	}))
	t.Cleanup(org.Close)
	return org
}

const emptyResult = `{"done":true,"totalSize":0,"records":[]}`

// TestRetryNetwork: refused and reset connections and the HTTP client's
// own timeout are repeated; the caller's deadline is not.
func TestRetryNetwork(t *testing.T) {
	// No keep-alive: every attempt dials, so that the transport's own
	// retry of idempotent requests on reused connections stays out of it.
	noReuse := func(timeout time.Duration) *http.Client {
		return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	}

	t.Run("refused", func(t *testing.T) {
		gone := httptest.NewServer(http.NotFoundHandler())
		gone.Close()
		c, waits := mustRetryClient(t, nil, sfrest.Config{URL: gone.URL, ClientID: "id", ClientSecret: "secret", MaxAttempts: 3})
		_, err := countRows(context.Background(), c)
		if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "(after 3 attempts)") || len(waits()) != 2 {
			t.Fatalf("err = %v, waits %v", err, waits())
		}
	})
	t.Run("reset", func(t *testing.T) {
		var n atomic.Int32
		org := fakeOrg(t, func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Error(err)
					return
				}
				conn.(*net.TCPConn).SetLinger(0) // RST, not FIN
				conn.Close()
				return
			}
			w.Write([]byte(emptyResult))
		})
		c, waits := mustRetryClient(t, nil, sfrest.Config{URL: org.URL, ClientID: "id", ClientSecret: "secret", HTTPClient: noReuse(0)})
		if _, err := countRows(context.Background(), c); err != nil || n.Load() != 2 || len(waits()) != 1 {
			t.Fatalf("err %v, %d requests, waits %v", err, n.Load(), waits())
		}
	})
	t.Run("client timeout", func(t *testing.T) {
		var n atomic.Int32
		org := fakeOrg(t, func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				<-r.Context().Done()
				return
			}
			w.Write([]byte(emptyResult))
		})
		c, waits := mustRetryClient(t, nil, sfrest.Config{URL: org.URL, ClientID: "id", ClientSecret: "secret", HTTPClient: noReuse(30 * time.Millisecond)})
		if _, err := countRows(context.Background(), c); err != nil || n.Load() != 2 || len(waits()) != 1 {
			t.Fatalf("err %v, %d requests, waits %v", err, n.Load(), waits())
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		var n atomic.Int32
		org := fakeOrg(t, func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			<-r.Context().Done()
		})
		c, waits := mustRetryClient(t, nil, sfrest.Config{URL: org.URL, ClientID: "id", ClientSecret: "secret", HTTPClient: noReuse(0)})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		_, err := countRows(ctx, c)
		if !errors.Is(err, context.DeadlineExceeded) || n.Load() != 1 || len(waits()) != 0 {
			t.Fatalf("err %v, %d requests, waits %v", err, n.Load(), waits())
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"99999999999999999999999", (1 << 32) * time.Second, true},
		{"Sat, 28 Nov 2026 09:15:32 GMT", 30 * time.Second, true},
		{"Saturday, 28-Nov-26 09:16:02 GMT", time.Minute, true}, // RFC 850
		{"Sat Nov 28 09:15:12 2026", 10 * time.Second, true},    // asctime
		{"Sat, 28 Nov 2026 09:00:00 GMT", 0, true},              // past
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
	} {
		got, ok := sfrest.ParseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
