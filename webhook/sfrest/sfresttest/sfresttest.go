// Package sfresttest runs a small stand-in for a Salesforce org over real
// loopback HTTP, written from the documented formats: the OAuth 2.0 token
// endpoint (client credentials flow) on a "My Domain" server, and the REST
// API Query and QueryAll resources with nextRecordsUrl paging on a separate
// instance server named by the token's instance_url. Either can be told to
// fail a number of requests, with one answer after another and a
// Retry-After header if wanted, as an org does under load or over its API
// limit. It understands only the SOQL that package sfrest writes and
// answers anything else with MALFORMED_QUERY, so that tests notice a
// changed query.
package sfresttest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is one fake org. Add rows with Add and Delete before syncing.
type Server struct {
	ClientID     string
	ClientSecret string
	// PageSize is the number of records per page (Salesforce: up to 2000).
	PageSize int

	login    *httptest.Server
	instance *httptest.Server

	mu        sync.Mutex
	rows      map[string][]row // object → rows
	tokens    map[string]bool
	cursors   map[string][]map[string]any
	nCursor   int
	expireIn  int       // data requests until sessions expire; 0 = never
	failData  []Failure // answered in turn
	failToken []Failure
	nFailed   int      // injected failures answered
	queries   []string // SOQL text per first-page request, resource prefixed
	versions  []string
	nToken    int
	nRejected int // 401 answers given
}

type row struct {
	fields  map[string]any
	deleted bool
}

// Failure is an error answer the fake org gives instead of the real one.
type Failure struct {
	Status  int
	Code    string // errorCode (data requests) or error (token endpoint)
	Message string // message or error_description
	// RetryAfter, when not empty, is sent as the Retry-After header.
	RetryAfter string
	// Times is how many requests in a row get this answer.
	Times int
}

// take returns the failure to answer with, if any, and counts it down;
// the next one takes over when its Times are used up.
func take(fs *[]Failure) (Failure, bool) {
	for len(*fs) > 0 && (*fs)[0].Times <= 0 {
		*fs = (*fs)[1:]
	}
	if len(*fs) == 0 {
		return Failure{}, false
	}
	(*fs)[0].Times--
	return (*fs)[0], true
}

func (f Failure) write(w http.ResponseWriter, body any) {
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	writeJSON(w, f.Status, body)
}

// Start runs the login and instance servers; they close on cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{
		ClientID:     "3MVG9fake.consumer.key",
		ClientSecret: "fake-consumer-secret-" + randHex(8),
		PageSize:     2,
		rows:         map[string][]row{},
		tokens:       map[string]bool{},
		cursors:      map[string][]map[string]any{},
	}
	s.instance = httptest.NewServer(http.HandlerFunc(s.serveData))
	s.login = httptest.NewServer(http.HandlerFunc(s.serveToken))
	tb.Cleanup(func() {
		s.login.Close()
		s.instance.Close()
	})
	return s
}

// URL is the login (My Domain) URL to configure.
func (s *Server) URL() string { return s.login.URL }

// InstanceURL is where the token answer sends API calls.
func (s *Server) InstanceURL() string { return s.instance.URL }

// Add stores a live row of object. fields holds field API names to JSON
// values (string, bool, number, nil); SystemModstamp may be a time.Time.
func (s *Server) Add(object string, fields map[string]any) {
	s.put(object, fields, false)
}

// Delete stores a row that only QueryAll returns, with IsDeleted true.
func (s *Server) Delete(object, id string, modstamp time.Time) {
	s.put(object, map[string]any{"Id": id, "SystemModstamp": modstamp}, true)
}

func (s *Server) put(object string, fields map[string]any, deleted bool) {
	f := make(map[string]any, len(fields))
	for k, v := range fields {
		if t, ok := v.(time.Time); ok {
			v = t.UTC().Format("2006-01-02T15:04:05.000+0000") // REST form
		}
		f[k] = v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id, _ := f["Id"].(string)
	rows := slices.DeleteFunc(s.rows[object], func(r row) bool { return r.fields["Id"] == id })
	s.rows[object] = append(rows, row{fields: f, deleted: deleted})
}

// ExpireSessions revokes every issued token: the next API call gets 401
// INVALID_SESSION_ID.
func (s *Server) ExpireSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = map[string]bool{}
}

// ExpireSessionsAfter lets n more data requests through, then revokes every
// token, so that the request after them gets 401 INVALID_SESSION_ID (in
// the middle of a paged query, say).
func (s *Server) ExpireSessionsAfter(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireIn = n + 1
}

// FailNext makes the next data request answer status with
// [{"message":msg,"errorCode":code}].
func (s *Server) FailNext(status int, code, msg string) {
	s.FailData(Failure{Status: status, Code: code, Message: msg, Times: 1})
}

// FailData makes the next f.Times data requests that carry a valid token
// answer f.Status with [{"message","errorCode"}] (a request with an expired
// token still gets 401 first); with more than one Failure, the requests
// after those get the next one, and so on. It replaces an earlier FailData.
func (s *Server) FailData(fs ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failData = slices.Clone(fs)
}

// FailToken makes the next f.Times token requests answer f.Status with
// {"error","error_description"}, before the credentials are looked at;
// more than one Failure are answered in turn, as with FailData. It
// replaces an earlier FailToken.
func (s *Server) FailToken(fs ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failToken = slices.Clone(fs)
}

// Failed counts the injected failures (FailNext, FailData, FailToken)
// answered so far.
func (s *Server) Failed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nFailed
}

// Queries returns the SOQL of every query started, as "query: SELECT …" or
// "queryAll: SELECT …".
func (s *Server) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.queries)
}

// APIVersions returns the version of every data request ("62.0").
func (s *Server) APIVersions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.versions)
}

// TokenRequests counts successful token grants.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nToken
}

// Rejected counts 401 answers to data requests.
func (s *Server) Rejected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nRejected
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type restError struct {
	Message   string `json:"message"`
	ErrorCode string `json:"errorCode"`
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/services/oauth2/token" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "must use HTTP POST with form encoding"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "bad form"})
		return
	}
	s.mu.Lock()
	f, fail := take(&s.failToken)
	if fail {
		s.nFailed++
	}
	s.mu.Unlock()
	if fail {
		f.write(w, map[string]string{"error": f.Code, "error_description": f.Message})
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type", "error_description": "grant type not supported"})
		return
	}
	if r.PostForm.Get("client_id") != s.ClientID {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_client_id", "error_description": "client identifier invalid"})
		return
	}
	if r.PostForm.Get("client_secret") != s.ClientSecret {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_client", "error_description": "invalid client credentials"})
		return
	}
	tok := "00D000000000062!AQ" + randHex(24)
	s.mu.Lock()
	s.tokens[tok] = true
	s.nToken++
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": tok,
		"signature":    "c2lnbmF0dXJl",
		"scope":        "api",
		"instance_url": s.instance.URL,
		"id":           s.login.URL + "/id/00D000000000062EAA/005000000000001AAA",
		"token_type":   "Bearer",
		"issued_at":    strconv.FormatInt(time.Now().UnixMilli(), 10),
	})
}

var (
	dataPath = regexp.MustCompile(`^/services/data/v([0-9]+\.[0-9])/(queryAll|query)(?:/(.*))?$`)
	soqlRE   = regexp.MustCompile(`^SELECT ([A-Za-z0-9_]+(?:, [A-Za-z0-9_]+)*) FROM ([A-Za-z0-9_]+)(?: WHERE (.+))? ORDER BY SystemModstamp, Id$`)
	sinceRE  = regexp.MustCompile(`^SystemModstamp >= ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)$`)
)

func (s *Server) serveData(w http.ResponseWriter, r *http.Request) {
	m := dataPath.FindStringSubmatch(r.URL.Path)
	if m == nil || r.Method != http.MethodGet {
		writeJSON(w, http.StatusNotFound, []restError{{"The requested resource does not exist", "NOT_FOUND"}})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.versions = append(s.versions, m[1])
	if s.expireIn > 0 {
		if s.expireIn--; s.expireIn == 0 {
			s.tokens = map[string]bool{}
		}
	}
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || !s.tokens[tok] {
		s.nRejected++
		writeJSON(w, http.StatusUnauthorized, []restError{{"Session expired or invalid", "INVALID_SESSION_ID"}})
		return
	}
	if f, ok := take(&s.failData); ok {
		s.nFailed++
		f.write(w, []restError{{f.Message, f.Code}})
		return
	}
	var rest []map[string]any
	if loc := m[3]; loc != "" {
		cur, ok := s.cursors[loc]
		if !ok {
			writeJSON(w, http.StatusBadRequest, []restError{{"invalid query locator", "INVALID_QUERY_LOCATOR"}})
			return
		}
		delete(s.cursors, loc)
		rest = cur
	} else {
		q := r.URL.Query().Get("q")
		s.queries = append(s.queries, m[2]+": "+q)
		var err *restError
		rest, err = s.run(q, m[2] == "queryAll", m[1])
		if err != nil {
			writeJSON(w, http.StatusBadRequest, []restError{*err})
			return
		}
	}
	total := len(rest)
	page := rest
	res := map[string]any{"done": true}
	if len(rest) > s.PageSize && s.PageSize > 0 {
		page = rest[:s.PageSize]
		s.nCursor++
		loc := fmt.Sprintf("01g000000000%03dAAA-%d", s.nCursor, s.PageSize)
		s.cursors[loc] = rest[s.PageSize:]
		res["done"] = false
		// Salesforce names the query resource even for QueryAll cursors.
		res["nextRecordsUrl"] = "/services/data/v" + m[1] + "/query/" + loc
	}
	res["totalSize"] = total
	res["records"] = page
	writeJSON(w, http.StatusOK, res)
}

// run evaluates the SOQL sfrest writes: SELECT fields FROM object
// [WHERE IsDeleted = TRUE] [AND] [SystemModstamp >= literal] ORDER BY
// SystemModstamp, Id. Only selected fields come back.
func (s *Server) run(q string, all bool, ver string) ([]map[string]any, *restError) {
	m := soqlRE.FindStringSubmatch(q)
	if m == nil {
		return nil, &restError{"unexpected token in query", "MALFORMED_QUERY"}
	}
	fields, object := strings.Split(m[1], ", "), m[2]
	rows, known := s.rows[object]
	if !known {
		return nil, &restError{fmt.Sprintf("sObject type '%s' is not supported.", object), "INVALID_TYPE"}
	}
	schema := map[string]bool{"id": true, "systemmodstamp": true, "lastmodifieddate": true, "isdeleted": true}
	for _, r := range rows {
		for k := range r.fields {
			schema[strings.ToLower(k)] = true
		}
	}
	for _, f := range fields {
		if !schema[strings.ToLower(f)] {
			return nil, &restError{fmt.Sprintf("No such column '%s' on entity '%s'.", f, object), "INVALID_FIELD"}
		}
	}
	onlyDeleted, since := false, ""
	if m[3] != "" {
		for _, cond := range strings.Split(m[3], " AND ") {
			if cond == "IsDeleted = TRUE" {
				onlyDeleted = true
			} else if sm := sinceRE.FindStringSubmatch(cond); sm != nil {
				t, _ := time.Parse(time.RFC3339, sm[1])
				since = t.UTC().Format("2006-01-02T15:04:05.000+0000")
			} else {
				return nil, &restError{"unexpected condition " + cond, "MALFORMED_QUERY"}
			}
		}
	}
	var hits []row
	for _, r := range rows {
		if r.deleted && !all || onlyDeleted && !r.deleted {
			continue
		}
		if ms, _ := r.fields["SystemModstamp"].(string); since != "" && ms < since {
			continue
		}
		hits = append(hits, r)
	}
	slices.SortFunc(hits, func(a, b row) int {
		am, _ := a.fields["SystemModstamp"].(string)
		bm, _ := b.fields["SystemModstamp"].(string)
		if c := strings.Compare(am, bm); c != 0 {
			return c
		}
		ai, _ := a.fields["Id"].(string)
		bi, _ := b.fields["Id"].(string)
		return strings.Compare(ai, bi)
	})
	out := make([]map[string]any, 0, len(hits))
	for _, r := range hits {
		id, _ := r.fields["Id"].(string)
		rec := map[string]any{"attributes": map[string]string{"type": object, "url": "/services/data/v" + ver + "/sobjects/" + object + "/" + id}}
		for _, f := range fields {
			// Salesforce answers with the schema's spelling of the name.
			name, v := f, any(nil)
			for k, fv := range r.fields {
				if strings.EqualFold(k, f) {
					name, v = k, fv
				}
			}
			if strings.EqualFold(f, "IsDeleted") {
				v = r.deleted
			}
			rec[name] = v
		}
		out = append(out, rec)
	}
	return out, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
