package smtprelay

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// refLineWriter is the byte-at-a-time statement of what lineWriter does,
// kept to check the fast version against.
type refLineWriter struct {
	out   bytes.Buffer
	stuff bool
	bol   bool
	cr    bool
}

func (d *refLineWriter) Write(p []byte) {
	for _, c := range p {
		if d.cr {
			d.cr = false
			d.out.WriteString("\r\n")
			d.bol = true
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\r':
			d.cr = true
		case '\n':
			d.out.WriteString("\r\n")
			d.bol = true
		default:
			if d.stuff && d.bol && c == '.' {
				d.out.WriteByte('.')
			}
			d.out.WriteByte(c)
			d.bol = false
		}
	}
}

func (d *refLineWriter) finish() {
	if d.cr || !d.bol {
		d.out.WriteString("\r\n")
	}
}

// lineWrite runs data through a lineWriter in pieces cut at splits.
func lineWrite(tb testing.TB, data []byte, stuff bool, splits []int) (got, want string) {
	tb.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	lw := newLineWriter(bw, stuff)
	ref := &refLineWriter{stuff: stuff, bol: true}
	rest := data
	for _, n := range splits {
		if n > len(rest) {
			n = len(rest)
		}
		if n, err := lw.Write(rest[:n]); err != nil || n != len(rest[:n]) {
			tb.Fatalf("Write: %d, %v", n, err)
		}
		ref.Write(rest[:n])
		rest = rest[n:]
	}
	lw.Write(rest)
	ref.Write(rest)
	lw.finish()
	ref.finish()
	bw.Flush()
	return out.String(), ref.out.String()
}

func TestLineWriter(t *testing.T) {
	cases := []string{
		"", "a", ".", "\r", "\n", "\r\n", ".\r\n", "..\r\n", "\r\r\n", "\n\r", "\r\n.",
		"Subject: x\r\n\r\nbody\r\n.\r\n..x\r\n",
		"bare lf\n.\nsmuggled\r\n.\r\nend",
		"bare cr\r.\rx", "a\rb\r\n", "\r\n\r\n\r\n", ".a\n.b\r.c\r\n.d",
	}
	for _, c := range cases {
		for _, stuff := range []bool{true, false} {
			for split := 0; split <= len(c); split++ {
				got, want := lineWrite(t, []byte(c), stuff, []int{split, 1, 2})
				if got != want {
					t.Errorf("%q (stuff %v, split %d): got %q, want %q", c, stuff, split, got, want)
				}
			}
		}
	}
	// A CRLF message without leading dots passes unchanged.
	msg := strings.Repeat("Liebe Kundin, lieber Kunde.\r\n", 100)
	if got, _ := lineWrite(t, []byte(msg), true, nil); got != msg {
		t.Errorf("CRLF message changed")
	}
}

func FuzzLineWriter(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n.body\n.\n\r.\r\r\n"), true, uint8(3), uint8(7))
	f.Add([]byte("a\r"), false, uint8(1), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, stuff bool, s1, s2 uint8) {
		got, want := lineWrite(t, data, stuff, []int{int(s1), int(s2), int(s1) + int(s2)})
		if got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}
