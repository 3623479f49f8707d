package guard_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nyaruka/phonenumbers"

	"github.com/consentguard/consentguard/guard"
)

// libE164 is what libphonenumber alone says: the reference for the fast path.
func libE164(s, region string) (string, bool) {
	n, err := phonenumbers.Parse(strings.TrimSpace(s), region)
	if err != nil || !phonenumbers.IsValidNumber(n) {
		return "", false
	}
	return phonenumbers.Format(n, phonenumbers.E164), true
}

// phoneInputs generates the shapes numbers take in CRM fields.
func phoneInputs(r *rand.Rand, n int) []string {
	prefixes := []string{"", "0", "0", "0", "+49 ", "+49", "0049 ", "0049", "+49 (0)", "+49(0)", "0049 (0) ", "+43 ", "0043 ", "+41 ", "0041", "+1 ", "+33 ", "0033 ", "+39 0", "+44 ", "00", "+", "(0)", "+490", "+49 0"}
	areas := []string{"211", "30", "89", "40", "221", "171", "151", "160", "1522", "176", "2233", "6221", "800", "180", "900", "1", "0", "2", "7", "44", "664", "676", "79", "44", "1234"}
	seps := []string{"", " ", "-", "/", ".", " / ", " - "}
	out := make([]string, 0, n)
	for range n {
		var b strings.Builder
		b.WriteString(prefixes[r.IntN(len(prefixes))])
		b.WriteString(areas[r.IntN(len(areas))])
		b.WriteString(seps[r.IntN(len(seps))])
		digits := 3 + r.IntN(9)
		for i := range digits {
			b.WriteByte(byte('0' + r.IntN(10)))
			if i > 0 && r.IntN(5) == 0 {
				b.WriteString(seps[r.IntN(len(seps))])
			}
		}
		switch r.IntN(20) {
		case 0:
			b.WriteString(" ext. 12")
		case 1:
			b.WriteString("a")
		case 2:
			s := b.String()
			b.Reset()
			b.WriteString("(" + s[:len(s)/2] + ")" + s[len(s)/2:])
		}
		out = append(out, b.String())
	}
	return out
}

func TestFastPhoneAgrees(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	inputs := append(phoneInputs(r, 6000),
		"0211 175403-22", "+49 (0)211 17540322", "0049211175403 22", "+49 211 17540322", "0171/1234567",
		"+49 (0) 30 1234567", "0049 (0)30 1234567", "030 (0) 1234567", "+43 1 5335050", "+41 44 668 18 00", "0800 1234567",
	)
	fast, agreed := 0, 0
	for _, in := range inputs {
		for _, region := range []string{"DE", "AT", "CH", "FR"} {
			want, wantOK := libE164(in, region)
			got, err := guard.ParsePhone(in, region)
			if wantOK != (err == nil) || wantOK && got.Value != want {
				t.Fatalf("ParsePhone(%q, %s) = %q, %v; libphonenumber says %q, %v", in, region, got.Value, err, want, wantOK)
			}
			agreed++
			if e, ok := guard.FastPhone(strings.TrimSpace(in), region); ok {
				fast++
				if e != want {
					t.Fatalf("fast path %q (%s) = %q, libphonenumber %q", in, region, e, want)
				}
			}
		}
	}
	t.Logf("%d inputs agree; fast path took %d", agreed, fast)
	if fast < agreed/10 {
		t.Fatalf("fast path took only %d of %d: it no longer covers common numbers", fast, agreed)
	}
}

func FuzzFastPhone(f *testing.F) {
	for _, s := range phoneInputs(rand.New(rand.NewPCG(3, 4)), 200) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, ok := guard.FastPhone(s, "DE")
		if !ok {
			return
		}
		want, wantOK := libE164(s, "DE")
		if !wantOK || want != e {
			t.Fatalf("fast path %q = %q; libphonenumber %q, %v", s, e, want, wantOK)
		}
	})
}

func BenchmarkParsePhone(b *testing.B) {
	for _, in := range []string{"0211 175403-22", "+49 (0)211 17540322", "+33 1 42 68 53 00"} {
		b.Run(fmt.Sprintf("%q", in), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := guard.ParsePhone(in, "DE"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
