package smtprelay

import (
	"errors"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"
)

// dummyHash returns a hash to compare against when the user is unknown, so
// that unknown and known users take the same time: same cost as the
// configured hashes.
func dummyHash(users map[string][]byte) []byte {
	cost := bcrypt.DefaultCost
	for _, h := range users {
		if c, err := bcrypt.Cost(h); err == nil {
			cost = c
		}
		break
	}
	h, err := bcrypt.GenerateFromPassword([]byte("consentguard: no such user"), cost)
	if err != nil {
		return nil
	}
	return h
}

// checkPassword compares pass with the user's bcrypt hash.
func (s *Server) checkPassword(user, pass string) bool {
	h, ok := s.users[user]
	if !ok {
		h = s.dummy
	}
	err := bcrypt.CompareHashAndPassword(h, []byte(pass))
	return ok && err == nil
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
