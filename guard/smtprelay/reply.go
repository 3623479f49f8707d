package smtprelay

import (
	"errors"
	"strings"
	"unicode"

	"github.com/emersion/go-smtp"

	"github.com/consentguard/consentguard/guard"
)

// rcptReply maps one guard answer for the recipient addr to the RCPT reply,
// or nil when the recipient may be reached. It is the only place where guard
// errors and decisions become SMTP replies. Every reply is a fresh
// *smtp.SMTPError: go-smtp writes the text of any other error on the wire.
func rcptReply(addr string, d guard.Decision, err error) *smtp.SMTPError {
	switch {
	case err == nil && d.Allowed:
		return nil
	case errors.Is(err, guard.ErrInvalidIdentifier):
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
			Message: bracket(addr) + ": invalid recipient address"}
	case err != nil:
		// ErrUnavailable, and anything unexpected: fail closed, but only
		// temporarily, so the sender keeps the message and retries.
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: bracket(addr) + ": consent store unavailable, try again later"}
	}
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: bracket(addr) + ": no email consent (" + string(d.Reason) + ")"}
}

// fixed returns the constructor of one fixed reply. Each call of it
// returns a fresh *smtp.SMTPError, never one shared between connections.
func fixed(code int, enh smtp.EnhancedCode, msg string) func() *smtp.SMTPError {
	return func() *smtp.SMTPError {
		return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
	}
}

// Fixed replies.
var (
	errUpstreamUnavailable = fixed(451, smtp.EnhancedCode{4, 4, 1}, "upstream mail server unavailable, try again later")
	errUpstreamLost        = fixed(451, smtp.EnhancedCode{4, 4, 2}, "connection to upstream mail server lost, try again later")
	errUpstreamUnexpected  = fixed(451, smtp.EnhancedCode{4, 4, 0}, "unexpected reply from upstream mail server, try again later")
	errTooLarge            = fixed(552, smtp.EnhancedCode{5, 3, 4}, "message exceeds the size limit")
	errAborted             = fixed(451, smtp.EnhancedCode{4, 3, 0}, "message transfer aborted, try again later")
	errTooManyRecipients   = fixed(452, smtp.EnhancedCode{4, 5, 3}, "too many recipients for one message")
	errAuthRequired        = fixed(530, smtp.EnhancedCode{5, 7, 0}, "authentication required")
	errAuthFailed          = fixed(535, smtp.EnhancedCode{5, 7, 8}, "authentication credentials invalid")
	errAuthDisabled        = fixed(502, smtp.EnhancedCode{5, 5, 1}, "authentication not enabled")
	errAuthMechanism       = fixed(504, smtp.EnhancedCode{5, 5, 4}, "unsupported authentication mechanism")
	errBadSender           = fixed(553, smtp.EnhancedCode{5, 1, 7}, "invalid sender address")
)

// upstreamReply turns a non-2xx upstream reply into the reply for our
// client: same code and text, so a 4xx stays temporary and a 5xx permanent.
// Anything that is neither 4xx nor 5xx becomes a 451.
func upstreamReply(r reply) *smtp.SMTPError {
	class := r.code / 100
	if class != 4 && class != 5 {
		return errUpstreamUnexpected()
	}
	e := &smtp.SMTPError{Code: r.code, EnhancedCode: r.enh, Message: printable(r.msg, 400)}
	if e.Message == "" {
		e.Message = "rejected by upstream mail server"
	}
	// An absent enhanced code (all zero) fails this test too.
	if e.EnhancedCode[0] != class {
		e.EnhancedCode = smtp.EnhancedCode{class, 0, 0}
	}
	return e
}

// angles drops angle brackets and newlines from an address put between
// brackets in a reply.
var angles = strings.NewReplacer("<", "", ">", "", "\n", "")

// bracket renders an address for a reply: "<addr>", with anything that
// could break the reply removed. The address is the client's own, so it is
// not masked.
func bracket(addr string) string {
	return "<" + angles.Replace(printable(addr, 320)) + ">"
}

// printable keeps printable characters (and the newlines that separate the
// lines of a multi-line reply) and cuts s to at most n bytes.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	return strings.TrimSpace(s)
}
