// Package guard is consentguard's domain: channels, consent values,
// identifiers, records and the decision rules that say whether an
// advertising mail or call may go out (GDPR Art. 6/7, UWG §7).
//
// Every front end (HTTP check API, SMTP relay, Postfix policy server, CLI)
// asks Guard.Check; the rules live nowhere else. The package declares the
// small Store interface it needs and imports no HTTP, Redis, XML or SMTP
// code: adapters import guard, never the other way round.
package guard
