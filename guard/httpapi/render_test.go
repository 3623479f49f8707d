package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/consentguard/consentguard/guard"
)

// withError is what writeDecision renders: the decision plus "error".
type withError struct {
	guard.Decision
	Error string `json:"error,omitempty"`
}

func TestAppendDecisionMatchesEncodingJSON(t *testing.T) {
	odd := "a\"b\\c\n\r\t\b\f\x01<>&\u2028\u2029é\xff𝄞"
	tests := []struct {
		name string
		d    guard.Decision
		err  string
	}{
		{"unknown", guard.Decision{Channel: guard.Email, Reason: guard.ReasonUnknownContact, Records: []guard.RecordRef{}}, ""},
		{"nil records", guard.Decision{Channel: guard.Phone, Reason: guard.ReasonStoreUnavailable}, "consent store unavailable"},
		{"granted", guard.Decision{Allowed: true, Channel: guard.Post, Reason: guard.ReasonGranted, Records: []guard.RecordRef{
			{ID: "003000000000001AAA", Object: "Contact", Consent: "Ja", Version: "2026-11-28T09:15:02.000Z", Reason: guard.ReasonGranted},
		}}, ""},
		{"several, odd strings", guard.Decision{Channel: guard.Storage, Reason: guard.ReasonDenied, Records: []guard.RecordRef{
			{ID: "a", Consent: odd, Reason: guard.ReasonDenied},
			{ID: odd, Object: odd, Consent: "", Version: odd, Reason: guard.Reason(odd)},
		}}, odd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := json.Marshal(withError{tt.d, tt.err})
			if err != nil {
				t.Fatal(err)
			}
			got := appendDecision(nil, &tt.d, tt.err)
			if string(got) != string(want) {
				t.Errorf("appendDecision:\n got %s\nwant %s", got, want)
			}
		})
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "a\"b\\c", "<&>", "\u2028\u2029", "\xff\xfe", "\x00\x1f\x7f", "é𝄞"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func TestStatusFor(t *testing.T) {
	tests := []struct {
		err    error
		status int
		reason guard.Reason
	}{
		{nil, http.StatusOK, ""},
		{fmt.Errorf("%w: email j***@x.de: bad", guard.ErrInvalidIdentifier), http.StatusBadRequest, guard.ReasonInvalidIdentifier},
		{fmt.Errorf("%w: \"x\"", guard.ErrInvalidChannel), http.StatusBadRequest, guard.ReasonInvalidIdentifier},
		{errNoIdentifier, http.StatusBadRequest, guard.ReasonInvalidIdentifier},
		{fmt.Errorf("%w: dial tcp: refused", guard.ErrUnavailable), http.StatusServiceUnavailable, guard.ReasonStoreUnavailable},
		{errors.New("redis: connection pool timeout"), http.StatusServiceUnavailable, guard.ReasonStoreUnavailable},
		{fmt.Errorf("get: %w", guard.ErrNotFound), http.StatusNotFound, ""},
		{errUnauthenticated, http.StatusUnauthorized, ""},
		{errForbidden, http.StatusForbidden, ""},
		{errNoRoute, http.StatusNotFound, ""},
		{errNoMethod, http.StatusMethodNotAllowed, ""},
		{errTooLarge, http.StatusRequestEntityTooLarge, ""},
		{errInternal, http.StatusInternalServerError, ""},
	}
	for _, tt := range tests {
		if got := statusFor(tt.err); got != tt.status {
			t.Errorf("statusFor(%v) = %d, want %d", tt.err, got, tt.status)
		}
		if tt.err == nil {
			continue
		}
		reason, msg := publicError(tt.err)
		if reason != tt.reason {
			t.Errorf("publicError(%v) reason = %q, want %q", tt.err, reason, tt.reason)
		}
		if tt.status >= 500 && msg != guard.ErrUnavailable.Error() && msg != errInternal.Error() {
			t.Errorf("publicError(%v) leaks internal text: %q", tt.err, msg)
		}
	}
}

func TestParseCheckQuery(t *testing.T) {
	tests := []struct {
		raw     string
		want    checkRequest
		wantErr bool
	}{
		{"channel=email&email=a%40b.de", checkRequest{Channel: "email", Email: "a@b.de"}, false},
		{"channel=phone&phone=+49211175403", checkRequest{Channel: "phone", Phone: "+49211175403"}, false},
		{"channel=phone&phone=%2B49+211+175403", checkRequest{Channel: "phone", Phone: "+49 211 175403"}, false},
		{"phone=0211+175403&channel=phone&x=1&&", checkRequest{Channel: "phone", Phone: "0211 175403"}, false},
		{"channel=post&contact_id=003000000000001", checkRequest{Channel: "post", ContactID: "003000000000001"}, false},
		{"ch%61nnel=email&e%6dail=a@b.de", checkRequest{Channel: "email", Email: "a@b.de"}, false},
		{"channel=email&email=&phone=0211", checkRequest{Channel: "email", Phone: "0211"}, false},
		{"channel=email&email=a@b.de&email=c@d.de", checkRequest{}, true},
		{"channel=email&email=%zz", checkRequest{}, true},
		{"channel=email&email=a@b.de&contact_id=003000000000001", checkRequest{}, true},
		{"channel=email", checkRequest{}, true},
		{"email=a@b.de", checkRequest{}, true},
		{"", checkRequest{}, true},
	}
	for _, tt := range tests {
		var got checkRequest
		err := parseCheckQuery(tt.raw, &got)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseCheckQuery(%q) err = %v, wantErr %v", tt.raw, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("parseCheckQuery(%q) = %+v, want %+v", tt.raw, got, tt.want)
		}
	}
}

func TestMaskQuery(t *testing.T) {
	got := maskQuery("channel=email&email=jane.doe%40example.de&phone=%2B4921117540322&secret=x")
	for _, leak := range []string{"jane.doe", "17540322", "secret=x"} {
		if containsFold(got, leak) {
			t.Errorf("maskQuery leaks %q: %s", leak, got)
		}
	}
	if !containsFold(got, "channel=email") {
		t.Errorf("maskQuery dropped the channel: %s", got)
	}
}

func TestPrincipalScopes(t *testing.T) {
	p := &principal{scopes: []string{"check:phone", "contacts:*"}}
	for scope, want := range map[string]bool{
		"check:phone": true, "check:email": false, "contacts:read": true, "contacts:erase": true,
		"import": false, "check": false,
	} {
		if got := p.can(scope); got != want {
			t.Errorf("can(%q) = %v, want %v", scope, got, want)
		}
	}
	if (*principal)(nil).can("check:phone") {
		t.Error("nil principal holds a scope")
	}
	if !anonymous.can("contacts:erase") {
		t.Error("anonymous (when allowed) should hold every scope")
	}
}

func TestValidateKeys(t *testing.T) {
	good := Key{Name: "dialer", SHA256: HashKey("s3cret"), Scopes: []string{"check:phone"}}
	if err := ValidateKeys([]Key{good}); err != nil {
		t.Fatalf("ValidateKeys(good) = %v", err)
	}
	err := ValidateKeys([]Key{
		{Name: "short", SHA256: "abc", Scopes: []string{"*"}},
		{Name: "noscope", SHA256: HashKey("x")},
		good, good,
	})
	if err == nil {
		t.Fatal("ValidateKeys accepted bad keys")
	}
	for _, name := range []string{"short", "noscope", "dialer"} {
		if !containsFold(err.Error(), name) {
			t.Errorf("ValidateKeys error does not name %q: %v", name, err)
		}
	}
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
