// Package smtprelay is consentguard's SMTP relay: an RFC 5321 server (on
// github.com/emersion/go-smtp) that newsletter tools and marketing
// automation send through instead of their usual smarthost.
//
// Every RCPT TO is decided on its own by (*guard.Guard).Check for the email
// channel: 250 when the person said "Ja", 550 5.7.1 with the reason code when
// not, 451 4.3.0 when the consent store cannot answer (the sender retries;
// nothing is lost) and 553 5.1.3 for an address that cannot be normalised.
// Accepted recipients are forwarded to the configured upstream at once, so
// the upstream's per-recipient answer is passed back too; DATA is streamed
// upstream for the accepted recipients only, byte for byte apart from one
// prepended Received: trace header (RFC 5321 section 4.4), and the
// upstream's final reply is passed back: a 4xx stays temporary, a 5xx
// permanent, an unreachable upstream is a 451.
//
// Upstream connections are pooled and, when the upstream offers PIPELINING
// (RFC 2920), commands are batched; with CHUNKING (RFC 3030) as well, the
// message goes out as BDAT chunks (one round trip for a message that fits
// in one), otherwise as DATA. STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN
// (RFC 4954, RFC 4616) are spoken on both sides; inbound users are
// configured with bcrypt or argon2id (RFC 9106, PHC string format) hashes.
// Bare CR and bare LF in a message are normalised to CRLF on the way out,
// so no upstream can find an end-of-data marker where the relay saw none
// (SMTP smuggling).
//
// Replies on the wire are always fresh *smtp.SMTPError values built here:
// go-smtp would send the text of any other error, and internal error text
// never leaves the process. Logs mask addresses.
package smtprelay
