package guard

import (
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"

	"github.com/nyaruka/phonenumbers"
	"golang.org/x/net/idna"
)

// Kind says what an Identifier is.
type Kind uint8

// Identifier kinds.
const (
	KindEmail Kind = iota + 1
	KindPhone
	KindRecordID
)

func (k Kind) String() string {
	switch k {
	case KindEmail:
		return "email"
	case KindPhone:
		return "phone"
	case KindRecordID:
		return "contact_id"
	}
	return "unknown"
}

// Identifier is a normalised way to find records: an email address
// (trimmed, lower-cased, IDN domain as punycode), a phone number (E.164), or
// an 18-character Salesforce record Id. The zero value is invalid.
//
// Email and phone values are personal data: an Identifier logs itself
// masked (LogValue), and the store keeps only its keyed hash.
type Identifier struct {
	Kind  Kind
	Value string
}

// zero reports an identifier that was never parsed (a caller's parse
// failure); it is decided invalid_identifier and never looked up.
func (id Identifier) zero() bool { return id.Kind == 0 || id.Value == "" }

// Key is the identifier's canonical text, unique across kinds
// ("email:a@b.de", "phone:+49211…"). Stores hash this, never keep it.
func (id Identifier) Key() string { return id.Kind.String() + ":" + id.Value }

// String is the masked form, safe for logs and error messages.
func (id Identifier) String() string { return id.Masked() }

// LogValue masks the identifier so that slog never prints it whole.
func (id Identifier) LogValue() slog.Value { return slog.StringValue(id.Masked()) }

// Masked keeps enough to recognise an identifier without revealing it:
// "j***@example.de", "+49211******22". Record Ids are not personal data and
// are shown whole.
func (id Identifier) Masked() string { return Mask(id.Kind, id.Value) }

// Mask masks a (possibly not normalised) email address or phone number.
func Mask(k Kind, v string) string {
	switch k {
	case KindEmail:
		at := strings.LastIndexByte(v, '@')
		if at < 0 {
			return maskTail(v, 1, 0)
		}
		return maskTail(v[:at], 1, 0) + "@" + v[at+1:]
	case KindPhone:
		return maskTail(v, 4, 2)
	case KindRecordID:
		return v
	}
	return "***"
}

// maskTail keeps head leading and tail trailing runes and stars the rest.
func maskTail(s string, head, tail int) string {
	n := utf8.RuneCountInString(s)
	if n <= head+tail {
		if n == 0 {
			return ""
		}
		return "***"
	}
	r := []rune(s)
	return string(r[:head]) + strings.Repeat("*", max(3, n-head-tail)) + string(r[n-tail:])
}

var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.StrictDomainName(true),
	idna.ValidateLabels(true),
	idna.BidiRule(),
	idna.VerifyDNSLength(true),
)

// ParseEmail normalises an email address: surrounding space and angle
// brackets removed, lower-cased, the domain converted to punycode.
func ParseEmail(raw string) (Identifier, error) {
	s := strings.TrimSpace(raw)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">")
	s = strings.TrimSpace(s)
	bad := func(why string) (Identifier, error) {
		return Identifier{}, fmt.Errorf("%w: email %s: %s", ErrInvalidIdentifier, Mask(KindEmail, s), why)
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > 320 {
		return bad("too long")
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return bad("needs local part@domain")
	}
	local, domain := s[:at], strings.TrimSuffix(s[at+1:], ".")
	if len(local) > 64 {
		return bad("local part too long")
	}
	for _, r := range local {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`"(),:;<>@[\]`, r) {
			return bad("local part has a character that needs quoting")
		}
	}
	if strings.HasPrefix(local, ".") || strings.HasSuffix(local, ".") || strings.Contains(local, "..") {
		return bad("local part has misplaced dots")
	}
	ascii, err := idnaProfile.ToASCII(strings.ToLower(domain))
	if err != nil || !strings.Contains(ascii, ".") {
		return bad("domain is not a valid host name")
	}
	return Identifier{Kind: KindEmail, Value: strings.ToLower(local) + "@" + ascii}, nil
}

// ParsePhone normalises a phone number to E.164 with libphonenumber;
// numbers without a country code are read in region (ISO 3166, e.g. "DE").
// So "0211 175403-22", "+49 (0)211 17540322" and "0049211175403 22" are
// one number. A number libphonenumber does not consider valid is rejected.
func ParsePhone(raw, region string) (Identifier, error) {
	s := strings.TrimSpace(raw)
	bad := func(why string) (Identifier, error) {
		return Identifier{}, fmt.Errorf("%w: phone %s: %s", ErrInvalidIdentifier, Mask(KindPhone, s), why)
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > 64 {
		return bad("too long")
	}
	if region == "" {
		region = "DE"
	}
	region = strings.ToUpper(region)
	if e164, ok := fastPhone(s, region); ok {
		return Identifier{Kind: KindPhone, Value: e164}, nil
	}
	n, err := phonenumbers.Parse(s, region)
	if err != nil {
		return bad("not a phone number")
	}
	if !phonenumbers.IsValidNumber(n) {
		return bad("not a valid number")
	}
	return Identifier{Kind: KindPhone, Value: phonenumbers.Format(n, phonenumbers.E164)}, nil
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

// ParseRecordID accepts a 15- or 18-character Salesforce Id and returns
// the 18-character form (case-insensitive suffix computed from the
// case-sensitive 15-character Id). An 18-character Id with a wrong suffix
// is rejected.
func ParseRecordID(raw string) (Identifier, error) {
	s := strings.TrimSpace(raw)
	id, err := NormalizeRecordID(s)
	if err != nil {
		return Identifier{}, err
	}
	return Identifier{Kind: KindRecordID, Value: id}, nil
}

// NormalizeRecordID returns the 18-character form of a Salesforce Id.
func NormalizeRecordID(s string) (string, error) {
	if len(s) != 15 && len(s) != 18 {
		return "", fmt.Errorf("%w: record id %q: want 15 or 18 characters", ErrInvalidIdentifier, truncate(s, 20))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return "", fmt.Errorf("%w: record id %q: only letters and digits", ErrInvalidIdentifier, truncate(s, 20))
		}
	}
	var suffix [3]byte
	for chunk := 0; chunk < 3; chunk++ {
		bits := 0
		for i := 0; i < 5; i++ {
			c := s[chunk*5+i]
			if 'A' <= c && c <= 'Z' {
				bits |= 1 << i
			}
		}
		suffix[chunk] = idAlphabet[bits]
	}
	if len(s) == 18 && !strings.EqualFold(s[15:], string(suffix[:])) {
		return "", fmt.Errorf("%w: record id %q: checksum suffix does not match", ErrInvalidIdentifier, s)
	}
	return s[:15] + string(suffix[:]), nil
}

// SameOrg compares two Salesforce organisation Ids on their first 15
// characters (payloads carry 18, URLs and settings often 15).
func SameOrg(a, b string) bool {
	if len(a) < 15 || len(b) < 15 {
		return false
	}
	return a[:15] == b[:15]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
