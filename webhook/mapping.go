package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/consentguard/consentguard/guard"
)

// FieldKind says how a channel field's value becomes a consent word.
type FieldKind string

// Field kinds (DESIGN.md "Config").
const (
	// Picklist: the value is the consent word itself ("Ja", "Nein",
	// "Abfrage ausstehend"), stored as it came. The empty kind means
	// picklist.
	Picklist FieldKind = "picklist"
	// Checkbox: true is the vocabulary's first granted word, false its
	// first denied word.
	Checkbox FieldKind = "checkbox"
	// OptOut: true is denied, false granted (HasOptedOutOfEmail, DoNotCall).
	OptOut FieldKind = "optout"
)

// Field maps one consent channel to a Salesforce field.
type Field struct {
	Field string    `yaml:"field"`
	Kind  FieldKind `yaml:"kind"`
}

// Object maps one Salesforce object (Contact, Lead, …) to a record.
type Object struct {
	// Version is the field holding the record's version; default
	// SystemModstamp. LastModifiedDate is always the fallback.
	Version string `yaml:"version"`
	// Email and Phone list the fields that hold identifiers.
	Email []string `yaml:"email"`
	Phone []string `yaml:"phone"`
	// Channels maps channel names (email, phone, post, storage) to fields.
	Channels map[string]Field `yaml:"channels"`
}

// Mapping maps Salesforce object names ("Contact", "Lead") to their fields.
type Mapping map[string]Object

// Default field names (DESIGN.md).
const (
	DefaultVersionField  = "SystemModstamp"
	FallbackVersionField = "LastModifiedDate"
)

// MaxFutureSkew bounds how far a version may lie ahead of
// RecordOptions.Now. A version far in the future would pin a record and make
// every later change, withdrawals included, look stale.
const MaxFutureSkew = time.Hour

// DefaultMapping is the German mapping of DESIGN.md, the same for Contact
// and Lead: version SystemModstamp, identifiers Email, Phone and
// MobilePhone, one picklist per channel.
func DefaultMapping() Mapping {
	obj := func() Object {
		return Object{
			Version: DefaultVersionField,
			Email:   []string{"Email"},
			Phone:   []string{"Phone", "MobilePhone"},
			Channels: map[string]Field{
				"email":   {Field: "Darf_angemailt_werden__c", Kind: Picklist},
				"phone":   {Field: "Darf_telefonisch_kontaktiert_werden__c", Kind: Picklist},
				"post":    {Field: "Darf_Postwerbung_erhalten__c", Kind: Picklist},
				"storage": {Field: "Informationen_duerfen_gespeichert_werden__c", Kind: Picklist},
			},
		}
	}
	return Mapping{"Contact": obj(), "Lead": obj()}
}

// Validate reports every problem of the mapping at once (errors.Join),
// each prefixed with its config path below salesforce.objects.
func (m Mapping) Validate() error {
	if len(m) == 0 {
		return errors.New("objects: no Salesforce object mapped")
	}
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("objects.%s: "+format, append([]any{path}, args...)...))
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		obj := m[name]
		if !validAPIName(name) {
			bad(name, "not a Salesforce object API name")
		}
		for _, other := range names {
			if other < name && strings.EqualFold(other, name) {
				bad(name, "mapped twice (also as %s; API names ignore case)", other)
			}
		}
		if obj.Version != "" && !validAPIName(obj.Version) {
			bad(name+".version", "%q is not a field API name", obj.Version)
		}
		for i, f := range obj.Email {
			if !validAPIName(f) {
				bad(fmt.Sprintf("%s.email[%d]", name, i), "%q is not a field API name", f)
			}
		}
		for i, f := range obj.Phone {
			if !validAPIName(f) {
				bad(fmt.Sprintf("%s.phone[%d]", name, i), "%q is not a field API name", f)
			}
		}
		if len(obj.Channels) == 0 {
			bad(name+".channels", "no channel mapped (want email, phone, post and/or storage)")
		}
		chans := make([]string, 0, len(obj.Channels))
		for ch := range obj.Channels {
			chans = append(chans, ch)
		}
		sort.Strings(chans)
		seen := map[guard.Channel]string{}
		for _, ch := range chans {
			f := obj.Channels[ch]
			path := name + ".channels." + ch
			c, err := guard.ParseChannel(ch)
			if err != nil {
				bad(path, "unknown channel (want email, phone, post or storage)")
			} else if prev, dup := seen[c]; dup {
				bad(path, "channel mapped twice (also as %q)", prev)
			} else {
				seen[c] = ch
			}
			if !validAPIName(f.Field) {
				bad(path+".field", "%q is not a field API name", f.Field)
			}
			switch f.Kind {
			case "", Picklist, Checkbox, OptOut:
			default:
				bad(path+".kind", "%q is not picklist, checkbox or optout", string(f.Kind))
			}
		}
	}
	return errors.Join(errs...)
}

// validAPIName accepts Salesforce API names: a letter, then letters, digits
// and underscores (custom names end in __c).
func validAPIName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '_'):
		default:
			return false
		}
	}
	return true
}

// RecordOptions tune Mapping.Record. The zero value uses the German
// vocabulary, region DE and no future check.
type RecordOptions struct {
	Vocabulary guard.Vocabulary
	Region     string // default region for phone numbers, default DE
	// Now, when set, rejects versions more than MaxFutureSkew after it.
	Now time.Time
}

// WarningCode names a problem that Record reports without failing.
type WarningCode string

// Warning codes.
const (
	// WarnUnknownValue: a picklist word the vocabulary does not know. It is
	// stored as it came and counts as missing consent.
	WarnUnknownValue WarningCode = "unknown_value"
	// WarnInvalidBoolean: a checkbox or optout field that is not
	// true/false/1/0; the channel counts as missing.
	WarnInvalidBoolean WarningCode = "invalid_boolean"
	// WarnInvalidEmail, WarnInvalidPhone: an identifier that cannot be
	// normalised; it is left out of the record's identifiers.
	WarnInvalidEmail WarningCode = "invalid_email"
	WarnInvalidPhone WarningCode = "invalid_phone"
	// WarnUnversioned: neither the version field nor LastModifiedDate was
	// sent; the store lets such an update only lower consent.
	WarnUnversioned WarningCode = "unversioned"
)

// Warning is a problem with one field that did not stop the record.
type Warning struct {
	Field string // field API name
	Code  WarningCode
	// Value is safe to log: an unknown word cut to 32 characters (starred
	// when it looks like an address or number), or a masked identifier.
	Value string
}

func (w Warning) String() string {
	if w.Value == "" {
		return string(w.Code) + " " + w.Field
	}
	return fmt.Sprintf("%s %s %q", w.Code, w.Field, w.Value)
}

// WriteCounts appends what the import and sync summaries list after their
// totals: ", created 3" for each non-zero store outcome (in a fixed order),
// then a line per warning code (sorted) and per skipped row.
func WriteCounts(b *strings.Builder, outcomes map[string]int, warnings map[WarningCode]int, skipped []string) {
	for _, o := range []guard.Outcome{guard.Created, guard.Replaced, guard.Merged, guard.Restricted, guard.Tombstoned, guard.Stale, guard.Unchanged} {
		if n := outcomes[o.String()]; n > 0 {
			fmt.Fprintf(b, ", %s %d", o, n)
		}
	}
	for _, code := range slices.Sorted(maps.Keys(warnings)) {
		fmt.Fprintf(b, "\n  warning %s: %d", code, warnings[code])
	}
	for _, p := range skipped {
		fmt.Fprintf(b, "\n  skipped %s", p)
	}
}

// ErrUnknownObject: the object type is not in the mapping.
var ErrUnknownObject = errors.New("object not mapped")

// FieldError is a field value that makes a record unusable (a bad Id or
// version). Field is the field's API name; the value is never included.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// RecordID returns the 18-character form of a record's Id field, or a
// *FieldError for the Id field that does not repeat the value.
func RecordID(raw string) (string, error) {
	id, err := guard.NormalizeRecordID(strings.TrimSpace(raw))
	if err != nil {
		return "", &FieldError{Field: "Id", Err: errors.New("not a 15- or 18-character Salesforce Id")}
	}
	return id, nil
}

// Object returns the mapping of an object type, matching API names
// without regard to case, and the canonical name.
func (m Mapping) Object(name string) (string, Object, bool) {
	if o, ok := m[name]; ok {
		return name, o, true
	}
	for k, o := range m {
		if strings.EqualFold(k, name) {
			return k, o, true
		}
	}
	return "", Object{}, false
}

// Record converts one Salesforce record into an Update.
//
// object is the type ("Contact"; matched without regard to case), id the
// record Id (15 or 18 characters; the Update carries 18), fields looks a
// field up by API name and reports false for an absent or null field. The
// Update holds the consent word of every mapped channel ("" when null), the
// version (zero when unversioned) and the normalised email and phone
// identifiers; Source and Ref are left to the caller.
//
// Problems that retrying cannot fix and that lose no consent — an unknown
// picklist word, an unparseable email or phone, a bad checkbox, a missing
// version — are returned as warnings. An unknown object
// (ErrUnknownObject), a bad Id or an unparseable or far-future version
// (*FieldError) are errors.
func (m Mapping) Record(object, id string, fields func(name string) (string, bool), o RecordOptions) (guard.Update, []Warning, error) {
	name, obj, ok := m.Object(object)
	if !ok {
		return guard.Update{}, nil, fmt.Errorf("%w: %q", ErrUnknownObject, Printable(object, 40))
	}
	vocab := o.Vocabulary.OrDefault()
	region := o.Region
	if region == "" {
		region = "DE"
	}
	rid, err := RecordID(id)
	if err != nil {
		return guard.Update{}, nil, err
	}
	up := guard.Update{ID: rid, Object: name}
	var warns []Warning

	v, found, err := o.version(obj, fields)
	if err != nil {
		return guard.Update{}, nil, err
	}
	up.Version = v
	if !found {
		warns = append(warns, Warning{Field: obj.versionField(), Code: WarnUnversioned})
	}

	for _, ch := range guard.Channels {
		f, ok := obj.Channels[ch.String()]
		if !ok {
			continue
		}
		raw, ok := fields(f.Field)
		if !ok || strings.TrimSpace(raw) == "" {
			continue
		}
		switch f.Kind {
		case Checkbox, OptOut:
			b, ok := parseBool(raw)
			if !ok {
				warns = append(warns, Warning{Field: f.Field, Code: WarnInvalidBoolean, Value: safeWord(raw)})
				continue
			}
			if f.Kind == OptOut {
				b = !b
			}
			if b {
				up.Consent[ch] = vocab.Word(guard.Granted)
			} else {
				up.Consent[ch] = vocab.Word(guard.Denied)
			}
		default:
			up.Consent[ch] = raw
			if _, known := vocab.Classify(raw); !known {
				warns = append(warns, Warning{Field: f.Field, Code: WarnUnknownValue, Value: safeWord(raw)})
			}
		}
	}

	addID := func(id guard.Identifier) {
		for _, have := range up.Identifiers {
			if have == id {
				return
			}
		}
		up.Identifiers = append(up.Identifiers, id)
	}
	for _, f := range obj.Email {
		raw, ok := fields(f)
		if !ok || strings.TrimSpace(raw) == "" {
			continue
		}
		id, err := guard.ParseEmail(raw)
		if err != nil {
			warns = append(warns, Warning{Field: f, Code: WarnInvalidEmail, Value: guard.Mask(guard.KindEmail, strings.TrimSpace(raw))})
			continue
		}
		addID(id)
	}
	for _, f := range obj.Phone {
		raw, ok := fields(f)
		if !ok || strings.TrimSpace(raw) == "" {
			continue
		}
		id, err := guard.ParsePhone(raw, region)
		if err != nil {
			warns = append(warns, Warning{Field: f, Code: WarnInvalidPhone, Value: guard.Mask(guard.KindPhone, strings.TrimSpace(raw))})
			continue
		}
		addID(id)
	}
	return up, warns, nil
}

// version reads a record's version from obj's version field or, when that
// is absent or blank, from FallbackVersionField; found is false when neither
// holds one.
func (o RecordOptions) version(obj Object, fields func(name string) (string, bool)) (v time.Time, found bool, err error) {
	for _, f := range [...]string{obj.versionField(), FallbackVersionField} {
		raw, ok := fields(f)
		if !ok || strings.TrimSpace(raw) == "" {
			continue
		}
		v, err := o.ParseVersion(raw)
		if err != nil {
			return time.Time{}, false, &FieldError{Field: f, Err: err}
		}
		return v, true, nil
	}
	return time.Time{}, false, nil
}

// ParseVersion reads a version value: a Salesforce dateTime
// (ParseDateTime) no more than MaxFutureSkew after o.Now, when Now is set.
func (o RecordOptions) ParseVersion(raw string) (time.Time, error) {
	t, err := ParseDateTime(raw)
	if err != nil {
		return time.Time{}, err
	}
	if !o.Now.IsZero() && t.After(o.Now.Add(MaxFutureSkew)) {
		return time.Time{}, fmt.Errorf("dateTime more than %v in the future", MaxFutureSkew)
	}
	return t, nil
}

// versionField is the field holding the object's version.
func (o Object) versionField() string {
	if o.Version == "" {
		return DefaultVersionField
	}
	return o.Version
}

// Fields lists the field API names an object's mapping reads, for setup
// docs and checks: Id, the version fields, identifiers, channels.
func (o Object) Fields() []string {
	vf := o.versionField()
	out := []string{"Id", vf}
	if vf != FallbackVersionField {
		out = append(out, FallbackVersionField)
	}
	out = append(out, o.Email...)
	out = append(out, o.Phone...)
	for _, ch := range guard.Channels {
		if f, ok := o.Channels[ch.String()]; ok {
			out = append(out, f.Field)
		}
	}
	// Keep the first occurrence of each name.
	seen := map[string]bool{}
	return slices.DeleteFunc(out, func(s string) bool {
		k := strings.ToLower(s)
		if seen[k] {
			return true
		}
		seen[k] = true
		return false
	})
}

// ParseDateTime reads a Salesforce dateTime: SOAP form
// 2026-11-28T09:15:02.000Z, REST form 2026-11-28T09:15:02.000+0000, or any
// RFC 3339 time. The result is UTC, truncated to milliseconds (Salesforce
// precision).
func ParseDateTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t, err = time.Parse("2006-01-02T15:04:05.999999999Z0700", s)
	}
	if err != nil || t.Year() < 1970 {
		return time.Time{}, errors.New("not a dateTime like 2026-11-28T09:15:02.000Z")
	}
	return t.UTC().Truncate(time.Millisecond), nil
}

// parseBool reads xsd:boolean (true, false, 1, 0), ignoring case and space.
func parseBool(s string) (v, ok bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}

// safeWord makes a field value fit for logs: cut to 32 characters, and
// starred when it looks like personal data (an address or a number).
func safeWord(s string) string {
	s = strings.TrimSpace(s)
	digits := 0
	for _, r := range s {
		if '0' <= r && r <= '9' {
			digits++
		}
	}
	if strings.ContainsRune(s, '@') || digits >= 5 {
		return "***"
	}
	return Printable(s, 32)
}

// Printable shortens s to at most n runes, marking the cut; invalid UTF-8
// and control characters are replaced so that text from Salesforce logs and
// renders cleanly.
func Printable(s string, n int) string {
	var b strings.Builder
	i := 0
	for _, r := range s {
		if i == n {
			b.WriteString("…")
			break
		}
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			r = '?'
		}
		b.WriteRune(r)
		i++
	}
	return b.String()
}

// JSONValue reads one field of a record in Salesforce REST shape (JSON
// events, REST API query results) as the string Record takes: strings as
// they are, booleans "true"/"false", numbers as written. null, objects and
// arrays report false (absent).
func JSONValue(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	case 't', 'f':
		var b bool
		if json.Unmarshal(raw, &b) != nil {
			return "", false
		}
		if b {
			return "true", true
		}
		return "false", true
	case 'n', '{', '[':
		return "", false
	}
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		return "", false
	}
	return n.String(), true
}
