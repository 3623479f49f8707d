package webhook

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// XML namespaces of an outbound message. Elements and attributes are matched
// on these URIs and local names, never on the prefixes a sender chose.
const (
	nsEnvelope = "http://schemas.xmlsoap.org/soap/envelope/"
	nsOutbound = "http://soap.sforce.com/2005/09/outbound"
	nsSObject  = "urn:sobject.enterprise.soap.sforce.com"
	nsXSI      = "http://www.w3.org/2001/XMLSchema-instance"
)

// MaxNotifications is the most notifications one outbound message may carry
// (maxOccurs in the outbound messaging WSDL).
const MaxNotifications = 100

// ackEnvelope is the exact acknowledgement Salesforce expects.
const ackEnvelope = `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">` +
	`<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">` +
	`<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>`

// outbound is one decoded notifications() call. The SessionId is read past
// and never kept: it is a credential.
type outbound struct {
	OrganizationID string
	ActionID       string
	EnterpriseURL  string
	PartnerURL     string
	Notifications  []notification
}

// notification is one Notification: its own Id and the sObject it carries.
type notification struct {
	ID     string // the notification Id (dedupe key), not the record Id
	Object string // sObject type from xsi:type, prefix stripped; "" if none
	Fields []sfField
}

// sfField is one non-null sObject field. Null fields (omitted or
// xsi:nil="true") are not kept: absent means null.
type sfField struct {
	Name, Value string
}

// field looks a field up by API name (API names ignore case).
func (n *notification) field(name string) (string, bool) {
	for i := range n.Fields {
		if n.Fields[i].Name == name {
			return n.Fields[i].Value, true
		}
	}
	for i := range n.Fields {
		if strings.EqualFold(n.Fields[i].Name, name) {
			return n.Fields[i].Value, true
		}
	}
	return "", false
}

// empty reports an sObject without fields (the record was deleted before
// the message went out); such a notification is skipped.
func (n *notification) empty() bool { return len(n.Fields) == 0 }

// errBadEnvelope wraps every decoding error: the body is not a
// notifications envelope.
var errBadEnvelope = errors.New("not an outbound message")

func badEnvelope(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadEnvelope}, args...)...)
}

// decodeOutbound decodes a SOAP 1.1 notifications() envelope, every
// notification of it. Errors wrap errBadEnvelope and describe the input
// only.
func decodeOutbound(data []byte) (*outbound, error) {
	s := newScanner(data)
	root, err := s.next()
	if err != nil {
		return nil, err
	}
	if root.kind != tokStart || !root.name.is(nsEnvelope, "Envelope") {
		return nil, badEnvelope("root element is not a SOAP 1.1 Envelope")
	}
	var msg *outbound
	err = children(s, "Envelope", func(t xtoken) (err error) {
		switch {
		case t.name.is(nsEnvelope, "Body"):
			if msg != nil {
				return badEnvelope("two SOAP Bodies")
			}
			msg, err = decodeBody(s)
			return err
		case t.name.is(nsEnvelope, "Header") && msg == nil:
			return s.skip()
		}
		return badEnvelope("unexpected element %s in Envelope", Printable(string(t.name.local), 40))
	})
	if err != nil {
		return nil, err
	}
	if msg == nil {
		return nil, badEnvelope("no SOAP Body")
	}
	// Nothing but comments and space may follow the Envelope.
	if _, err := s.next(); err != io.EOF {
		if err == nil {
			err = badEnvelope("content after the Envelope")
		}
		return nil, err
	}
	return msg, nil
}

func decodeBody(s *scanner) (*outbound, error) {
	var msg *outbound
	err := children(s, "SOAP Body", func(t xtoken) (err error) {
		if !t.name.is(nsOutbound, "notifications") || msg != nil {
			return badEnvelope("SOAP Body holds %s, want one notifications element", Printable(string(t.name.local), 40))
		}
		msg, err = decodeNotifications(s)
		return err
	})
	if err != nil {
		return nil, err
	}
	if msg == nil {
		return nil, badEnvelope("SOAP Body holds no notifications element")
	}
	return msg, nil
}

func decodeNotifications(s *scanner) (*outbound, error) {
	msg := &outbound{}
	err := children(s, "notifications", func(t xtoken) error {
		if string(t.name.space) != nsOutbound {
			// Not part of the WSDL: ignore, for forward compatibility.
			return s.skip()
		}
		var dst *string
		switch string(t.name.local) {
		case "OrganizationId":
			dst = &msg.OrganizationID
		case "ActionId":
			dst = &msg.ActionID
		case "EnterpriseUrl":
			dst = &msg.EnterpriseURL
		case "PartnerUrl":
			dst = &msg.PartnerURL
		case "Notification":
			if len(msg.Notifications) == MaxNotifications {
				return badEnvelope("more than %d notifications", MaxNotifications)
			}
			if msg.Notifications == nil {
				msg.Notifications = make([]notification, 0, 8)
			}
			n, err := decodeNotification(s)
			if err != nil {
				return fmt.Errorf("notification %d: %w", len(msg.Notifications)+1, err)
			}
			msg.Notifications = append(msg.Notifications, n)
			return nil
		default: // SessionId (a credential: never kept) and anything newer
			return s.skip()
		}
		v, _, err := text(s, string(t.name.local))
		*dst = strings.TrimSpace(v)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !isSalesforceID(msg.OrganizationID) {
		return nil, badEnvelope("OrganizationId missing or not a Salesforce Id")
	}
	if len(msg.Notifications) == 0 {
		return nil, badEnvelope("no Notification")
	}
	return msg, nil
}

func decodeNotification(s *scanner) (notification, error) {
	var n notification
	sawObject := false
	err := children(s, "Notification", func(t xtoken) error {
		switch {
		case t.name.is(nsOutbound, "Id"):
			v, _, err := text(s, "Id")
			n.ID = strings.TrimSpace(v)
			return err
		case t.name.is(nsOutbound, "sObject"):
			if sawObject {
				return badEnvelope("two sObjects")
			}
			sawObject = true
			return decodeSObject(s, t, &n)
		}
		return s.skip()
	})
	if err != nil {
		return n, err
	}
	if !isSalesforceID(n.ID) {
		return n, badEnvelope("notification Id missing or not a Salesforce Id")
	}
	return n, nil
}

// decodeSObject reads the fields of an sObject. Its type is the local part
// of xsi:type ("sf:Contact" → "Contact"); whatever prefix the sender bound
// is not looked at.
func decodeSObject(s *scanner, start xtoken, n *notification) error {
	null := false
	for _, a := range start.attrs {
		switch {
		case a.name.is(nsXSI, "type"):
			typ := strings.TrimSpace(string(a.value))
			n.Object = typ[strings.LastIndexByte(typ, ':')+1:]
		case a.name.is(nsXSI, "nil"):
			null = isTrue(a.value)
		}
	}
	if null {
		// A nil sObject has no fields; it must still be closed properly.
		return s.skip()
	}
	return children(s, "sObject", func(t xtoken) error {
		if string(t.name.space) != nsSObject {
			return s.skip()
		}
		null := false
		for _, a := range t.attrs {
			if a.name.is(nsXSI, "nil") {
				null = isTrue(a.value)
			}
		}
		fieldName := string(t.name.local) // before next() reuses buffers
		v, simple, err := text(s, "")
		if err != nil || null || !simple {
			// Null, or a nested value (a relationship): not a field
			// this mapping can read.
			return err
		}
		if n.Fields == nil {
			n.Fields = make([]sfField, 0, 12)
		}
		n.Fields = append(n.Fields, sfField{Name: fieldName, Value: v})
		return nil
	})
}

// children reads the content of the current element up to its end tag:
// start is called for each child element and must consume it; text other
// than space is an error naming the element, in.
func children(s *scanner, in string, start func(t xtoken) error) error {
	for {
		t, err := s.next()
		if err != nil {
			return err
		}
		switch t.kind {
		case tokStart:
			if err := start(t); err != nil {
				return err
			}
		case tokEnd:
			return nil
		case tokText:
			if !isBlank(t.text) {
				return badEnvelope("text in %s", in)
			}
		}
	}
}

func isTrue(v []byte) bool {
	b, ok := parseBool(string(v))
	return ok && b
}

func isBlank(b []byte) bool {
	for _, c := range b {
		if !isSpace(c) {
			return false
		}
	}
	return true
}

// text reads character data up to the end of the current element. An
// element inside it makes the value not simple: it is skipped, or, when
// strict names the element, an error.
func text(s *scanner, strict string) (v string, simple bool, err error) {
	var more []byte // only when the value comes in several pieces
	pieces := 0
	simple = true
	for {
		t, err := s.next()
		if err != nil {
			return "", false, err
		}
		switch t.kind {
		case tokText:
			// t.text may alias the scanner's buffer: copy it now.
			switch pieces {
			case 0:
				v = string(t.text)
			case 1:
				more = append([]byte(v), t.text...)
			default:
				more = append(more, t.text...)
			}
			pieces++
		case tokStart:
			if strict != "" {
				return "", false, badEnvelope("element inside %s", strict)
			}
			simple = false
			if err := s.skip(); err != nil {
				return "", false, err
			}
		case tokEnd:
			if pieces > 1 {
				v = string(more)
			}
			return v, simple, nil
		}
	}
}

// faultEnvelope renders a SOAP 1.1 fault. code is "Client" or "Server";
// msg must not carry internal error text.
func faultEnvelope(code, msg string) []byte {
	var b bytes.Buffer
	b.WriteString(`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:`)
	b.WriteString(code)
	b.WriteString(`</faultcode><faultstring>`)
	_ = xml.EscapeText(&b, []byte(msg))
	b.WriteString(`</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>`)
	return b.Bytes()
}

// isSalesforceID checks the shape of a 15- or 18-character Id.
func isSalesforceID(s string) bool {
	if len(s) != 15 && len(s) != 18 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
