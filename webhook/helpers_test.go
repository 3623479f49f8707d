package webhook

import (
	"bytes"
	"encoding/xml"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/consentguard/consentguard/guard"
)

var update = flag.Bool("update", false, "rewrite generated testdata files")

const (
	testOrg   = "00D000000000062EAA"
	testOrg15 = "00D000000000062"
	testToken = "s3cret-token"
)

// encodeOutbound renders a notifications() envelope the way Salesforce
// does: default namespace on notifications, sf prefix redeclared on every
// sObject, SessionId nil.
func encodeOutbound(org string, notes []notification) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	b.WriteString(`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">` + "\n")
	b.WriteString(" <soapenv:Body>\n  <notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">\n")
	fmt.Fprintf(&b, "   <OrganizationId>%s</OrganizationId>\n", esc(org))
	b.WriteString("   <ActionId>04k000000000AbCAAU</ActionId>\n   <SessionId xsi:nil=\"true\"/>\n")
	b.WriteString("   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/00D000000000062</EnterpriseUrl>\n")
	b.WriteString("   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/00D000000000062</PartnerUrl>\n")
	for _, n := range notes {
		fmt.Fprintf(&b, "   <Notification>\n    <Id>%s</Id>\n", esc(n.ID))
		fmt.Fprintf(&b, "    <sObject xsi:type=\"sf:%s\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">\n", esc(n.Object))
		for _, f := range n.Fields {
			fmt.Fprintf(&b, "     <sf:%s>%s</sf:%s>\n", f.Name, esc(f.Value), f.Name)
		}
		b.WriteString("    </sObject>\n   </Notification>\n")
	}
	b.WriteString("  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n")
	return b.Bytes()
}

func newRequest(target string, body []byte) *http.Request {
	return httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// sfid returns the 18-character Id for a key prefix and a number.
func sfid(tb testing.TB, prefix string, n int) string {
	tb.Helper()
	id, err := guard.NormalizeRecordID(fmt.Sprintf("%s%0*d", prefix, 15-len(prefix), n))
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// contactNote is a notification for Contact number i at a version, with
// the same consent word on every channel.
func contactNote(tb testing.TB, notifID, i int, version, word string) notification {
	return notification{
		ID:     sfid(tb, "04l", notifID),
		Object: "Contact",
		Fields: []sfField{
			{"Id", sfid(tb, "003", i)},
			{"Darf_angemailt_werden__c", word},
			{"Darf_telefonisch_kontaktiert_werden__c", word},
			{"Darf_Postwerbung_erhalten__c", word},
			{"Informationen_duerfen_gespeichert_werden__c", "Ja"},
			{"Email", fmt.Sprintf("kontakt%d@example.de", i)},
			{"Phone", fmt.Sprintf("+49 211 %07d", 1000000+i)},
			{"SystemModstamp", version},
		},
	}
}

func readTestdata(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// outbound100 generates testdata/outbound_100.xml: 100 notifications for
// 100 Contacts, words cycling through Ja, Nein, Abfrage ausstehend.
func outbound100(tb testing.TB) []byte {
	words := []string{"Ja", "Nein", "Abfrage ausstehend"}
	notes := make([]notification, 100)
	for i := range notes {
		notes[i] = contactNote(tb, 100+i, 100+i, fmt.Sprintf("2026-11-28T09:%02d:%02d.000Z", i/60, i%60), words[i%3])
	}
	return encodeOutbound(testOrg, notes)
}

func TestOutbound100Fixture(t *testing.T) {
	want := outbound100(t)
	path := filepath.Join("testdata", "outbound_100.xml")
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestOutbound100Fixture -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("testdata/outbound_100.xml is stale; run go test -run TestOutbound100Fixture -update")
	}
}
