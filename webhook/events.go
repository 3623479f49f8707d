package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/consentguard/consentguard/guard"
)

// MaxEventItems bounds records plus deletions in one events POST.
const MaxEventItems = 10000

// eventsRequest is the body of POST /salesforce/events. Records are in
// Salesforce REST shape (what Apex JSON.serialize gives for an SObject):
// attributes.type, Id, and fields by API name with string, boolean, number
// or null values.
type eventsRequest struct {
	OrgID   *string                      `json:"orgId"`
	Records []map[string]json.RawMessage `json:"records"`
	Deleted []map[string]json.RawMessage `json:"deleted"`
}

// EventsResult is the 200 answer of POST /salesforce/events, sent after
// every record and deletion is durably written.
type EventsResult struct {
	Received  int            `json:"received"`  // records + deletions in the POST
	Applied   int            `json:"applied"`   // created, replaced, merged or restricted
	Unchanged int            `json:"unchanged"` // already held
	Stale     int            `json:"stale"`     // older than the stored version: ignored
	Deleted   int            `json:"deleted"`   // tombstones written
	Warnings  []EventWarning `json:"warnings"`  // never null
}

// EventWarning names a field value stored or dropped with a warning.
type EventWarning struct {
	Field string      `json:"field"` // "records[3].Phone"
	Code  WarningCode `json:"code"`
}

// EventsError is a 4xx/5xx answer of POST /salesforce/events.
type EventsError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"` // "records[3].SystemModstamp"
}

// events serves POST /salesforce/events: auth (401) → size (413) → parse
// (400) → organisation (403) → map (400) → Apply (503) → 200 with counts.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) int {
	sigs, ts, code, why := h.eventsAuth(r)
	if code != 0 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="consentguard"`)
		return writeJSON(w, code, EventsError{Error: why})
	}
	buf, err := h.readBody(w, r)
	if errors.Is(err, errTooLarge) {
		return writeJSON(w, http.StatusRequestEntityTooLarge,
			EventsError{Error: fmt.Sprintf("body larger than %d bytes", h.maxBody)})
	}
	if err != nil {
		return writeJSON(w, http.StatusBadRequest, EventsError{Error: "could not read the request body"})
	}
	defer h.release(buf)
	if sigs != nil && !h.signatureOK(sigs, ts, buf.Bytes()) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="consentguard"`)
		return writeJSON(w, http.StatusUnauthorized, EventsError{Error: "signature does not match"})
	}

	var req eventsRequest
	if err := json.Unmarshal(buf.Bytes(), &req); err != nil {
		e := EventsError{Error: "body is not a JSON events object"}
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			e.Error = fmt.Sprintf("invalid JSON at byte %d", se.Offset)
		case errors.As(err, &te):
			e.Error, e.Field = "wrong JSON type: want "+jsonKind(te.Type.Kind().String()), te.Field
		}
		return writeJSON(w, http.StatusBadRequest, e)
	}
	if n := len(req.Records) + len(req.Deleted); n > MaxEventItems {
		return writeJSON(w, http.StatusBadRequest,
			EventsError{Error: fmt.Sprintf("%d records and deletions; at most %d per POST", n, MaxEventItems), Field: "records"})
	}
	if len(h.orgs) > 0 {
		switch {
		case req.OrgID == nil || *req.OrgID == "":
			return writeJSON(w, http.StatusBadRequest, EventsError{Error: "required", Field: "orgId"})
		case !h.orgAllowed(*req.OrgID):
			h.log.Warn("events from an organisation not allowed", "org", Printable(*req.OrgID, 20))
			return writeJSON(w, http.StatusForbidden, EventsError{Error: "organization not allowed", Field: "orgId"})
		}
	}

	opts := h.recordOptions()
	ref := requestRef(r)
	ups := make([]guard.Update, 0, len(req.Records)+len(req.Deleted))
	warns := make([][]Warning, 0, len(req.Records))
	res := EventsResult{Received: len(req.Records) + len(req.Deleted), Warnings: []EventWarning{}}
	for i, rec := range req.Records {
		path := fmt.Sprintf("records[%d]", i)
		typ, err := objectType(rec)
		if err != nil || typ == "" {
			return writeJSON(w, http.StatusBadRequest, EventsError{Error: "required string", Field: path + ".attributes.type"})
		}
		id, ok := jsonField(rec, "Id")
		if !ok {
			return writeJSON(w, http.StatusBadRequest, EventsError{Error: "required", Field: path + ".Id"})
		}
		up, ws, err := h.mapping.Record(typ, id, func(name string) (string, bool) { return jsonField(rec, name) }, opts)
		if err != nil {
			return writeJSON(w, http.StatusBadRequest, recordError(path, err))
		}
		up.Source, up.Ref = "events", ref
		ups = append(ups, up)
		warns = append(warns, ws)
		for _, wr := range ws {
			res.Warnings = append(res.Warnings, EventWarning{Field: path + "." + wr.Field, Code: wr.Code})
		}
	}
	nrec := len(ups)
	for i, del := range req.Deleted {
		path := fmt.Sprintf("deleted[%d]", i)
		up, err := h.deletion(del, opts)
		if err != nil {
			return writeJSON(w, http.StatusBadRequest, recordError(path, err))
		}
		up.Source, up.Ref = "events", ref
		ups = append(ups, up)
	}

	if len(ups) > 0 {
		ctx, cancel := h.storeContext(r)
		outs, err := h.st.Apply(ctx, ups)
		cancel()
		if err == nil && len(outs) != len(ups) {
			err = fmt.Errorf("store answered %d of %d updates", len(outs), len(ups))
		}
		if err != nil {
			h.log.Error("events not stored", "records", nrec, "deleted", len(ups)-nrec, "err", err)
			w.Header().Set("Retry-After", "30")
			return writeJSON(w, http.StatusServiceUnavailable, EventsError{Error: "store unavailable; retry later"})
		}
		h.countOutcomes("events", outs)
		for _, o := range outs {
			switch o {
			case guard.Created, guard.Replaced, guard.Merged, guard.Restricted:
				res.Applied++
			case guard.Tombstoned:
				res.Deleted++
			case guard.Stale:
				res.Stale++
			default:
				res.Unchanged++
			}
		}
		for i := range warns {
			h.countWarnings("events", &ups[i], warns[i])
		}
	}
	return writeJSON(w, http.StatusOK, res)
}

// eventsAuth checks the credentials that need no body. For a signed
// request it returns the signatures and timestamp to verify once the body
// is read; code is non-zero (401) when the request is refused.
func (h *Handler) eventsAuth(r *http.Request) (sigs []string, ts string, code int, why string) {
	if sig := r.Header.Get("X-Signature"); sig != "" && h.hmacKey != nil {
		ts = strings.TrimSpace(r.Header.Get("X-Timestamp"))
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			return nil, "", http.StatusUnauthorized, "X-Timestamp must be unix seconds"
		}
		if d := h.now().Sub(time.Unix(sec, 0)); d > SignatureSkew || d < -SignatureSkew {
			return nil, "", http.StatusUnauthorized, "X-Timestamp outside the 5 minute window"
		}
		for _, s := range strings.Split(sig, ",") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(s), "v1="); ok {
				sigs = append(sigs, v)
			}
		}
		if len(sigs) == 0 {
			return nil, "", http.StatusUnauthorized, "X-Signature must be v1=<hex HMAC-SHA256>"
		}
		return sigs, ts, 0, ""
	}
	if auth := r.Header.Get("Authorization"); auth != "" && h.bearer.set {
		scheme, tok, _ := strings.Cut(auth, " ")
		if strings.EqualFold(scheme, "Bearer") && h.bearer.equal(strings.TrimSpace(tok)) {
			return nil, "", 0, ""
		}
		return nil, "", http.StatusUnauthorized, "invalid bearer token"
	}
	return nil, "", http.StatusUnauthorized, "authentication required (Authorization: Bearer or X-Signature)"
}

// signatureOK verifies v1 = hex HMAC-SHA256(secret, timestamp "." body).
func (h *Handler) signatureOK(sigs []string, ts string, body []byte) bool {
	mac := hmac.New(sha256.New, h.hmacKey)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	want := mac.Sum(nil)
	ok := false
	for _, s := range sigs {
		got, err := hex.DecodeString(s)
		if err == nil && hmac.Equal(got, want) {
			ok = true
		}
	}
	return ok
}

// deletion turns a deleted entry ({"Id":…,"SystemModstamp":…,
// "attributes":{"type":…}}) into a tombstone update. The type is optional:
// without it, the Id's key prefix names Contact (003) or Lead (00Q). The
// version should be the deletion time; without one the store tombstones
// at max(stored version, now).
func (h *Handler) deletion(del map[string]json.RawMessage, o RecordOptions) (guard.Update, error) {
	raw, ok := jsonField(del, "Id")
	if !ok {
		return guard.Update{}, &FieldError{Field: "Id", Err: errors.New("required")}
	}
	id, err := RecordID(raw)
	if err != nil {
		return guard.Update{}, err
	}
	up := guard.Update{ID: id, Deleted: true}
	typ, err := objectType(del)
	if err != nil {
		return guard.Update{}, &FieldError{Field: "attributes.type", Err: errors.New("must be a string")}
	}
	obj := Object{}
	if typ != "" {
		name, ob, ok := h.mapping.Object(typ)
		if !ok {
			return guard.Update{}, &FieldError{Field: "attributes.type", Err: ErrUnknownObject}
		}
		up.Object, obj = name, ob
	} else {
		switch id[:3] {
		case "003":
			typ = "Contact"
		case "00Q":
			typ = "Lead"
		}
		if name, ob, ok := h.mapping.Object(typ); ok && typ != "" {
			up.Object, obj = name, ob
		} else {
			up.Object = typ
		}
	}
	v, _, err := o.version(obj, func(name string) (string, bool) { return jsonField(del, name) })
	if err != nil {
		return guard.Update{}, err
	}
	// Unversioned (zero): the store tombstones at max(stored version, now).
	up.Version = v
	return up, nil
}

// recordError renders a Record or deletion error with the field path.
func recordError(path string, err error) EventsError {
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		return EventsError{Error: fe.Err.Error(), Field: path + "." + fe.Field}
	case errors.Is(err, ErrUnknownObject):
		return EventsError{Error: "object type not mapped", Field: path + ".attributes.type"}
	}
	return EventsError{Error: "invalid record", Field: path}
}

// objectType reads attributes.type ("" when absent).
func objectType(rec map[string]json.RawMessage) (string, error) {
	raw, ok := rec["attributes"]
	if !ok || isNull(raw) {
		return "", nil
	}
	var a struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return "", err
	}
	if a.Type == nil {
		return "", nil
	}
	return strings.TrimSpace(*a.Type), nil
}

// jsonField reads a field as a string: strings as they are, booleans and
// numbers as their literal; null, objects and arrays count as absent. API
// names ignore case.
func jsonField(rec map[string]json.RawMessage, name string) (string, bool) {
	raw, ok := rec[name]
	if !ok {
		for k, v := range rec {
			if strings.EqualFold(k, name) {
				raw, ok = v, true
				break
			}
		}
	}
	if !ok {
		return "", false
	}
	return JSONValue(raw)
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// jsonKind names a Go kind the way a JSON user would.
func jsonKind(k string) string {
	switch k {
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	case "ptr", "string":
		return "string"
	}
	return k
}

// requestRef is the caller's X-Request-Id, when it is short and plain, for
// the record history.
func requestRef(r *http.Request) string {
	s := r.Header.Get("X-Request-Id")
	if len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return ""
		}
	}
	return s
}

// writeJSON answers with a JSON document.
func writeJSON(w http.ResponseWriter, status int, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	return writeBody(w, status, "application/json; charset=utf-8", append(b, '\n'))
}
