package smtprelay

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// mustArgon2id hashes pass in the PHC string format with a random salt.
func mustArgon2id(tb testing.TB, pass string, m, t uint32, p uint8) string {
	tb.Helper()
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		tb.Fatal(err)
	}
	key := argon2.IDKey([]byte(pass), salt, t, m, p, 32)
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", m, t, p,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

func TestParseArgon2id(t *testing.T) {
	salt := base64.RawStdEncoding.EncodeToString([]byte("0123456789abcdef"))
	key := base64.RawStdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	phc := func(head, params string) string { return head + "$" + params + "$" + salt + "$" + key }
	cases := []struct {
		name, hash string
		ok         bool
	}{
		{"recommended", phc("$argon2id$v=19", "m=65536,t=3,p=2"), true},
		{"parameters in any order", phc("$argon2id$v=19", "p=1,t=1,m=8"), true},
		{"padded base64", "$argon2id$v=19$m=64,t=1,p=1$" + base64.StdEncoding.EncodeToString([]byte("0123456789abcde")) + "$" + key, true},
		{"at the limits", phc("$argon2id$v=19", "m=1048576,t=16,p=16"), true},
		{"argon2i", phc("$argon2i$v=19", "m=65536,t=3,p=2"), false},
		{"argon2d", phc("$argon2d$v=19", "m=65536,t=3,p=2"), false},
		{"old version", phc("$argon2id$v=16", "m=65536,t=3,p=2"), false},
		{"no version", "$argon2id$m=65536,t=3,p=2$" + salt + "$" + key, false},
		{"p missing", phc("$argon2id$v=19", "m=65536,t=3"), false},
		{"unknown parameter", phc("$argon2id$v=19", "m=65536,t=3,p=2,x=1"), false},
		{"memory absurd", phc("$argon2id$v=19", "m=4294967295,t=3,p=2"), false},
		{"memory over 1 GiB", phc("$argon2id$v=19", "m=1048577,t=3,p=2"), false},
		{"memory below 8 p", phc("$argon2id$v=19", "m=15,t=1,p=2"), false},
		{"time zero", phc("$argon2id$v=19", "m=65536,t=0,p=2"), false},
		{"time absurd", phc("$argon2id$v=19", "m=65536,t=1000000,p=2"), false},
		{"threads zero", phc("$argon2id$v=19", "m=65536,t=3,p=0"), false},
		{"threads over 16", phc("$argon2id$v=19", "m=65536,t=3,p=17"), false},
		{"threads over 255", phc("$argon2id$v=19", "m=65536,t=3,p=256"), false},
		{"negative", phc("$argon2id$v=19", "m=-1,t=3,p=2"), false},
		{"short salt", "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$" + key, false},
		{"short hash", "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$c2hvcnQ", false},
		{"bad base64", "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$!!!!" + key, false},
		{"extra field", phc("$argon2id$v=19", "m=64,t=1,p=1") + "$x", false},
		{"empty", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseArgon2id(c.hash)
			if (err == nil) != c.ok {
				t.Fatalf("parseArgon2id(%q) = %v, want ok=%v", c.hash, err, c.ok)
			}
			if err != nil && !errors.Is(err, errArgon2) {
				t.Errorf("error %v does not wrap errArgon2", err)
			}
		})
	}
}

func TestCredentialMatches(t *testing.T) {
	slots := make(chan struct{}, 1)
	bc, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	other := mustArgon2id(t, "s3cret", 64, 1, 1)
	cases := []struct {
		name, hash, pass string
		want             bool
	}{
		{"argon2id generated here", mustArgon2id(t, "s3cret", 256, 2, 2), "s3cret", true},
		{"argon2id wrong password", mustArgon2id(t, "s3cret", 256, 2, 2), "s3cret ", false},
		{"argon2id empty password", mustArgon2id(t, "s3cret", 64, 1, 1), "", false},
		// Written by the reference implementation (Debian's argon2 CLI):
		// echo -n s3cret | argon2 consentguardsalt -id -t 2 -m 10 -p 2 -e
		{"argon2 CLI", "$argon2id$v=19$m=1024,t=2,p=2$Y29uc2VudGd1YXJkc2FsdA$5cyLLnvrCNrTrewve8FTUstqohqDsRtZzbuez4mvbGk", "s3cret", true},
		{"argon2 CLI wrong password", "$argon2id$v=19$m=1024,t=2,p=2$Y29uc2VudGd1YXJkc2FsdA$5cyLLnvrCNrTrewve8FTUstqohqDsRtZzbuez4mvbGk", "S3cret", false},
		{"argon2id other parameters", strings.Replace(other, "t=1", "t=2", 1), "s3cret", false},
		{"bcrypt", string(bc), "s3cret", true},
		{"bcrypt wrong password", string(bc), "wrong", false},
		{"argon2id absurd memory", "$argon2id$v=19$m=4194304,t=3,p=2$Y29uc2VudGd1YXJkc2FsdA$5cyLLnvrCNrTrewve8FTUstqohqDsRtZzbuez4mvbGk", "s3cret", false},
		{"plain text is not a hash", "s3cret", "s3cret", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := parseCredential(c.hash).matches(c.pass, slots); got != c.want {
				t.Errorf("matches = %v, want %v", got, c.want)
			}
		})
	}
}

// TestDummyCredentialMatchesTheConfiguredKind: an unknown user costs as
// much as a known one, whichever kind of hash is configured.
func TestDummyCredentialMatchesTheConfiguredKind(t *testing.T) {
	a := parseCredential(mustArgon2id(t, "x", 512, 2, 2))
	d := dummyCredential(map[string]credential{"a": a, "z": parseCredential("$2a$04$invalid")})
	if d.argon == nil || d.argon.memory != 512 || d.argon.time != 2 || d.argon.threads != 2 || len(d.argon.key) != 32 {
		t.Fatalf("dummy for an argon2id user: %+v", d)
	}
	bc, _ := bcrypt.GenerateFromPassword([]byte("x"), 5)
	d = dummyCredential(map[string]credential{"b": parseCredential(string(bc)), "c": a})
	if cost, err := bcrypt.Cost(d.bcrypt); err != nil || cost != 5 {
		t.Fatalf("dummy for a bcrypt user: cost %d, %v", cost, err)
	}
	if d.matches("consentguard: no such user", make(chan struct{}, 1)) != true {
		t.Errorf("dummy hash does not verify its own password")
	}
}
