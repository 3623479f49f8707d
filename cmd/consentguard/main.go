// Command consentguard guards marketing mail and calls with the consent
// people gave in Salesforce. See README.md and DESIGN.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// exitStatus carries a process exit code without an error message
// (check: 1 = denied).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError marks bad command-line use (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	fmt.Fprintln(stderr, "consentguard:", err)
	return 2
}

const usage = `usage: consentguard <command> [flags]

commands:
  serve         run the HTTP API and webhooks (and SMTP relay / policy server when configured)
  check         one decision as JSON: -channel C (-email E | -phone P | -contact ID); exit 0 allowed, 1 denied, 2 error
  import        load a Salesforce CSV export: [-object Contact] FILE.csv
  scrub         campaign list → allowed rows: -channel C -column NAME [-annotate] IN.csv
  sync          reconcile from the Salesforce REST API: [-object Contact,Lead] [-since 2026-11-01T00:00:00Z | -since 25h]
  repair-index  check the Redis identifier index against the records and repair it (after keys were
                deleted or restored by hand, or data moved from a Cluster to a standalone Redis);
                first upgrades data of the older schema 2 in place (stop older instances first)
  version       print the version

Every command takes -config FILE (or CONSENTGUARD_CONFIG); secrets come from the environment.
`

// run is the whole program; main only wires the process to it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return &usageError{"no command"}
	}
	cmd, rest := args[1], args[2:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, getenv, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, getenv, stdout, stderr)
	case "import":
		return runImport(ctx, rest, getenv, stdout, stderr)
	case "scrub":
		return runScrub(ctx, rest, getenv, stdout, stderr)
	case "sync":
		return runSync(ctx, rest, getenv, stdout, stderr)
	case "repair-index":
		return runRepairIndex(ctx, rest, getenv, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "consentguard", version)
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{fmt.Sprintf("unknown command %q", cmd)}
}
