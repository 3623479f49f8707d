package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/consentguard/consentguard/webhook"
	"github.com/consentguard/consentguard/webhook/csvimport"
)

// runImport loads a Salesforce CSV export into the store.
func runImport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlagSet("import", stderr)
	object := fs.String("object", "Contact", "Salesforce object the rows are: Contact or Lead")
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	if fs.NArg() != 1 {
		return &usageError{"import: want one CSV file (or - for stdin)"}
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
		a.log.Warn("no Redis configured: importing into an embedded store that is discarded when this command exits; set CONSENTGUARD_REDIS_URL")
	}
	sum, err := csvimport.Run(ctx, a.store, bufio.NewReaderSize(in, 64<<10), a.importOptions(*object))
	fmt.Fprintln(stdout, sum.String())
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	return nil
}

// importOptions maps the configuration onto a CSV import of object.
func (a *app) importOptions(object string) csvimport.Options {
	return csvimport.Options{
		Object:  object,
		Mapping: a.cfg.Salesforce.Objects,
		Record:  a.recordOptions(time.Now()),
		Logger:  a.log,
	}
}

// recordOptions maps the configuration onto the options of
// webhook.Mapping.Record, for import and sync; now bounds versions from
// the future.
func (a *app) recordOptions(now time.Time) webhook.RecordOptions {
	return webhook.RecordOptions{
		Vocabulary: a.cfg.Salesforce.Values,
		Region:     a.cfg.Identity.DefaultRegion,
		Now:        now,
	}
}

// openInput opens a named file, or standard input for "-".
func openInput(name string) (io.ReadCloser, error) {
	if name == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	return os.Open(name)
}
