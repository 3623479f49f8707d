package webhook

import (
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeOutboundFixtures(t *testing.T) {
	tests := []struct {
		file    string
		org     string
		notes   int
		objects []string
		check   func(t *testing.T, m *outbound)
	}{
		{file: "outbound_one.xml", org: testOrg, notes: 1, objects: []string{"Contact"}, check: func(t *testing.T, m *outbound) {
			n := m.Notifications[0]
			if n.ID != "04l000000000001AAA" {
				t.Errorf("notification id %q", n.ID)
			}
			want := map[string]string{
				"Id":                                     "003000000000001AAA",
				"Darf_angemailt_werden__c":               "Ja",
				"Darf_telefonisch_kontaktiert_werden__c": "Abfrage ausstehend",
				"Email":                                  "Anna.Schmidt@Example.DE",
				"SystemModstamp":                         "2026-11-28T09:15:02.000Z",
				"Phone":                                  "+49 (0)211 17540322",
			}
			for k, v := range want {
				if got, ok := n.field(k); !ok || got != v {
					t.Errorf("field %s = %q, %v; want %q", k, got, ok, v)
				}
			}
			if len(n.Fields) != 10 {
				t.Errorf("%d fields, want 10", len(n.Fields))
			}
			if m.ActionID != "04k000000000AbCAAU" || !strings.HasPrefix(m.EnterpriseURL, "https://") || !strings.HasPrefix(m.PartnerURL, "https://") {
				t.Errorf("header fields: %+v", m)
			}
		}},
		{file: "outbound_lead.xml", org: testOrg, notes: 1, objects: []string{"Lead"}, check: func(t *testing.T, m *outbound) {
			if v, _ := m.Notifications[0].field("Email"); v != "lead@müller.example" {
				t.Errorf("Email %q (character reference not decoded?)", v)
			}
		}},
		{file: "outbound_nil_fields.xml", org: testOrg, notes: 2, objects: []string{"Contact", "Contact"}, check: func(t *testing.T, m *outbound) {
			n := m.Notifications[0]
			for _, f := range []string{"Phone", "MobilePhone", "Darf_telefonisch_kontaktiert_werden__c", "Informationen_duerfen_gespeichert_werden__c", "SystemModstamp"} {
				if v, ok := n.field(f); ok {
					t.Errorf("nil/omitted field %s present: %q", f, v)
				}
			}
			if v, ok := n.field("Email"); !ok || v != "nil.fields@example.de" {
				t.Errorf("Email %q %v", v, ok)
			}
		}},
		{file: "outbound_checkbox_optout.xml", org: testOrg, notes: 1, objects: []string{"Contact"}},
		{file: "outbound_unknown_word.xml", org: testOrg, notes: 1, objects: []string{"Contact"}},
		{file: "outbound_foreign_org.xml", org: "00DA0000000XyZqMAK", notes: 1, objects: []string{"Contact"}},
		{file: "outbound_empty_sobject.xml", org: testOrg15, notes: 1, objects: []string{"Contact"}, check: func(t *testing.T, m *outbound) {
			if !m.Notifications[0].empty() {
				t.Error("empty sObject not empty")
			}
		}},
		{file: "outbound_100.xml", org: testOrg, notes: 100},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			m, err := decodeOutbound(readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if m.OrganizationID != tt.org {
				t.Errorf("org %q, want %q", m.OrganizationID, tt.org)
			}
			if len(m.Notifications) != tt.notes {
				t.Fatalf("%d notifications, want %d", len(m.Notifications), tt.notes)
			}
			for i, o := range tt.objects {
				if m.Notifications[i].Object != o {
					t.Errorf("notification %d object %q, want %q", i, m.Notifications[i].Object, o)
				}
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

// Every one of the 100 notifications is read, not only the first.
func TestDecodeOutboundEvery(t *testing.T) {
	m, err := decodeOutbound(readTestdata(t, "outbound_100.xml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range m.Notifications {
		if want := sfid(t, "04l", 100+i); n.ID != want {
			t.Errorf("notification %d id %s, want %s", i, n.ID, want)
		}
		if id, _ := n.field("Id"); id != sfid(t, "003", 100+i) {
			t.Errorf("notification %d record %s", i, id)
		}
	}
}

func TestDecodeOutboundRejects(t *testing.T) {
	one := string(readTestdata(t, "outbound_one.xml"))
	note := contactNote(t, 1, 1, "2026-11-28T09:15:02.000Z", "Ja")
	tests := []struct{ name, body string }{
		{"garbage", string(readTestdata(t, "garbage.txt"))},
		{"not notifications", string(readTestdata(t, "not_notifications.xml"))},
		{"wrong namespace", string(readTestdata(t, "wrong_namespace.xml"))},
		{"truncated", string(readTestdata(t, "truncated.xml"))},
		{"empty", ""},
		{"json", `{"records":[]}`},
		{"soap 1.2", strings.ReplaceAll(one, "http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope")},
		{"no notifications", string(encodeOutbound(testOrg, nil))},
		{"101 notifications", string(encodeOutbound(testOrg, repeat(note, 101)))},
		{"no org", strings.Replace(one, "<OrganizationId>00D000000000062EAA</OrganizationId>", "", 1)},
		{"bad org", strings.Replace(one, "00D000000000062EAA</OrganizationId>", "00D</OrganizationId>", 1)},
		{"bad notification id", strings.Replace(one, "<Id>04l000000000001AAA</Id>", "<Id>x</Id>", 1)},
		{"two bodies", strings.Replace(one, "</soapenv:Body>", "</soapenv:Body><soapenv:Body/>", 1)},
		{"trailing element", one + "<x/>"},
		{"doctype", strings.Replace(one, `<?xml version="1.0" encoding="UTF-8"?>`, `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>`, 1)},
		{"latin1", strings.Replace(one, `encoding="UTF-8"`, `encoding="ISO-8859-1"`, 1)},
		{"text in notifications", strings.Replace(one, "<ActionId>", "hello<ActionId>", 1)},
		{"element in OrganizationId", strings.Replace(one, "00D000000000062EAA</OrganizationId>", "<b>00D000000000062EAA</b></OrganizationId>", 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeOutbound([]byte(tt.body))
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			if !errors.Is(err, errBadEnvelope) {
				t.Errorf("error %v does not wrap errBadEnvelope", err)
			}
		})
	}
}

func TestDecodeOutboundLenient(t *testing.T) {
	one := string(readTestdata(t, "outbound_one.xml"))
	tests := []struct {
		name, body string
		check      func(*outbound) bool
	}{
		{"no xml declaration", strings.Replace(one, `<?xml version="1.0" encoding="UTF-8"?>`, "", 1), nil},
		{"unknown element in notifications", strings.Replace(one, "<ActionId>", "<Future>x</Future><ActionId>", 1), nil},
		{"field in another namespace ignored", strings.Replace(one, "<sf:Id>", `<o:Other xmlns:o="urn:x">v</o:Other><sf:Id>`, 1),
			func(m *outbound) bool { _, ok := m.Notifications[0].field("Other"); return !ok }},
		{"relationship field skipped", strings.Replace(one, "<sf:Id>", `<sf:Account xsi:type="sf:Account"><sf:Name>ACME</sf:Name></sf:Account><sf:Id>`, 1),
			func(m *outbound) bool {
				_, ok := m.Notifications[0].field("Account")
				_, ok2 := m.Notifications[0].field("Name")
				return !ok && !ok2
			}},
		{"nil sObject", strings.Replace(one, `<sObject xsi:type="sf:Contact"`, `<sObject xsi:nil="true" xsi:type="sf:Contact"`, 1),
			func(m *outbound) bool { return m.Notifications[0].empty() }},
		{"prefix sf rebound to another namespace", strings.Replace(one, `<sf:Id>`, `<sf:Id xmlns:sf="urn:other">`, 1),
			func(m *outbound) bool { _, ok := m.Notifications[0].field("Id"); return !ok }},
		{"type without prefix", strings.Replace(one, `xsi:type="sf:Contact"`, `xsi:type="Contact"`, 1),
			func(m *outbound) bool { return m.Notifications[0].Object == "Contact" }},
		{"CDATA value", strings.Replace(one, "<sf:Email>Anna.Schmidt@Example.DE</sf:Email>", "<sf:Email><![CDATA[a&b@example.de]]></sf:Email>", 1),
			func(m *outbound) bool { v, _ := m.Notifications[0].field("Email"); return v == "a&b@example.de" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeOutbound([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil && !tt.check(m) {
				t.Errorf("unexpected result: %+v", m.Notifications)
			}
		})
	}
}

func repeat(n notification, k int) []notification {
	out := make([]notification, k)
	for i := range out {
		out[i] = n
	}
	return out
}

func TestAckGolden(t *testing.T) {
	if got := readTestdata(t, "ack.golden.xml"); string(got) != ackEnvelope {
		t.Fatalf("ack differs from golden file:\n%s\n%s", got, ackEnvelope)
	}
	// It must be well-formed and in the outbound namespace.
	var v struct {
		XMLName xml.Name
		Body    struct {
			Resp struct {
				XMLName xml.Name
				Ack     bool `xml:"http://soap.sforce.com/2005/09/outbound Ack"`
			} `xml:"http://soap.sforce.com/2005/09/outbound notificationsResponse"`
		} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Body"`
	}
	if err := xml.Unmarshal([]byte(ackEnvelope), &v); err != nil || !v.Body.Resp.Ack || v.XMLName.Space != nsEnvelope {
		t.Fatalf("ack does not decode: %v %+v", err, v)
	}
}

func TestFaultEnvelope(t *testing.T) {
	code, msg := faultString(t, faultEnvelope("Client", `bad <input> & "more"`))
	if code != "soapenv:Client" || msg != `bad <input> & "more"` {
		t.Fatalf("code %q, faultstring %q", code, msg)
	}
}

// Decoding what encodeOutbound wrote gives back the notifications.
func TestDecodeOutboundRoundTrip(t *testing.T) {
	notes := []notification{
		contactNote(t, 1, 1, "2026-11-28T09:15:02.000Z", "Ja"),
		{ID: sfid(t, "04l", 2), Object: "Lead", Fields: []sfField{{"Id", sfid(t, "00Q", 2)}, {"Email", " <x&y>@\"z\".de\t"}}},
	}
	m, err := decodeOutbound(encodeOutbound(testOrg, notes))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.Notifications, notes) {
		t.Fatalf("got %+v\nwant %+v", m.Notifications, notes)
	}
}

func BenchmarkDecodeOutbound100(b *testing.B) {
	body := outbound100(b)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := decodeOutbound(body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "notifications/s")
}

// The scanner and the encoding/xml reference decoder agree on every
// fixture, accepted or refused.
func TestDecodeOutboundMatchesReference(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.*"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		m, err := decodeOutbound(b)
		ref, refErr := refDecodeOutbound(b)
		if (err == nil) != (refErr == nil) {
			t.Errorf("%s: scanner %v, reference %v", f, err, refErr)
			continue
		}
		if err == nil && !reflect.DeepEqual(m, ref) {
			t.Errorf("%s: scanner %+v\nreference %+v", f, m, ref)
		}
	}
}

func TestScanner(t *testing.T) {
	wrap := func(field string) string {
		return `<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/" xmlns:x="http://www.w3.org/2001/XMLSchema-instance"><e:Body>` +
			`<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>00D000000000062</OrganizationId>` +
			`<Notification><Id>04l000000000001</Id><sObject x:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">` +
			field + `</sObject></Notification></notifications></e:Body></e:Envelope>`
	}
	good := []struct{ name, doc, want string }{
		{"references", `<sf:V>a&amp;b&lt;&gt;&quot;&apos;&#233;&#xE9;&#x1F600;</sf:V>`, `a&b<>"'éé😀`},
		{"CRLF", "<sf:V>a\r\nb\rc</sf:V>", "a\nb\nc"},
		{"CDATA and text", "<sf:V>a<![CDATA[<b>&amp;\r\n]]>c</sf:V>", "a<b>&amp;\nc"},
		{"comment inside", "<sf:V>a<!-- x -->b</sf:V>", "ab"},
		{"single quotes and spaces", "<sf:V  x:nil = 'false' >v</sf:V >", "v"},
		{"self-closing is empty", "<sf:V/>", ""},
		{"default namespace on field", `<V xmlns="urn:sobject.enterprise.soap.sforce.com">v</V>`, "v"},
	}
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeOutbound([]byte("\xEF\xBB\xBF<?xml version='1.0' encoding='utf-8'?>\n" + wrap(tt.doc) + "\n<!-- end -->\n"))
			if err != nil {
				t.Fatal(err)
			}
			if v, ok := m.Notifications[0].field("V"); !ok || v != tt.want {
				t.Errorf("%q %v, want %q", v, ok, tt.want)
			}
		})
	}
	bad := []struct{ name, doc string }{
		{"mismatched end", "<sf:V>v</sf:W>"},
		{"unbound prefix", "<zz:V>v</zz:V>"},
		{"unbound attribute prefix", `<sf:V zz:nil="true">v</sf:V>`},
		{"duplicate attribute", `<sf:V a="1" a="2">v</sf:V>`},
		{"unquoted attribute", `<sf:V a=1>v</sf:V>`},
		{"attributes run together", `<sf:V a="1"b="2">v</sf:V>`},
		{"< in attribute", `<sf:V a="<">v</sf:V>`},
		{"unknown entity", "<sf:V>&nbsp;</sf:V>"},
		{"bare ampersand", "<sf:V>a & b</sf:V>"},
		{"reference to NUL", "<sf:V>&#0;</sf:V>"},
		{"control character", "<sf:V>a\x01b</sf:V>"},
		{"invalid UTF-8", "<sf:V>a\xffb</sf:V>"},
		{"]]> in text", "<sf:V>a]]>b</sf:V>"},
		{"bad name", "<sf:1V>v</sf:1V>"},
		{"empty xmlns prefix", `<sf:V xmlns:p="">v</sf:V>`},
		{"too deep", strings.Repeat("<sf:V>", maxDepth) + strings.Repeat("</sf:V>", maxDepth)},
		{"too many attributes", "<sf:V" + manyAttrs(maxAttrs+1) + ">v</sf:V>"},
		{"unterminated comment", "<!-- "},
		{"DOCTYPE inside", "<!DOCTYPE x>"},
		{"XML declaration inside", "<?xml version='1.0'?>"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if m, err := decodeOutbound([]byte(wrap(tt.doc))); err == nil {
				t.Fatalf("accepted: %+v", m.Notifications)
			} else if !errors.Is(err, errBadEnvelope) {
				t.Fatalf("%v", err)
			}
		})
	}
	for name, doc := range map[string]string{
		"latin-1":          `<?xml version="1.0" encoding="ISO-8859-1"?>` + wrap(""),
		"second root":      wrap("") + "<x/>",
		"text after root":  wrap("") + "x",
		"text before root": "x" + wrap(""),
		"no root":          "<!-- only a comment -->",
	} {
		if _, err := decodeOutbound([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func manyAttrs(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, ` a%d="1"`, i)
	}
	return b.String()
}

func TestScannerAttributeLimit(t *testing.T) {
	s := newScanner([]byte("<x" + manyAttrs(maxAttrs) + "/>"))
	if tok, err := s.next(); err != nil || len(tok.attrs) != maxAttrs {
		t.Fatalf("%d attributes: %v", len(tok.attrs), err)
	}
	s = newScanner([]byte("<x" + manyAttrs(maxAttrs+1) + "/>"))
	if _, err := s.next(); err == nil || !strings.Contains(err.Error(), "attributes") {
		t.Fatalf("limit not enforced: %v", err)
	}
}
