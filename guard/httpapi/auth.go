package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/gin-gonic/gin"
)

// principal is who a request acts as: a configured key or the anonymous
// caller (when allowed, with every scope).
type principal struct {
	name   string
	scopes []string
}

// anonymous acts with every scope; it exists only when anonymous access is
// allowed.
var anonymous = &principal{name: "anonymous", scopes: []string{"*"}}

// can reports whether p holds scope: exactly, through "*", or through a
// "prefix:*" wildcard.
func (p *principal) can(scope string) bool {
	if p == nil {
		return false
	}
	for _, s := range p.scopes {
		if s == "*" || s == scope {
			return true
		}
		if n := len(s); n > 1 && s[n-1] == '*' && s[n-2] == ':' && strings.HasPrefix(scope, s[:n-1]) {
			return true
		}
	}
	return false
}

type keyEntry struct {
	sum [sha256.Size]byte
	p   *principal
}

// authenticator finds the key a request presents.
type authenticator struct {
	keys      []keyEntry
	anonymous bool
}

func newAuthenticator(keys []Key, allowAnonymous bool) (authenticator, error) {
	a := authenticator{anonymous: allowAnonymous}
	var errs []error
	seen := map[[sha256.Size]byte]bool{}
	for i, k := range keys {
		var e keyEntry
		b, err := hex.DecodeString(strings.TrimSpace(k.SHA256))
		if err != nil || len(b) != sha256.Size {
			errs = append(errs, fmt.Errorf("api key %s: sha256 must be 64 hex digits", keyName(k, i)))
			continue
		}
		copy(e.sum[:], b)
		if seen[e.sum] {
			errs = append(errs, fmt.Errorf("api key %s: same sha256 as another key", keyName(k, i)))
		}
		seen[e.sum] = true
		if len(k.Scopes) == 0 {
			errs = append(errs, fmt.Errorf("api key %s: no scopes", keyName(k, i)))
		}
		name := k.Name
		if name == "" {
			name = fmt.Sprintf("key#%d", i+1)
		}
		e.p = &principal{name: name, scopes: append([]string(nil), k.Scopes...)}
		a.keys = append(a.keys, e)
	}
	return a, errors.Join(errs...)
}

// presented returns the key a request carries: "Authorization: Bearer" or
// "X-API-Key".
func presented(h map[string][]string) (string, bool) {
	if v := h["Authorization"]; len(v) > 0 {
		if len(v[0]) > 7 && strings.EqualFold(v[0][:7], "bearer ") {
			return strings.TrimSpace(v[0][7:]), true
		}
		return "", true // some other scheme: not a key we accept
	}
	if v := h["X-Api-Key"]; len(v) > 0 {
		return strings.TrimSpace(v[0]), true
	}
	return "", false
}

// principalFor authenticates a request's headers. It returns nil when the
// request must be refused with 401: a key that matches none, or no key when
// anonymous access is not allowed. Every configured key is compared, in
// constant time, whatever matches.
func (a *authenticator) principalFor(h map[string][]string) *principal {
	key, ok := presented(h)
	if !ok {
		if a.anonymous {
			return anonymous
		}
		return nil
	}
	if key == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(key))
	var found *principal
	for i := range a.keys {
		if subtle.ConstantTimeCompare(sum[:], a.keys[i].sum[:]) == 1 {
			found = a.keys[i].p
		}
	}
	return found
}

// principalKey is the gin context key of the authenticated principal; a
// private type, so no other code can set or shadow it.
type principalCtxKey struct{}

var principalKey principalCtxKey

// authenticate guards every /v1/ path that routes mounts after the check
// routes (built-in and extra routes, unmatched paths and methods): 401
// unless the request presents a valid key or anonymous access is allowed.
func (s *server) authenticate(c *gin.Context) {
	if !strings.HasPrefix(c.Request.URL.Path, "/v1/") {
		return
	}
	if p := s.principal(c); p != nil {
		c.Set(principalKey, p)
	}
}

// principal authenticates a request and answers 401 when it presents no
// valid key (nil). The check handlers call it themselves and hold the
// principal (storing it in the gin context costs a map per request, and
// checks are the hot path); authenticate calls it for every other route.
func (s *server) principal(c *gin.Context) *principal {
	p := s.auth.principalFor(c.Request.Header)
	if p == nil {
		c.Header("WWW-Authenticate", `Bearer realm="consentguard"`)
		s.fail(c, errUnauthenticated)
		c.Abort()
	}
	return p
}

// authorizedAs reports whether p holds scope, and answers 403 when it does
// not.
func (s *server) authorizedAs(c *gin.Context, p *principal, scope string) bool {
	if p.can(scope) {
		return true
	}
	s.fail(c, errForbidden)
	c.Abort()
	return false
}

func principalOf(c *gin.Context) *principal {
	v, ok := c.Get(principalKey)
	if !ok {
		return nil
	}
	p, _ := v.(*principal)
	return p
}

// RequireScope is middleware for the contact routes and for routes mounted
// through Options.ExtraRoutes under /v1/: it answers 403 unless the
// authenticated key holds scope. Outside /v1/ (where nothing
// authenticates) it always refuses.
func RequireScope(scope string) gin.HandlerFunc {
	return func(c *gin.Context) {
		if principalOf(c).can(scope) {
			return
		}
		writeError(c, errForbidden)
		c.Abort()
	}
}
