// Package httpapi is consentguard's HTTP check API: the /v1 routes of
// DESIGN.md ("Public interface", HTTP table) — single and batch consent
// checks, contact inspection and erase — plus /healthz, /readyz and
// /metrics, served by gin and exposed as an http.Handler.
//
// Every handler is parse → guard → render: it parses the request, asks
// guard.Guard (which holds every decision rule), and renders the decision.
// Errors are mapped to HTTP statuses in one place (statusFor); a store
// failure is always 503 with "allowed":false, never an allow. Responses and
// logs never carry a full email address or phone number.
package httpapi
