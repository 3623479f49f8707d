package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/consentguard/consentguard/webhook/sfrest"
)

// runSync reconciles the store from the Salesforce REST API.
func runSync(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlagSet("sync", stderr)
	objects := fs.String("object", "", "comma-separated `objects` to read, e.g. Contact,Lead (default: every mapped object)")
	sinceFlag := fs.String("since", "", "read only rows modified since `T`: an RFC 3339 time (2026-11-01T00:00:00Z) or a duration back from now (24h, 7d); default everything")
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	if fs.NArg() != 0 {
		return &usageError{"sync: unexpected arguments " + strings.Join(fs.Args(), " ")}
	}
	now := time.Now()
	since, err := parseSince(*sinceFlag, now)
	if err != nil {
		return &usageError{"sync: -since: " + err.Error()}
	}

	// Check the REST settings before touching the store.
	v := newValidator()
	cfg, err := loadConfig(*cfgPath, getenv, v, forTool)
	if err != nil {
		return err
	}
	rest := cfg.Salesforce.REST
	if err := restSettings(rest); err != nil {
		return err
	}
	a, err := startApp(ctx, cfg, v, stderr, nil)
	if err != nil {
		return err
	}
	defer a.close()
	if cfg.Embedded() {
		a.log.Warn("no Redis configured: syncing into an embedded store that is discarded when this command exits; set CONSENTGUARD_REDIS_URL")
	}
	client, err := sfrest.New(sfrest.Config{
		URL:          rest.URL,
		ClientID:     rest.ClientID,
		ClientSecret: rest.ClientSecret,
		APIVersion:   rest.APIVersion,
		Logger:       a.log,
	})
	if err != nil {
		return fmt.Errorf("salesforce.rest: %w", err)
	}
	var objs []string
	if *objects != "" {
		objs = splitList(*objects)
	}
	sum, err := sfrest.Sync(ctx, client, a.store, sfrest.Options{
		Objects: objs,
		Since:   since,
		Mapping: cfg.Salesforce.Objects,
		Record:  a.recordOptions(now),
		Logger:  a.log,
	})
	if sum.Objects != nil {
		fmt.Fprintln(stdout, sum.String())
	}
	if err != nil {
		if errors.Is(err, sfrest.ErrAuth) {
			err = fmt.Errorf("%w (check salesforce.rest client_id/client_secret, and that the app enables the client credentials flow with a run-as user)", err)
		}
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

// restSettings names every missing salesforce.rest setting at once.
func restSettings(r RESTConfig) error {
	var errs []error
	if r.URL == "" {
		errs = append(errs, errors.New("salesforce.rest.url (CONSENTGUARD_SALESFORCE_URL): required for sync, e.g. https://acme.my.salesforce.com"))
	}
	if r.ClientID == "" {
		errs = append(errs, errors.New("salesforce.rest.client_id (CONSENTGUARD_SALESFORCE_CLIENT_ID): required for sync"))
	}
	if r.ClientSecret == "" {
		errs = append(errs, errors.New("salesforce.rest.client_secret (CONSENTGUARD_SALESFORCE_CLIENT_SECRET): required for sync"))
	}
	if len(errs) > 0 {
		return &configError{errs: errs}
	}
	return nil
}

// parseSince reads -since: empty (everything), an RFC 3339 time, a date
// (2026-11-01, midnight UTC), or a duration back from now (90m, 25h, 7d).
func parseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q is not a time (2026-11-01T00:00:00Z) or a duration (24h, 7d)", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return time.Time{}, fmt.Errorf("%q is not a time (2026-11-01T00:00:00Z) or a duration (24h, 7d)", s)
		}
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("%q: the duration must be positive", s)
	}
	return now.Add(-d), nil
}
