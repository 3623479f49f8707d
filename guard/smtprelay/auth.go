package smtprelay

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// credential is one configured password hash, parsed once at New: bcrypt
// (Modular Crypt Format, "$2a$…", "$2b$…", "$2y$…") or argon2id in the PHC
// string format ("$argon2id$v=19$m=65536,t=3,p=2$<salt>$<hash>", RFC 9106).
// An unusable hash (err set) never matches.
type credential struct {
	bcrypt []byte
	argon  *argon2Hash
	err    error
}

func parseCredential(h string) credential {
	if strings.HasPrefix(h, "$argon2") {
		a, err := parseArgon2id(h)
		return credential{argon: a, err: err}
	}
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return credential{err: fmt.Errorf("not a bcrypt or argon2id hash: %w", err)}
	}
	return credential{bcrypt: []byte(h)}
}

// matches reports whether pass is the password; it takes the time the hash
// is meant to take.
func (c credential) matches(pass string, argonSlots chan struct{}) bool {
	switch {
	case c.err != nil:
		return false
	case c.argon != nil:
		return c.argon.matches(pass, argonSlots)
	}
	return bcrypt.CompareHashAndPassword(c.bcrypt, []byte(pass)) == nil
}

// dummyCredential is compared against when the user is unknown, so that
// unknown and known users take the same time: a hash of the same kind and
// cost as the configured one of the alphabetically first user.
func dummyCredential(users map[string]credential) credential {
	names := make([]string, 0, len(users))
	for u, c := range users {
		if c.err == nil {
			names = append(names, u)
		}
	}
	sort.Strings(names)
	pass := []byte("consentguard: no such user")
	if len(names) > 0 {
		if a := users[names[0]].argon; a != nil {
			d := *a
			d.salt = make([]byte, len(a.salt))
			d.key = argon2.IDKey(pass, d.salt, d.time, d.memory, d.threads, uint32(len(a.key)))
			return credential{argon: &d}
		}
	}
	cost := bcrypt.DefaultCost
	if len(names) > 0 {
		if c, err := bcrypt.Cost(users[names[0]].bcrypt); err == nil {
			cost = c
		}
	}
	h, err := bcrypt.GenerateFromPassword(pass, cost)
	if err != nil {
		return credential{err: err}
	}
	return credential{bcrypt: h}
}

// checkPassword compares pass with the user's hash.
func (s *Server) checkPassword(user, pass string) bool {
	c, ok := s.users[user]
	if !ok {
		c = s.dummy
	}
	return c.matches(pass, s.argonSlots) && ok
}

// Bounds on argon2id parameters. A hash comes from the configuration, but
// an absurd one (a terabyte of memory, a million passes) would let anyone
// who can connect exhaust the machine with AUTH attempts; such a hash is
// refused. The limits are generous: RFC 9106 recommends m=2 GiB, t=1 or
// m=64 MiB, t=3, and OWASP m=19 MiB, t=2.
const (
	argon2MaxMemory  = 1 << 20 // KiB (1 GiB)
	argon2MaxTime    = 16
	argon2MaxThreads = 16
	argon2MinSalt    = 8
	argon2MaxSalt    = 64
	argon2MinKey     = 16
	argon2MaxKey     = 128
)

// argon2Hash is a parsed argon2id PHC string.
type argon2Hash struct {
	memory  uint32 // KiB
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

var errArgon2 = errors.New("invalid argon2id hash")

// parseArgon2id parses "$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>", salt and
// hash in standard base64 without padding (padding is tolerated).
func parseArgon2id(s string) (*argon2Hash, error) {
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" {
		return nil, fmt.Errorf("%w: want $argon2id$v=19$m=…,t=…,p=…$salt$hash", errArgon2)
	}
	if parts[1] != "argon2id" {
		return nil, fmt.Errorf("%w: variant %q, only argon2id is accepted", errArgon2, printable(parts[1], 16))
	}
	if parts[2] != "v=19" {
		return nil, fmt.Errorf("%w: version %q, want v=19", errArgon2, printable(parts[2], 16))
	}
	h := &argon2Hash{}
	var seen [3]bool
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: parameter %q", errArgon2, printable(kv, 32))
		}
		switch k {
		case "m":
			h.memory, seen[0] = uint32(n), true
		case "t":
			h.time, seen[1] = uint32(n), true
		case "p":
			if n > 255 {
				return nil, fmt.Errorf("%w: p=%d above %d", errArgon2, n, argon2MaxThreads)
			}
			h.threads, seen[2] = uint8(n), true
		default:
			return nil, fmt.Errorf("%w: unknown parameter %q", errArgon2, printable(k, 16))
		}
	}
	if seen != [3]bool{true, true, true} {
		return nil, fmt.Errorf("%w: m, t and p are all required", errArgon2)
	}
	switch {
	case h.threads < 1 || h.threads > argon2MaxThreads:
		return nil, fmt.Errorf("%w: p=%d outside 1..%d", errArgon2, h.threads, argon2MaxThreads)
	case h.time < 1 || h.time > argon2MaxTime:
		return nil, fmt.Errorf("%w: t=%d outside 1..%d", errArgon2, h.time, argon2MaxTime)
	case h.memory < 8*uint32(h.threads) || h.memory > argon2MaxMemory:
		return nil, fmt.Errorf("%w: m=%d outside %d..%d KiB", errArgon2, h.memory, 8*uint32(h.threads), argon2MaxMemory)
	}
	var err error
	if h.salt, err = decodeB64(parts[4]); err != nil || len(h.salt) < argon2MinSalt || len(h.salt) > argon2MaxSalt {
		return nil, fmt.Errorf("%w: salt must be %d to %d bytes of base64", errArgon2, argon2MinSalt, argon2MaxSalt)
	}
	if h.key, err = decodeB64(parts[5]); err != nil || len(h.key) < argon2MinKey || len(h.key) > argon2MaxKey {
		return nil, fmt.Errorf("%w: hash must be %d to %d bytes of base64", errArgon2, argon2MinKey, argon2MaxKey)
	}
	return h, nil
}

func decodeB64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// matches derives the key for pass and compares it in constant time. At
// most cap(slots) derivations run at once, so that memory use stays at
// slots × m however many clients try to log in.
func (h *argon2Hash) matches(pass string, slots chan struct{}) bool {
	slots <- struct{}{}
	key := argon2.IDKey([]byte(pass), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	<-slots
	return subtle.ConstantTimeCompare(key, h.key) == 1
}

// saslServer makes sure a failed exchange answers with one of our replies:
// go-smtp would put the text of any other error on the wire.
type saslServer struct{ sasl.Server }

func (s saslServer) Next(resp []byte) ([]byte, bool, error) {
	ch, done, err := s.Server.Next(resp)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return nil, false, &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: se.Message}
		}
		return nil, false, errAuthFailed()
	}
	return ch, done, nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl only has as a client. The
// initial response, if any, is the user name.
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		if resp == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.check(l.user, string(resp))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
