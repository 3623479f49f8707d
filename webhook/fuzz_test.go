package webhook

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeOutbound feeds the SOAP decoder arbitrary bodies, seeded with
// every envelope in testdata. It must never panic; what it accepts must be
// read the same way by the reference decoder on encoding/xml, and must be
// a well-formed message (1–100 notifications, Salesforce-shaped Ids, valid
// UTF-8 values) that survives a round trip through encodeOutbound; what it
// refuses must be refused with errBadEnvelope. Mapping every accepted
// notification must not panic either.
func FuzzDecodeOutbound(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.xml"))
	if err != nil {
		f.Fatal(err)
	}
	files = append(files, filepath.Join("testdata", "garbage.txt"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	mappings := []Mapping{DefaultMapping(), checkboxMapping()}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := decodeOutbound(body)
		if err != nil {
			if m != nil {
				t.Fatal("message and error")
			}
			if !errors.Is(err, errBadEnvelope) {
				t.Fatalf("error does not wrap errBadEnvelope: %v", err)
			}
			return
		}
		// Differential: encoding/xml must read what the scanner accepted
		// the same way (the scanner may be stricter, never looser).
		ref, err := refDecodeOutbound(body)
		if err != nil {
			t.Fatalf("scanner accepted what encoding/xml refuses (%v)", err)
		}
		if !reflect.DeepEqual(normalize(ref.Notifications), normalize(m.Notifications)) || ref.OrganizationID != m.OrganizationID {
			t.Fatalf("scanner and encoding/xml disagree:\n%+v\n%+v", m, ref)
		}
		if n := len(m.Notifications); n < 1 || n > MaxNotifications {
			t.Fatalf("%d notifications", n)
		}
		if !isSalesforceID(m.OrganizationID) {
			t.Fatalf("org %q", m.OrganizationID)
		}
		for _, n := range m.Notifications {
			if !isSalesforceID(n.ID) {
				t.Fatalf("notification id %q", n.ID)
			}
			if strings.ContainsRune(n.Object, ':') {
				t.Fatalf("object type keeps its prefix: %q", n.Object)
			}
			for _, fl := range n.Fields {
				if !utf8.ValidString(fl.Value) || fl.Name == "" {
					t.Fatalf("field %q = %q", fl.Name, fl.Value)
				}
			}
			for _, mp := range mappings {
				id, _ := n.field("Id")
				up, ws, err := mp.Record(n.Object, id, n.field, RecordOptions{})
				if err == nil && len(up.ID) != 18 {
					t.Fatalf("record id %q", up.ID)
				}
				for _, w := range ws {
					if w.Code == WarnUnknownValue && (strings.Contains(w.Value, "@") || len(w.Value) > 40*4) {
						t.Fatalf("warning value not safe: %q", w.Value)
					}
				}
			}
		}
		// Round trip: re-encoding what was decoded gives the same message.
		// (Only names encodeOutbound can write back as element names.)
		for _, n := range m.Notifications {
			for _, fl := range n.Fields {
				if !validAPIName(fl.Name) {
					return
				}
			}
			if !validAPIName(n.Object) && n.Object != "" {
				return
			}
		}
		again, err := decodeOutbound(encodeOutbound(m.OrganizationID, m.Notifications))
		if err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
		if !reflect.DeepEqual(normalize(again.Notifications), normalize(m.Notifications)) {
			t.Fatalf("round trip changed notifications:\n%+v\n%+v", m.Notifications, again.Notifications)
		}
	})
}

// normalize maps nil and empty field lists to one form.
func normalize(ns []notification) []notification {
	out := make([]notification, len(ns))
	for i, n := range ns {
		if len(n.Fields) == 0 {
			n.Fields = nil
		}
		out[i] = n
	}
	return out
}
