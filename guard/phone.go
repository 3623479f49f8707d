package guard

import (
	"strconv"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// fastRegions are the regions whose plain numbers fastPhone reads itself:
// international prefix "00", national (trunk) prefix "0", no carrier codes
// or prefix rewriting. For anything else libphonenumber parses.
var fastRegions = map[string]int32{"DE": 49, "AT": 43, "CH": 41}

// fastCountry reports whether a country calling code is one of fastRegions'.
func fastCountry(cc int32) bool { return cc == 49 || cc == 43 || cc == 41 }

// fastPhone normalises the common shapes of German, Austrian and Swiss
// numbers without libphonenumber's parser (which spends ~11 µs in regular
// expressions per number): digits with spaces, '-', '/', '.', an optional
// leading "+CC" or "00CC", an optional "(0)" right after the country code,
// or a national number with trunk prefix "0". Validity is still decided by
// phonenumbers.IsValidNumber. ok is false whenever the input is anything
// else or the number is not valid; the caller then asks libphonenumber, so
// the fast path can change speed but never a result (TestFastPhoneAgrees
// and FuzzFastPhone compare it with the library).
func fastPhone(s, region string) (e164 string, ok bool) {
	cc0, fast := fastRegions[region]
	if !fast || len(s) < 4 || len(s) > 40 {
		return "", false
	}
	var buf [24]byte
	d := buf[:0]
	plus := false
	zeroParen := false // "(0)" seen
	parenAt := 0       // digits before it
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			if len(d) == len(buf) {
				return "", false
			}
			d = append(d, c)
		case c == ' ' || c == '-' || c == '/' || c == '.':
		case c == '+' && i == 0:
			plus = true
		case c == '(' && !zeroParen && strings.HasPrefix(s[i:], "(0)"):
			zeroParen, parenAt = true, len(d)
			i += 2
		default:
			return "", false
		}
	}
	var cc int32
	var nsn []byte
	switch {
	case plus || len(d) > 2 && d[0] == '0' && d[1] == '0':
		if !plus {
			d = d[2:]
			parenAt -= 2
		}
		if len(d) == 0 || d[0] == '0' {
			return "", false // country codes never start with 0
		}
		n := 0
		for n = 1; n <= 3 && n <= len(d); n++ {
			v, _ := strconv.Atoi(string(d[:n]))
			if phonenumbers.GetRegionCodeForCountryCode(v) != "ZZ" {
				cc = int32(v)
				break
			}
		}
		if cc == 0 || !fastCountry(cc) {
			return "", false
		}
		// "(0)" only directly after the country code: "+49 (0)211".
		if zeroParen && parenAt != n {
			return "", false
		}
		nsn = d[n:]
	case zeroParen:
		return "", false
	case len(d) > 1 && d[0] == '0' && d[1] != '0':
		cc, nsn = cc0, d[1:]
	default:
		return "", false
	}
	if len(nsn) < 4 || len(nsn) > 15 || nsn[0] == '0' {
		return "", false
	}
	nn, err := strconv.ParseUint(string(nsn), 10, 64)
	if err != nil {
		return "", false
	}
	num := &phonenumbers.PhoneNumber{CountryCode: &cc, NationalNumber: &nn}
	if !phonenumbers.IsValidNumber(num) {
		return "", false
	}
	return "+" + strconv.Itoa(int(cc)) + string(nsn), true
}
