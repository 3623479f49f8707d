package webhook

import (
	"bytes"
	"fmt"
	"io"
	"unicode/utf8"
)

// This file is a small, strict XML 1.0 + Namespaces tokenizer for the one
// document shape the outbound endpoint reads. encoding/xml spends most of a
// 100-notification POST's CPU time in its byte-at-a-time reader; this
// scanner works on the whole body in memory and allocates only for the
// strings the decoder keeps.
//
// It enforces what matters for reading a SOAP envelope safely and
// unambiguously: UTF-8 only (an XML declaration naming another encoding is
// refused), no DTD (so no entity expansion), the five predefined and numeric
// character references only, matching end tags, unique attributes, bound
// namespace prefixes, XML character ranges, one root element, a depth limit.
// Line ends are normalised (\r\n and \r become \n) and attribute values
// whitespace-normalised as XML requires.

// Limits on a document's shape, far above what Salesforce sends.
const (
	maxDepth = 64 // element nesting
	maxAttrs = 64 // attributes (namespace declarations included) per element
)

type tokKind uint8

const (
	tokStart tokKind = iota + 1
	tokEnd
	tokText
)

// xname is an expanded name: namespace URI and local part. Both alias the
// document or the scanner's namespace table; compare them with string(...)
// == constant, which does not allocate.
type xname struct {
	space, local []byte
}

func (n xname) is(space, local string) bool {
	return string(n.space) == space && string(n.local) == local
}

type xattr struct {
	name  xname
	value []byte
}

// xtoken is one token. Its slices are valid until the next call to next.
type xtoken struct {
	kind  tokKind
	name  xname   // tokStart, tokEnd
	attrs []xattr // tokStart, namespace declarations left out
	text  []byte  // tokText
}

type nsBinding struct {
	prefix, uri []byte
}

type openElem struct {
	qname []byte // as written, to match the end tag
	name  xname
	nsLen int // len(scanner.ns) before this element's declarations
}

type scanner struct {
	data       []byte
	pos        int
	open       []openElem
	ns         []nsBinding
	pendingEnd bool // the last start tag was self-closing
	rootDone   bool
	attrs      []xattr
	raw        []rawAttr
	buf        []byte // decoded text when references or \r occur
}

type rawAttr struct {
	prefix, local, value []byte
}

var (
	xmlNS      = []byte("http://www.w3.org/XML/1998/namespace")
	bom        = []byte{0xEF, 0xBB, 0xBF}
	xmlnsBytes = []byte("xmlns")
)

func newScanner(data []byte) *scanner {
	s := &scanner{data: data}
	if bytes.HasPrefix(data, bom) {
		s.pos = len(bom)
	}
	return s
}

func (s *scanner) errorf(format string, args ...any) error {
	return badEnvelope("XML syntax error at byte %d: %s", s.pos, fmt.Sprintf(format, args...))
}

// next returns the next start tag, end tag or text, skipping comments and
// processing instructions. At the end of a complete document it returns
// io.EOF.
func (s *scanner) next() (xtoken, error) {
	if s.pendingEnd {
		s.pendingEnd = false
		return s.pop(), nil
	}
	for {
		if s.pos >= len(s.data) {
			if len(s.open) > 0 {
				return xtoken{}, s.errorf("unexpected end of document")
			}
			if !s.rootDone {
				return xtoken{}, s.errorf("no root element")
			}
			return xtoken{}, io.EOF
		}
		rest := s.data[s.pos:]
		if rest[0] != '<' {
			if len(s.open) == 0 {
				for s.pos < len(s.data) && isSpace(s.data[s.pos]) {
					s.pos++
				}
				if s.pos < len(s.data) && s.data[s.pos] != '<' {
					return xtoken{}, s.errorf("text outside the root element")
				}
				continue
			}
			t, err := s.text()
			return xtoken{kind: tokText, text: t}, err
		}
		switch {
		case bytes.HasPrefix(rest, []byte("<?")):
			if err := s.procInst(); err != nil {
				return xtoken{}, err
			}
		case bytes.HasPrefix(rest, []byte("<!--")):
			end := bytes.Index(rest[4:], []byte("-->"))
			if end < 0 {
				return xtoken{}, s.errorf("unterminated comment")
			}
			if err := s.checkChars(rest[4 : 4+end]); err != nil {
				return xtoken{}, err
			}
			s.pos += 4 + end + 3
		case bytes.HasPrefix(rest, []byte("<![CDATA[")):
			if len(s.open) == 0 {
				return xtoken{}, s.errorf("CDATA outside the root element")
			}
			end := bytes.Index(rest[9:], []byte("]]>"))
			if end < 0 {
				return xtoken{}, s.errorf("unterminated CDATA section")
			}
			raw := rest[9 : 9+end]
			if err := s.checkChars(raw); err != nil {
				return xtoken{}, err
			}
			s.pos += 9 + end + 3
			return xtoken{kind: tokText, text: s.normalizeNewlines(raw)}, nil
		case bytes.HasPrefix(rest, []byte("<!")):
			return xtoken{}, s.errorf("DTDs are not allowed")
		case bytes.HasPrefix(rest, []byte("</")):
			return s.endTag()
		default:
			if s.rootDone && len(s.open) == 0 {
				return xtoken{}, s.errorf("content after the root element")
			}
			return s.startTag()
		}
	}
}

// skip consumes tokens up to and including the end of the element whose
// start tag was just returned.
func (s *scanner) skip() error {
	depth := 1
	for depth > 0 {
		t, err := s.next()
		if err != nil {
			if err == io.EOF {
				return s.errorf("unexpected end of document")
			}
			return err
		}
		switch t.kind {
		case tokStart:
			depth++
		case tokEnd:
			depth--
		}
	}
	return nil
}

func (s *scanner) procInst() error {
	start := s.pos
	end := bytes.Index(s.data[s.pos+2:], []byte("?>"))
	if end < 0 {
		return s.errorf("unterminated processing instruction")
	}
	body := s.data[s.pos+2 : s.pos+2+end]
	if err := s.checkChars(body); err != nil {
		return err
	}
	s.pos += 2 + end + 2
	target := body
	if i := bytes.IndexFunc(body, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }); i >= 0 {
		target = body[:i]
	}
	if !isName(target) {
		return s.errorf("processing instruction target is not a name")
	}
	if !bytes.EqualFold(target, []byte("xml")) {
		return nil
	}
	if string(target) != "xml" || !(start == 0 || start == len(bom) && bytes.HasPrefix(s.data, bom)) {
		return s.errorf("misplaced XML declaration")
	}
	// encoding="…": only UTF-8 is read.
	if i := bytes.Index(body, []byte("encoding")); i >= 0 {
		v := bytes.TrimLeft(body[i+len("encoding"):], " \t\r\n")
		if len(v) == 0 || v[0] != '=' {
			return s.errorf("bad XML declaration")
		}
		v = bytes.TrimLeft(v[1:], " \t\r\n")
		if len(v) < 2 || (v[0] != '"' && v[0] != '\'') {
			return s.errorf("bad XML declaration")
		}
		q := bytes.IndexByte(v[1:], v[0])
		if q < 0 {
			return s.errorf("bad XML declaration")
		}
		if enc := v[1 : 1+q]; !bytes.EqualFold(enc, []byte("utf-8")) {
			return s.errorf("encoding %q not supported (UTF-8 only)", enc)
		}
	}
	return nil
}

// name reads a qualified name at s.pos and splits it at its colon.
func (s *scanner) name() (qname, prefix, local []byte, err error) {
	start := s.pos
	colon := -1
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '_':
			s.pos++
		case '0' <= c && c <= '9', c == '-', c == '.':
			if s.pos == start || s.pos == colon+1 {
				return nil, nil, nil, s.errorf("invalid name")
			}
			s.pos++
		case c == ':':
			if colon >= 0 || s.pos == start {
				return nil, nil, nil, s.errorf("invalid name")
			}
			colon = s.pos
			s.pos++
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError || !isNameRune(r) {
				return nil, nil, nil, s.errorf("invalid name")
			}
			s.pos += n
		default:
			goto done
		}
	}
done:
	qname = s.data[start:s.pos]
	if len(qname) == 0 || colon == s.pos-1 {
		return nil, nil, nil, s.errorf("invalid name")
	}
	if colon < 0 {
		return qname, nil, qname, nil
	}
	return qname, s.data[start:colon], s.data[colon+1 : s.pos], nil
}

func (s *scanner) skipSpace() bool {
	start := s.pos
	for s.pos < len(s.data) && isSpace(s.data[s.pos]) {
		s.pos++
	}
	return s.pos > start
}

func (s *scanner) startTag() (xtoken, error) {
	if len(s.open) >= maxDepth {
		return xtoken{}, s.errorf("elements nested deeper than %d", maxDepth)
	}
	s.pos++ // '<'
	qname, prefix, local, err := s.name()
	if err != nil {
		return xtoken{}, err
	}
	nsLen := len(s.ns)
	s.raw = s.raw[:0]
	selfClose := false
	for {
		sp := s.skipSpace()
		if s.pos >= len(s.data) {
			return xtoken{}, s.errorf("unexpected end of document in a tag")
		}
		c := s.data[s.pos]
		if c == '>' {
			s.pos++
			break
		}
		if c == '/' {
			if s.pos+1 >= len(s.data) || s.data[s.pos+1] != '>' {
				return xtoken{}, s.errorf("expected /> ")
			}
			s.pos += 2
			selfClose = true
			break
		}
		if !sp {
			return xtoken{}, s.errorf("attributes must be separated by space")
		}
		if len(s.raw) == maxAttrs {
			return xtoken{}, s.errorf("more than %d attributes", maxAttrs)
		}
		_, ap, al, err := s.name()
		if err != nil {
			return xtoken{}, err
		}
		s.skipSpace()
		if s.pos >= len(s.data) || s.data[s.pos] != '=' {
			return xtoken{}, s.errorf("attribute without value")
		}
		s.pos++
		s.skipSpace()
		v, err := s.attrValue()
		if err != nil {
			return xtoken{}, err
		}
		for _, a := range s.raw {
			if bytes.Equal(a.prefix, ap) && bytes.Equal(a.local, al) {
				return xtoken{}, s.errorf("duplicate attribute")
			}
		}
		switch {
		case ap == nil && bytes.Equal(al, xmlnsBytes):
			s.ns = append(s.ns, nsBinding{prefix: nil, uri: v})
		case bytes.Equal(ap, xmlnsBytes):
			if len(v) == 0 || bytes.Equal(al, xmlnsBytes) || bytes.Equal(al, []byte("xml")) {
				return xtoken{}, s.errorf("invalid namespace declaration")
			}
			s.ns = append(s.ns, nsBinding{prefix: al, uri: v})
		}
		s.raw = append(s.raw, rawAttr{prefix: ap, local: al, value: v})
	}
	space, ok := s.resolve(prefix, true)
	if !ok {
		return xtoken{}, s.errorf("unbound namespace prefix %q", Printable(string(prefix), 20))
	}
	name := xname{space: space, local: local}
	s.attrs = s.attrs[:0]
	for _, a := range s.raw {
		if (a.prefix == nil && bytes.Equal(a.local, xmlnsBytes)) || bytes.Equal(a.prefix, xmlnsBytes) {
			continue
		}
		var sp []byte
		if a.prefix != nil {
			if sp, ok = s.resolve(a.prefix, false); !ok {
				return xtoken{}, s.errorf("unbound namespace prefix %q", Printable(string(a.prefix), 20))
			}
		}
		s.attrs = append(s.attrs, xattr{name: xname{space: sp, local: a.local}, value: a.value})
	}
	s.open = append(s.open, openElem{qname: qname, name: name, nsLen: nsLen})
	if selfClose {
		s.pendingEnd = true
	}
	return xtoken{kind: tokStart, name: name, attrs: s.attrs}, nil
}

// resolve maps a prefix to its namespace URI; the empty prefix gives the
// default namespace for elements and no namespace for attributes.
func (s *scanner) resolve(prefix []byte, element bool) ([]byte, bool) {
	if prefix == nil && !element {
		return nil, true
	}
	if bytes.Equal(prefix, []byte("xml")) {
		return xmlNS, true
	}
	for i := len(s.ns) - 1; i >= 0; i-- {
		if bytes.Equal(s.ns[i].prefix, prefix) && (s.ns[i].prefix == nil) == (prefix == nil) {
			return s.ns[i].uri, true
		}
	}
	return nil, prefix == nil
}

func (s *scanner) endTag() (xtoken, error) {
	s.pos += 2 // "</"
	qname, _, _, err := s.name()
	if err != nil {
		return xtoken{}, err
	}
	s.skipSpace()
	if s.pos >= len(s.data) || s.data[s.pos] != '>' {
		return xtoken{}, s.errorf("bad end tag")
	}
	s.pos++
	if len(s.open) == 0 || !bytes.Equal(s.open[len(s.open)-1].qname, qname) {
		return xtoken{}, s.errorf("end tag does not match its start tag")
	}
	return s.pop(), nil
}

func (s *scanner) pop() xtoken {
	e := s.open[len(s.open)-1]
	s.open = s.open[:len(s.open)-1]
	s.ns = s.ns[:e.nsLen]
	if len(s.open) == 0 {
		s.rootDone = true
	}
	return xtoken{kind: tokEnd, name: e.name}
}

// attrValue reads a quoted attribute value, resolving references and
// normalising whitespace characters to spaces.
func (s *scanner) attrValue() ([]byte, error) {
	if s.pos >= len(s.data) || (s.data[s.pos] != '"' && s.data[s.pos] != '\'') {
		return nil, s.errorf("attribute value must be quoted")
	}
	q := s.data[s.pos]
	s.pos++
	end := bytes.IndexByte(s.data[s.pos:], q)
	if end < 0 {
		return nil, s.errorf("unterminated attribute value")
	}
	raw := s.data[s.pos : s.pos+end]
	if bytes.IndexByte(raw, '<') >= 0 {
		return nil, s.errorf("< in attribute value")
	}
	if err := s.checkChars(raw); err != nil {
		return nil, err
	}
	plain := bytes.IndexAny(raw, "&\t\r\n") < 0
	s.pos += end + 1
	if plain {
		return raw, nil
	}
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch c {
		case '&':
			r, n, ok := reference(raw[i:])
			if !ok {
				return nil, s.errorf("invalid reference in attribute value")
			}
			out = utf8.AppendRune(out, r)
			i += n - 1
		case '\r':
			if i+1 < len(raw) && raw[i+1] == '\n' {
				i++
			}
			out = append(out, ' ')
		case '\t', '\n':
			out = append(out, ' ')
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

// text reads character data up to the next '<'.
func (s *scanner) text() ([]byte, error) {
	start := s.pos
	plain := true
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		if c == '<' {
			break
		}
		if c == '&' || c == '\r' {
			plain = false
		}
		if c == '>' && s.pos >= start+2 && s.data[s.pos-1] == ']' && s.data[s.pos-2] == ']' {
			return nil, s.errorf("]]> in text")
		}
		s.pos++
	}
	raw := s.data[start:s.pos]
	if err := s.checkChars(raw); err != nil {
		return nil, err
	}
	if plain {
		return raw, nil
	}
	s.buf = s.buf[:0]
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch c {
		case '&':
			r, n, ok := reference(raw[i:])
			if !ok {
				return nil, s.errorf("invalid character or entity reference")
			}
			s.buf = utf8.AppendRune(s.buf, r)
			i += n - 1
		case '\r':
			if i+1 < len(raw) && raw[i+1] == '\n' {
				i++
			}
			s.buf = append(s.buf, '\n')
		default:
			s.buf = append(s.buf, c)
		}
	}
	return s.buf, nil
}

// normalizeNewlines turns \r\n and \r into \n (CDATA content).
func (s *scanner) normalizeNewlines(raw []byte) []byte {
	if bytes.IndexByte(raw, '\r') < 0 {
		return raw
	}
	s.buf = s.buf[:0]
	for i := 0; i < len(raw); i++ {
		if raw[i] == '\r' {
			if i+1 < len(raw) && raw[i+1] == '\n' {
				i++
			}
			s.buf = append(s.buf, '\n')
			continue
		}
		s.buf = append(s.buf, raw[i])
	}
	return s.buf
}

// checkChars refuses invalid UTF-8 and characters outside XML's Char
// production.
func (s *scanner) checkChars(b []byte) error {
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			if c < 0x20 && c != '\t' && c != '\n' && c != '\r' {
				return s.errorf("control character in document")
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return s.errorf("invalid UTF-8")
		}
		if !isXMLChar(r) {
			return s.errorf("character U+%04X not allowed in XML", r)
		}
		i += n
	}
	return nil
}

// reference decodes a character or predefined entity reference at the
// start of b ("&amp;", "&#233;", "&#xE9;") and returns its length.
func reference(b []byte) (r rune, n int, ok bool) {
	end := bytes.IndexByte(b, ';')
	if end < 2 || end > 12 {
		return 0, 0, false
	}
	name := b[1:end]
	switch string(name) {
	case "lt":
		return '<', end + 1, true
	case "gt":
		return '>', end + 1, true
	case "amp":
		return '&', end + 1, true
	case "apos":
		return '\'', end + 1, true
	case "quot":
		return '"', end + 1, true
	}
	if name[0] != '#' || len(name) < 2 {
		return 0, 0, false
	}
	digits, base := name[1:], rune(10)
	if digits[0] == 'x' {
		digits, base = digits[1:], 16
	}
	if len(digits) == 0 {
		return 0, 0, false
	}
	for _, d := range digits {
		var v rune
		switch {
		case '0' <= d && d <= '9':
			v = rune(d - '0')
		case base == 16 && 'a' <= d && d <= 'f':
			v = rune(d-'a') + 10
		case base == 16 && 'A' <= d && d <= 'F':
			v = rune(d-'A') + 10
		default:
			return 0, 0, false
		}
		r = r*base + v
		if r > utf8.MaxRune {
			return 0, 0, false
		}
	}
	if !isXMLChar(r) {
		return 0, 0, false
	}
	return r, end + 1, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// isXMLChar is XML 1.0's Char production.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}

// isNameRune accepts the non-ASCII characters XML allows in names (a
// simplification of NameChar: every non-ASCII Char except a few
// separators).
func isNameRune(r rune) bool {
	switch {
	case r == 0xB7, r >= 0xC0 && r <= 0x37D && r != 0xD7 && r != 0xF7,
		r >= 0x37F && r <= 0x1FFF, r == 0x200C, r == 0x200D, r == 0x203F, r == 0x2040,
		r >= 0x2070 && r <= 0x218F, r >= 0x2C00 && r <= 0x2FEF, r >= 0x3001 && r <= 0xD7FF,
		r >= 0xF900 && r <= 0xFDCF, r >= 0xFDF0 && r <= 0xFFFD, r >= 0x10000 && r <= 0xEFFFF:
		return true
	}
	return false
}

// isName checks an XML Name without colons (a PI target).
func isName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '_':
			i++
		case '0' <= c && c <= '9', c == '-', c == '.':
			if i == 0 {
				return false
			}
			i++
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError || !isNameRune(r) {
				return false
			}
			i += n
		default:
			return false
		}
	}
	return true
}
