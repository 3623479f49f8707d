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
	d := xml.NewDecoder(bytes.NewReader(data))
	root, err := nextElement(d)
	if err == io.EOF {
		return nil, badEnvelope("empty body")
	}
	if err != nil {
		return nil, err
	}
	if root.Name.Space != nsEnvelope || root.Name.Local != "Envelope" {
		return nil, badEnvelope("root element is not a SOAP 1.1 Envelope")
	}
	var msg *outbound
	for {
		tok, err := token(d)
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch {
			case t.Name.Space == nsEnvelope && t.Name.Local == "Body":
				if msg != nil {
					return nil, badEnvelope("two SOAP Bodies")
				}
				if msg, err = decodeBody(d); err != nil {
					return nil, err
				}
			case t.Name.Space == nsEnvelope && t.Name.Local == "Header" && msg == nil:
				if err := d.Skip(); err != nil {
					return nil, badEnvelope("%v", err)
				}
			default:
				return nil, badEnvelope("unexpected element %s in Envelope", t.Name.Local)
			}
		case xml.EndElement:
			if msg == nil {
				return nil, badEnvelope("no SOAP Body")
			}
			// Nothing but comments and space may follow the Envelope.
			if _, err := nextElement(d); err != io.EOF {
				return nil, badEnvelope("content after the Envelope")
			}
			return msg, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return nil, badEnvelope("text in Envelope")
			}
		}
	}
}

func decodeBody(d *xml.Decoder) (*outbound, error) {
	var msg *outbound
	for {
		tok, err := token(d)
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Space != nsOutbound || t.Name.Local != "notifications" || msg != nil {
				return nil, badEnvelope("SOAP Body holds %s, want one notifications element", t.Name.Local)
			}
			if msg, err = decodeNotifications(d); err != nil {
				return nil, err
			}
		case xml.EndElement:
			if msg == nil {
				return nil, badEnvelope("SOAP Body holds no notifications element")
			}
			return msg, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return nil, badEnvelope("text in SOAP Body")
			}
		}
	}
}

func decodeNotifications(d *xml.Decoder) (*outbound, error) {
	msg := &outbound{}
	for {
		tok, err := token(d)
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Space != nsOutbound {
				// Not part of the WSDL: ignore, for forward compatibility.
				if err := d.Skip(); err != nil {
					return nil, badEnvelope("%v", err)
				}
				continue
			}
			var dst *string
			switch t.Name.Local {
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
					return nil, badEnvelope("more than %d notifications", MaxNotifications)
				}
				n, err := decodeNotification(d)
				if err != nil {
					return nil, fmt.Errorf("notification %d: %w", len(msg.Notifications)+1, err)
				}
				msg.Notifications = append(msg.Notifications, n)
				continue
			default: // SessionId (a credential: never kept) and anything newer
				if err := d.Skip(); err != nil {
					return nil, badEnvelope("%v", err)
				}
				continue
			}
			s, _, err := text(d, t.Name.Local)
			if err != nil {
				return nil, err
			}
			*dst = strings.TrimSpace(s)
		case xml.EndElement:
			if !isSalesforceID(msg.OrganizationID) {
				return nil, badEnvelope("OrganizationId missing or not a Salesforce Id")
			}
			if len(msg.Notifications) == 0 {
				return nil, badEnvelope("no Notification")
			}
			return msg, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return nil, badEnvelope("text in notifications")
			}
		}
	}
}

func decodeNotification(d *xml.Decoder) (notification, error) {
	var n notification
	sawObject := false
	for {
		tok, err := token(d)
		if err != nil {
			return n, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch {
			case t.Name.Space == nsOutbound && t.Name.Local == "Id":
				s, _, err := text(d, "Id")
				if err != nil {
					return n, err
				}
				n.ID = strings.TrimSpace(s)
			case t.Name.Space == nsOutbound && t.Name.Local == "sObject":
				if sawObject {
					return n, badEnvelope("two sObjects")
				}
				sawObject = true
				if err := decodeSObject(d, t, &n); err != nil {
					return n, err
				}
			default:
				if err := d.Skip(); err != nil {
					return n, badEnvelope("%v", err)
				}
			}
		case xml.EndElement:
			if !isSalesforceID(n.ID) {
				return n, badEnvelope("notification Id missing or not a Salesforce Id")
			}
			return n, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return n, badEnvelope("text in Notification")
			}
		}
	}
}

// decodeSObject reads the fields of an sObject. Its type is the local part
// of xsi:type ("sf:Contact" → "Contact"); whatever prefix the sender bound
// is not looked at.
func decodeSObject(d *xml.Decoder, start xml.StartElement, n *notification) error {
	for _, a := range start.Attr {
		if a.Name.Space == nsXSI && a.Name.Local == "type" {
			typ := strings.TrimSpace(a.Value)
			n.Object = typ[strings.LastIndexByte(typ, ':')+1:]
		}
	}
	if isNil(start) {
		// A nil sObject has no fields; it must still be closed properly.
		if err := d.Skip(); err != nil {
			return badEnvelope("%v", err)
		}
		return nil
	}
	for {
		tok, err := token(d)
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Space != nsSObject {
				if err := d.Skip(); err != nil {
					return badEnvelope("%v", err)
				}
				continue
			}
			null := isNil(t)
			s, simple, err := text(d, "")
			if err != nil {
				return err
			}
			if null || !simple {
				// Null, or a nested value (a relationship): not a field
				// this mapping can read.
				continue
			}
			n.Fields = append(n.Fields, sfField{Name: t.Name.Local, Value: s})
		case xml.EndElement:
			return nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return badEnvelope("text in sObject")
			}
		}
	}
}

func isNil(e xml.StartElement) bool {
	for _, a := range e.Attr {
		if a.Name.Space == nsXSI && a.Name.Local == "nil" {
			v, ok := parseBool(a.Value)
			return ok && v
		}
	}
	return false
}

// text reads character data up to the end of the current element. An
// element inside it makes the value not simple: it is skipped, or, when
// strict names the element, an error.
func text(d *xml.Decoder, strict string) (s string, simple bool, err error) {
	var b []byte
	simple = true
	for {
		tok, err := token(d)
		if err != nil {
			return "", false, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			b = append(b, t...)
		case xml.StartElement:
			if strict != "" {
				return "", false, badEnvelope("element inside %s", strict)
			}
			simple = false
			if err := d.Skip(); err != nil {
				return "", false, badEnvelope("%v", err)
			}
		case xml.EndElement:
			return string(b), simple, nil
		}
	}
}

// token returns the next token, dropping comments and processing
// instructions and refusing DTDs.
func token(d *xml.Decoder) (xml.Token, error) {
	for {
		tok, err := d.Token()
		if err != nil {
			if err == io.EOF {
				return nil, badEnvelope("unexpected end of document")
			}
			return nil, badEnvelope("%v", err)
		}
		switch tok.(type) {
		case xml.Comment, xml.ProcInst:
			continue
		case xml.Directive:
			return nil, badEnvelope("DTDs are not allowed")
		}
		return tok, nil
	}
}

// nextElement returns the next start element at the top level, skipping
// the XML declaration, comments and space; io.EOF at the end.
func nextElement(d *xml.Decoder) (xml.StartElement, error) {
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return xml.StartElement{}, io.EOF
		}
		if err != nil {
			return xml.StartElement{}, badEnvelope("%v", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return t, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) > 0 {
				return xml.StartElement{}, badEnvelope("text outside the Envelope")
			}
		case xml.Directive:
			return xml.StartElement{}, badEnvelope("DTDs are not allowed")
		case xml.EndElement:
			return xml.StartElement{}, badEnvelope("unbalanced end tag")
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
