package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// errNothingToRepair refuses repair-index without a Redis: the embedded
// store starts empty.
var errNothingToRepair = errors.New("repair-index: no Redis configured (redis.url, CONSENTGUARD_REDIS_URL); the embedded store starts empty, so there is nothing to repair")

// runRepairIndex checks every identifier index entry of the configured
// Redis against its record and repairs it, then gives every live record
// the entries it lacks (cache.Store.RepairIndex). Data
// of the older schema 2 is first upgraded in place (cache.Store.Upgrade),
// with a line of its own. It prints one line of counts; having repaired
// or upgraded something is success.
func runRepairIndex(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlagSet("repair-index", stderr)
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	if fs.NArg() != 0 {
		return &usageError{"repair-index: unexpected arguments " + strings.Join(fs.Args(), " ")}
	}
	v := newValidator()
	cfg, err := loadConfig(*cfgPath, getenv, v, forTool)
	if err != nil {
		return err
	}
	// Refuse before connectApp, which would start an embedded store.
	if cfg.Embedded() {
		return errNothingToRepair
	}
	// Upgrade before Init, which refuses the older schema.
	a, err := connectApp(cfg, v, stderr)
	if err != nil {
		return err
	}
	defer a.close()
	up, err := a.store.Upgrade(ctx)
	if err != nil {
		return fmt.Errorf("repair-index: upgrade store %s: %w (stopped after %d index keys, %d entries, %d dropped)", redactURL(a.cfg.Redis.URL), err, up.Keys, up.Entries, up.Dropped)
	}
	if up.Upgraded {
		fmt.Fprintf(stdout, "upgraded: schema 2 → 3, %d index keys, %d entries (%d dropped)\n", up.Keys, up.Entries, up.Dropped)
	}
	if err := a.initStore(ctx, nil); err != nil {
		return err
	}
	rep, err := a.store.RepairIndex(ctx)
	if err != nil {
		return fmt.Errorf("repair-index: %w (stopped after %d keys, %d entries, %d records, %d repaired, %d added)", err, rep.Keys, rep.Entries, rep.Records, rep.Repaired, rep.Added)
	}
	fmt.Fprintf(stdout, "index: %d keys, %d entries, %d records, %d repaired, %d added\n", rep.Keys, rep.Entries, rep.Records, rep.Repaired, rep.Added)
	return nil
}
