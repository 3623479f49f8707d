package webhook

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard"
)

func TestDefaultMappingValid(t *testing.T) {
	m := DefaultMapping()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, obj := range []string{"Contact", "Lead"} {
		o := m[obj]
		if o.Channels["email"].Field != "Darf_angemailt_werden__c" || o.Channels["storage"].Field != "Informationen_duerfen_gespeichert_werden__c" {
			t.Errorf("%s: %+v", obj, o.Channels)
		}
		want := []string{"Id", "SystemModstamp", "LastModifiedDate", "Email", "Phone", "MobilePhone",
			"Darf_angemailt_werden__c", "Darf_telefonisch_kontaktiert_werden__c", "Darf_Postwerbung_erhalten__c",
			"Informationen_duerfen_gespeichert_werden__c"}
		if got := o.Fields(); !slices.Equal(got, want) {
			t.Errorf("%s fields %v", obj, got)
		}
	}
	// Independent copies: changing one object leaves the other alone.
	m["Lead"].Channels["email"] = Field{Field: "X__c"}
	if m["Contact"].Channels["email"].Field == "X__c" {
		t.Error("Contact and Lead share a channel map")
	}
}

func TestValidateReportsEverything(t *testing.T) {
	m := Mapping{
		"Contact": {
			Version: "System Modstamp",
			Email:   []string{"Email", "bad-name"},
			Channels: map[string]Field{
				"email": {Field: "HasOptedOutOfEmail", Kind: "optin"},
				"fax":   {Field: "Fax__c"},
				"post":  {Field: ""},
			},
		},
		"contact": {Channels: map[string]Field{"email": {Field: "E"}}},
		"Lead":    {},
		"1Bad":    {Channels: map[string]Field{"Email": {Field: "E"}, "email": {Field: "F"}}},
	}
	err := m.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"objects.Contact.version", "objects.Contact.email[1]", "objects.Contact.channels.email.kind",
		"objects.Contact.channels.fax", "objects.Contact.channels.post.field", "objects.contact: mapped twice",
		"objects.Lead.channels: no channel", "objects.1Bad: not a Salesforce object", "objects.1Bad.channels.email: channel mapped twice",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if err := (Mapping{}).Validate(); err == nil {
		t.Error("empty mapping accepted")
	}
}

// fieldsOf makes a field lookup from pairs; a value "<nil>" is absent.
func fieldsOf(kv ...string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == name && kv[i+1] != "<nil>" {
				return kv[i+1], true
			}
		}
		return "", false
	}
}

func checkboxMapping() Mapping {
	return Mapping{"Contact": {
		Email: []string{"Email"},
		Phone: []string{"Phone"},
		Channels: map[string]Field{
			"email":   {Field: "HasOptedOutOfEmail", Kind: OptOut},
			"phone":   {Field: "DoNotCall", Kind: OptOut},
			"post":    {Field: "Postwerbung__c", Kind: Checkbox},
			"storage": {Field: "Speicherung__c", Kind: Checkbox},
		},
	}}
}

func TestRecord(t *testing.T) {
	v1 := time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)
	now := v1.Add(time.Minute)
	email := guard.Identifier{Kind: guard.KindEmail, Value: "anna.schmidt@example.de"}
	phone := guard.Identifier{Kind: guard.KindPhone, Value: "+4921117540322"}
	tests := []struct {
		name     string
		m        Mapping
		object   string
		id       string
		fields   func(string) (string, bool)
		want     guard.Update
		warnings []WarningCode
		err      string
	}{
		{
			name: "picklists", object: "Contact", id: "003000000000001AAA",
			fields: fieldsOf("SystemModstamp", "2026-11-28T09:15:02.000Z", "Email", " Anna.Schmidt@Example.DE ",
				"Phone", "0211 175403-22", "MobilePhone", "+49 (0)211 17540322",
				"Darf_angemailt_werden__c", "Ja", "Darf_telefonisch_kontaktiert_werden__c", "Nein",
				"Darf_Postwerbung_erhalten__c", "Abfrage ausstehend"),
			want: guard.Update{ID: "003000000000001AAA", Object: "Contact", Version: v1,
				Consent:     [4]string{"Ja", "Nein", "Abfrage ausstehend", ""},
				Identifiers: []guard.Identifier{email, phone}},
		},
		{
			name: "15-character id, object case, fallback version, REST dateTime", object: "lead", id: "00Q000000000001",
			fields: fieldsOf("LastModifiedDate", "2026-11-28T10:15:02.000+0100", "Darf_angemailt_werden__c", "Nein"),
			want:   guard.Update{ID: "00Q000000000001EAA", Object: "Lead", Version: v1, Consent: [4]string{"Nein", "", "", ""}},
		},
		{
			name: "version field wins over fallback", object: "Contact", id: "003000000000001",
			fields: fieldsOf("SystemModstamp", "2026-11-28T09:15:02Z", "LastModifiedDate", "2020-01-01T00:00:00Z"),
			want:   guard.Update{ID: "003000000000001AAA", Object: "Contact", Version: v1},
		},
		{
			name: "unknown word stored as it came", object: "Contact", id: "003000000000001AAA",
			fields: fieldsOf("SystemModstamp", "2026-11-28T09:15:02.000Z", "Darf_angemailt_werden__c", "Vielleicht",
				"Darf_telefonisch_kontaktiert_werden__c", " ja "),
			want:     guard.Update{ID: "003000000000001AAA", Object: "Contact", Version: v1, Consent: [4]string{"Vielleicht", " ja ", "", ""}},
			warnings: []WarningCode{WarnUnknownValue},
		},
		{
			name: "bad identifiers dropped", object: "Contact", id: "003000000000001AAA",
			fields: fieldsOf("SystemModstamp", "2026-11-28T09:15:02.000Z", "Email", "not-an-address",
				"Phone", "call me", "MobilePhone", "0211 175403-22"),
			want:     guard.Update{ID: "003000000000001AAA", Object: "Contact", Version: v1, Identifiers: []guard.Identifier{phone}},
			warnings: []WarningCode{WarnInvalidEmail, WarnInvalidPhone},
		},
		{
			name: "unversioned", object: "Contact", id: "003000000000001AAA",
			fields:   fieldsOf("Darf_angemailt_werden__c", "Nein", "SystemModstamp", "  "),
			want:     guard.Update{ID: "003000000000001AAA", Object: "Contact", Consent: [4]string{"Nein", "", "", ""}},
			warnings: []WarningCode{WarnUnversioned},
		},
		{
			name: "checkbox and optout", m: checkboxMapping(), object: "Contact", id: "003000000000004AAA",
			fields: fieldsOf("SystemModstamp", "2026-11-28T09:15:02.000Z", "HasOptedOutOfEmail", "false",
				"DoNotCall", "TRUE", "Postwerbung__c", "1", "Speicherung__c", "0"),
			want: guard.Update{ID: "003000000000004AAA", Object: "Contact", Version: v1, Consent: [4]string{"Ja", "Nein", "Ja", "Nein"}},
		},
		{
			name: "checkbox null and garbage are missing", m: checkboxMapping(), object: "Contact", id: "003000000000004AAA",
			fields:   fieldsOf("SystemModstamp", "2026-11-28T09:15:02.000Z", "HasOptedOutOfEmail", "<nil>", "DoNotCall", "yes"),
			want:     guard.Update{ID: "003000000000004AAA", Object: "Contact", Version: v1},
			warnings: []WarningCode{WarnInvalidBoolean},
		},
		{name: "unknown object", object: "Account", id: "001000000000001", fields: fieldsOf(), err: "object not mapped"},
		{name: "bad id", object: "Contact", id: "003000000000001XXX", fields: fieldsOf(), err: "Id: "},
		{name: "no id", object: "Contact", id: "", fields: fieldsOf(), err: "Id: "},
		{name: "bad version", object: "Contact", id: "003000000000001", fields: fieldsOf("SystemModstamp", "28.11.2026"), err: "SystemModstamp: not a dateTime"},
		{name: "bad fallback version", object: "Contact", id: "003000000000001", fields: fieldsOf("LastModifiedDate", "yesterday"), err: "LastModifiedDate: not a dateTime"},
		{name: "future version", object: "Contact", id: "003000000000001", fields: fieldsOf("SystemModstamp", "2026-11-28T11:15:02Z"), err: "in the future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.m
			if m == nil {
				m = DefaultMapping()
			}
			got, ws, err := m.Record(tt.object, tt.id, tt.fields, RecordOptions{Now: now})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.want.ID || got.Object != tt.want.Object || !got.Version.Equal(tt.want.Version) ||
				got.Consent != tt.want.Consent || !slices.Equal(got.Identifiers, tt.want.Identifiers) || got.Deleted {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			var codes []WarningCode
			for _, w := range ws {
				codes = append(codes, w.Code)
				if strings.Contains(w.Value, "@") || strings.Contains(w.String(), "not-an-address") {
					t.Errorf("warning leaks the value: %v", w)
				}
			}
			if !slices.Equal(codes, tt.warnings) {
				t.Errorf("warnings %v, want %v", ws, tt.warnings)
			}
		})
	}
}

func TestRecordErrorsAreFieldErrors(t *testing.T) {
	_, _, err := DefaultMapping().Record("Contact", "003000000000001", fieldsOf("SystemModstamp", "x"), RecordOptions{})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "SystemModstamp" {
		t.Fatalf("%v", err)
	}
	_, _, err = DefaultMapping().Record("Opportunity", "006000000000001", fieldsOf(), RecordOptions{})
	if !errors.Is(err, ErrUnknownObject) {
		t.Fatalf("%v", err)
	}
}

func TestParseDateTime(t *testing.T) {
	want := time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)
	for _, s := range []string{
		"2026-11-28T09:15:02.000Z", "2026-11-28T09:15:02Z", "2026-11-28T09:15:02.000+0000",
		"2026-11-28T10:15:02.000+0100", "2026-11-28T10:15:02+01:00", " 2026-11-28T09:15:02.0004Z ",
	} {
		got, err := ParseDateTime(s)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("%q: %v %v", s, got, err)
		}
	}
	for _, s := range []string{"", "2026-11-28", "2026-11-28 09:15:02", "28.11.2026 09:15", "0001-01-01T00:00:00Z", "2026-11-28T09:15:02.000"} {
		if got, err := ParseDateTime(s); err == nil {
			t.Errorf("%q accepted: %v", s, got)
		}
	}
}

func TestSafeWord(t *testing.T) {
	for in, want := range map[string]string{
		"Vielleicht":            "Vielleicht",
		"anna@example.de":       "***",
		"0211 17540322":         "***",
		"\x00bad\xff":           "?bad?",
		strings.Repeat("x", 40): strings.Repeat("x", 32) + "…",
	} {
		if got := safeWord(in); got != want {
			t.Errorf("safeWord(%q) = %q, want %q", in, got, want)
		}
	}
}
