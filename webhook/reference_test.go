package webhook

// The first decoder of this package, on encoding/xml, kept as a reference:
// FuzzDecodeOutbound checks that whatever the scanner-based decoder accepts,
// encoding/xml reads the same way.

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// decodeOutbound decodes a SOAP 1.1 notifications() envelope, every
// notification of it. Errors wrap errBadEnvelope and describe the input
// only.
func refDecodeOutbound(data []byte) (*outbound, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	root, err := refNextElement(d)
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
		tok, err := refToken(d)
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
				if msg, err = refDecodeBody(d); err != nil {
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
			if _, err := refNextElement(d); err != io.EOF {
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

func refDecodeBody(d *xml.Decoder) (*outbound, error) {
	var msg *outbound
	for {
		tok, err := refToken(d)
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Space != nsOutbound || t.Name.Local != "notifications" || msg != nil {
				return nil, badEnvelope("SOAP Body holds %s, want one notifications element", t.Name.Local)
			}
			if msg, err = refDecodeNotifications(d); err != nil {
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

func refDecodeNotifications(d *xml.Decoder) (*outbound, error) {
	msg := &outbound{}
	for {
		tok, err := refToken(d)
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
				n, err := refDecodeNotification(d)
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
			s, _, err := refText(d, t.Name.Local)
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

func refDecodeNotification(d *xml.Decoder) (notification, error) {
	var n notification
	sawObject := false
	for {
		tok, err := refToken(d)
		if err != nil {
			return n, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch {
			case t.Name.Space == nsOutbound && t.Name.Local == "Id":
				s, _, err := refText(d, "Id")
				if err != nil {
					return n, err
				}
				n.ID = strings.TrimSpace(s)
			case t.Name.Space == nsOutbound && t.Name.Local == "sObject":
				if sawObject {
					return n, badEnvelope("two sObjects")
				}
				sawObject = true
				if err := refDecodeSObject(d, t, &n); err != nil {
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
func refDecodeSObject(d *xml.Decoder, start xml.StartElement, n *notification) error {
	for _, a := range start.Attr {
		if a.Name.Space == nsXSI && a.Name.Local == "type" {
			typ := strings.TrimSpace(a.Value)
			n.Object = typ[strings.LastIndexByte(typ, ':')+1:]
		}
	}
	if refIsNil(start) {
		// A nil sObject has no fields; it must still be closed properly.
		if err := d.Skip(); err != nil {
			return badEnvelope("%v", err)
		}
		return nil
	}
	for {
		tok, err := refToken(d)
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
			null := refIsNil(t)
			s, simple, err := refText(d, "")
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

func refIsNil(e xml.StartElement) bool {
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
func refText(d *xml.Decoder, strict string) (s string, simple bool, err error) {
	var b []byte
	simple = true
	for {
		tok, err := refToken(d)
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
func refToken(d *xml.Decoder) (xml.Token, error) {
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
func refNextElement(d *xml.Decoder) (xml.StartElement, error) {
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
