package guard_test

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/consentguard/consentguard/guard"
)

func TestParseEmail(t *testing.T) {
	tests := []struct{ in, want string }{
		{"info@firma.de", "info@firma.de"},
		{"  Info@Firma.DE ", "info@firma.de"},
		{"<Max.Mustermann@Example.com>", "max.mustermann@example.com"},
		{"jörg@müller.de", "jörg@xn--mller-kva.de"},
		{"a@MÜLLER.de", "a@xn--mller-kva.de"},
		{"x+tag@sub.example.co.uk", "x+tag@sub.example.co.uk"},
		{"trailing@dot.de.", "trailing@dot.de"},
	}
	for _, tt := range tests {
		id, err := guard.ParseEmail(tt.in)
		if err != nil {
			t.Errorf("ParseEmail(%q): %v", tt.in, err)
			continue
		}
		if id.Kind != guard.KindEmail || id.Value != tt.want {
			t.Errorf("ParseEmail(%q) = %+v, want %q", tt.in, id, tt.want)
		}
	}
	for _, in := range []string{"", "   ", "nobody", "@firma.de", "a@", "a@localhost", "a b@firma.de", "a@fir ma.de", "a..b@firma.de", ".a@firma.de", "a@-x.de", strings.Repeat("a", 65) + "@x.de", "a@" + strings.Repeat("x", 300) + ".de"} {
		if id, err := guard.ParseEmail(in); !errors.Is(err, guard.ErrInvalidIdentifier) {
			t.Errorf("ParseEmail(%q) = %+v, %v; want ErrInvalidIdentifier", in, id, err)
		}
	}
}

func TestParsePhone(t *testing.T) {
	same := []string{"0211 175403-22", "+49 (0)211 17540322", "0049211175403 22", "+49 211 17540322", "+49-211-175403-22"}
	for _, in := range same {
		id, err := guard.ParsePhone(in, "DE")
		if err != nil {
			t.Fatalf("ParsePhone(%q): %v", in, err)
		}
		if id.Value != "+4921117540322" || id.Kind != guard.KindPhone {
			t.Errorf("ParsePhone(%q) = %+v", in, id)
		}
	}
	if id, err := guard.ParsePhone("0171 1234567", ""); err != nil || id.Value != "+491711234567" {
		t.Errorf("default region: %+v %v", id, err)
	}
	if id, err := guard.ParsePhone("01 42 68 53 00", "FR"); err != nil || id.Value != "+33142685300" {
		t.Errorf("region FR: %+v %v", id, err)
	}
	for _, in := range []string{"", "abc", "12", "+49", "0000", strings.Repeat("1", 70)} {
		if id, err := guard.ParsePhone(in, "DE"); !errors.Is(err, guard.ErrInvalidIdentifier) {
			t.Errorf("ParsePhone(%q) = %+v, %v; want ErrInvalidIdentifier", in, id, err)
		}
	}
}

func TestParseRecordID(t *testing.T) {
	// 18-character forms computed by Salesforce's own algorithm.
	tests := []struct{ in, want string }{
		{"0035g00000ABCDe", "0035g00000ABCDeAAP"},
		{"0035g00000ABCDeAAP", "0035g00000ABCDeAAP"},
		{"0035g00000ABCDeaap", "0035g00000ABCDeAAP"},
		{"001000000000000", "001000000000000AAA"},
	}
	for _, tt := range tests {
		id, err := guard.ParseRecordID(tt.in)
		if err != nil || id.Value != tt.want || id.Kind != guard.KindRecordID {
			t.Errorf("ParseRecordID(%q) = %+v, %v; want %s", tt.in, id, err, tt.want)
		}
	}
	for _, in := range []string{"", "003", "0035g00000ABCDeXYZ", "0035g00000ABCD!", "0035g00000ABCDeAAPX"} {
		if _, err := guard.ParseRecordID(in); !errors.Is(err, guard.ErrInvalidIdentifier) {
			t.Errorf("ParseRecordID(%q): err = %v", in, err)
		}
	}
}

func TestSameOrg(t *testing.T) {
	if !guard.SameOrg("00D000000000062", "00D000000000062EAA") {
		t.Error("15 vs 18 should match")
	}
	if guard.SameOrg("00D000000000062", "00D000000000063") || guard.SameOrg("", "") || guard.SameOrg("00D", "00D") {
		t.Error("different or short org ids matched")
	}
}

func TestIdentifiersLogMasked(t *testing.T) {
	e := mustEmail(t, "max.mustermann@firma.de")
	p, err := guard.ParsePhone("0211 17540322", "DE")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	log := slog.New(slog.NewJSONHandler(&b, nil))
	log.Info("check", "email", e, "phone", p)
	out := b.String()
	for _, secret := range []string{"max.mustermann", "17540322", "+4921117540322"} {
		if strings.Contains(out, secret) {
			t.Fatalf("log line leaks %q: %s", secret, out)
		}
	}
	if !strings.Contains(out, "@firma.de") || !strings.Contains(out, "+492") {
		t.Fatalf("masked form lost its shape: %s", out)
	}
	if s := fmt.Sprint(e); strings.Contains(s, "mustermann") {
		t.Fatalf("String() leaks: %s", s)
	}
	// A failed parse must not echo the input either.
	_, err = guard.ParseEmail("max.mustermann@@")
	if err == nil || strings.Contains(err.Error(), "mustermann") {
		t.Fatalf("parse error leaks: %v", err)
	}
}

func TestVocabulary(t *testing.T) {
	v := guard.DefaultVocabulary()
	for raw, want := range map[string]guard.Consent{"Ja": guard.Granted, "nein": guard.Denied, "Abfrage ausstehend": guard.Pending, "": guard.Missing} {
		if c, known := v.Classify(raw); c != want || !known {
			t.Errorf("Classify(%q) = %v,%v", raw, c, known)
		}
	}
	if c, known := v.Classify("Vielleicht"); c != guard.Missing || known {
		t.Errorf("unknown word = %v,%v", c, known)
	}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := guard.Vocabulary{Granted: []string{"Ja"}, Denied: []string{"ja"}}
	if err := bad.Validate(); err == nil {
		t.Fatal("ambiguous vocabulary accepted")
	}
	en := guard.Vocabulary{Granted: []string{"Yes", "Opt-in"}, Denied: []string{"No"}, Pending: []string{"Pending"}}
	if c, _ := en.Classify("opt-in"); c != guard.Granted {
		t.Errorf("custom word: %v", c)
	}
	if !(guard.Denied < guard.Missing && guard.Missing < guard.Pending && guard.Pending < guard.Granted) {
		t.Fatal("consent order broken: ties would not keep the lesser value")
	}
}

func TestChannel(t *testing.T) {
	for _, c := range guard.Channels {
		got, err := guard.ParseChannel(c.String())
		if err != nil || got != c {
			t.Errorf("round trip %v: %v %v", c, got, err)
		}
	}
	if _, err := guard.ParseChannel("fax"); !errors.Is(err, guard.ErrInvalidChannel) {
		t.Errorf("fax: %v", err)
	}
}
