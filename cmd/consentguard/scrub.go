package main

import (
	"bufio"
	"context"
	"fmt"
	"io"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/scrub"
)

// runScrub writes the allowed rows of a campaign list to stdout and a
// summary to stderr.
func runScrub(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlagSet("scrub", stderr)
	channel := fs.String("channel", "", "channel: email, phone, post or storage")
	column := fs.String("column", "", "header of the column holding the identifier")
	kind := fs.String("kind", "", "what the column holds: email, phone or contact (default: the channel's own; contact for post and storage)")
	annotate := fs.Bool("annotate", false, "write every row with consent_allowed and consent_reason columns")
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	ch, err := guard.ParseChannel(*channel)
	if err != nil {
		return &usageError{"scrub: -channel: " + err.Error()}
	}
	if *column == "" {
		return &usageError{"scrub: -column is required"}
	}
	if fs.NArg() != 1 {
		return &usageError{"scrub: want one input file (or - for stdin)"}
	}
	k := *kind
	if k == "id" { // an alias the command takes and the HTTP route does not
		k = "contact"
	}
	opts := scrub.Options{Channel: ch, Column: *column, Annotate: *annotate}
	var ok bool
	if opts.Kind, ok = scrubKind(k); !ok {
		return &usageError{fmt.Sprintf("scrub: -kind %q: want email, phone or contact", *kind)}
	}
	in, err := openInput(fs.Arg(0))
	if err != nil {
		return err
	}
	defer in.Close()
	a, err := openApp(ctx, *cfgPath, getenv, stderr, forTool, nil)
	if err != nil {
		return err
	}
	defer a.close()
	if a.cfg.Embedded() {
		a.log.Warn("no Redis configured: scrubbing against an empty embedded store; every row is unknown_contact")
	}
	bw := bufio.NewWriterSize(stdout, 64<<10)
	sum, err := scrub.Run(ctx, a.guard, bufio.NewReaderSize(in, 64<<10), bw, opts)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	fmt.Fprintln(stderr, sum.String())
	if err != nil {
		return fmt.Errorf("scrub: %w", err)
	}
	return nil
}
