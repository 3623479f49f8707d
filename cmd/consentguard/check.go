package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/consentguard/consentguard/guard"
)

// runCheck prints one decision as JSON. Exit 0 allowed, 1 denied, 2 error
// (including store_unavailable and invalid_identifier).
func runCheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlagSet("check", stderr)
	channel := fs.String("channel", "", "channel: email, phone, post or storage")
	email := fs.String("email", "", "email address")
	phone := fs.String("phone", "", "phone number (national numbers in identity.default_region)")
	contact := fs.String("contact", "", "Salesforce Contact or Lead Id (15 or 18 characters)")
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("check: unexpected argument %q", fs.Arg(0))}
	}
	ch, err := guard.ParseChannel(*channel)
	if err != nil {
		return &usageError{"check: -channel: " + err.Error()}
	}
	var kind guard.Kind
	var raw string
	n := 0
	for _, f := range []struct {
		k guard.Kind
		v string
	}{{guard.KindEmail, *email}, {guard.KindPhone, *phone}, {guard.KindRecordID, *contact}} {
		if f.v != "" {
			kind, raw = f.k, f.v
			n++
		}
	}
	if n != 1 {
		return &usageError{"check: give exactly one of -email, -phone, -contact"}
	}

	a, err := openApp(ctx, *cfgPath, getenv, stderr, forTool, nil)
	if err != nil {
		return err
	}
	defer a.close()
	if a.cfg.Embedded() {
		a.log.Warn("no Redis configured: checking against an empty embedded store; every answer is unknown_contact")
	}

	// An identifier that does not parse stays zero, and the guard decides
	// it invalid_identifier; the parse error says why.
	id, perr := a.guard.Parse(kind, raw)
	d, err := a.guard.Check(ctx, ch, id)
	if perr != nil {
		err = perr
	}
	if eerr := json.NewEncoder(stdout).Encode(d); eerr != nil {
		return eerr
	}
	switch {
	case err != nil: // invalid identifier or store unavailable: exit 2
		return fmt.Errorf("check: %w", err)
	case d.Allowed:
		return nil
	}
	return exitStatus(1)
}
