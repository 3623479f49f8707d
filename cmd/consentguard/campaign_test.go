package main

import (
	"testing"

	"github.com/consentguard/consentguard/guard"
)

func TestScrubKind(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want guard.Kind
		ok   bool
	}{
		{"", 0, true},
		{"email", guard.KindEmail, true},
		{"phone", guard.KindPhone, true},
		{"contact", guard.KindRecordID, true},
		{"contact_id", guard.KindRecordID, true},
		{"id", 0, false}, // the scrub command's alias, not the route's
		{"Email", 0, false},
		{"fax", 0, false},
	} {
		if got, ok := scrubKind(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("scrubKind(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
