package guard

import "errors"

// Errors at the domain edge. Front ends map them once per protocol
// (HTTP status, SMTP reply, Postfix action); compare with errors.Is.
var (
	// ErrUnavailable: the store could not answer in time. The decision is
	// a denial with reason store_unavailable; the guard never fails open.
	ErrUnavailable = errors.New("consent store unavailable")
	// ErrInvalidIdentifier: an email, phone number or record Id that cannot
	// be normalised.
	ErrInvalidIdentifier = errors.New("invalid identifier")
	// ErrInvalidChannel: not one of email, phone, post, storage.
	ErrInvalidChannel = errors.New("invalid channel")
	// ErrNotFound: no record with that Id.
	ErrNotFound = errors.New("record not found")
	// ErrHashKeyMismatch: the store holds data written under another hash key.
	ErrHashKeyMismatch = errors.New("store was written under a different hash key")
)
