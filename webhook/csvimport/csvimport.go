// Package csvimport back-fills the consent store from a Salesforce CSV
// export: Data Loader, Bulk API 2.0 query results, or any CSV whose header
// holds field API names (matched without regard to case, so Data Loader's
// upper-case headers work). Each row goes through the same field mapping as
// the webhooks and the same compare-and-set write, so an import can never
// undo a newer change that arrived by webhook, and re-running it is safe.
package csvimport

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/webhook"
)

// Store is what an import writes to; *cache.Store satisfies it.
type Store interface {
	Apply(ctx context.Context, ups []guard.Update) ([]guard.Outcome, error)
}

// Options configure an import.
type Options struct {
	Object  string // "Contact" (default) or "Lead"
	Mapping webhook.Mapping
	Record  webhook.RecordOptions
	Batch   int // rows per store write; default 500
	Logger  *slog.Logger
}

// Summary counts what an import did.
type Summary struct {
	Rows     int                         `json:"rows"`
	Outcomes map[string]int              `json:"outcomes"`
	Deleted  int                         `json:"deleted"`
	Skipped  int                         `json:"skipped"`
	Warnings map[webhook.WarningCode]int `json:"warnings"`
	// Problems lists skipped rows by line and field (no values).
	Problems []string `json:"problems,omitempty"`
}

func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rows %d, skipped %d", s.Rows, s.Skipped)
	webhook.WriteCounts(&b, s.Outcomes, s.Warnings, s.Problems)
	return b.String()
}

// ErrStore wraps a store failure: rows before it are written, and running
// the import again is safe.
var ErrStore = errors.New("consent store write failed")

// maxProblems bounds the problems a summary lists.
const maxProblems = 100

// Run reads the CSV from r and writes every row. On a store failure it
// stops and returns the error; rows written until then stay written.
func Run(ctx context.Context, st Store, r io.Reader, opts Options) (Summary, error) {
	sum := Summary{Outcomes: map[string]int{}, Warnings: map[webhook.WarningCode]int{}}
	if opts.Object == "" {
		opts.Object = "Contact"
	}
	if opts.Mapping == nil {
		opts.Mapping = webhook.DefaultMapping()
	}
	if opts.Batch <= 0 {
		opts.Batch = 500
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if _, _, ok := opts.Mapping.Object(opts.Object); !ok {
		return sum, fmt.Errorf("%w: %q", webhook.ErrUnknownObject, opts.Object)
	}
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return sum, errors.New("empty input: want a header row of field API names")
	}
	if err != nil {
		return sum, fmt.Errorf("csv header: %w", err)
	}
	cols := make(map[string]int, len(header))
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if _, dup := cols[h]; !dup {
			cols[h] = i
		}
	}
	idCol, ok := cols["id"]
	if !ok {
		return sum, errors.New("csv header has no Id column (export with field API names, e.g. Data Loader or Bulk API)")
	}
	delCol, hasDel := cols["isdeleted"]

	batch := make([]guard.Update, 0, opts.Batch)
	write := func() error {
		if len(batch) == 0 {
			return nil
		}
		outs, err := st.Apply(ctx, batch)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrStore, err)
		}
		for _, o := range outs {
			sum.Outcomes[o.String()]++
		}
		batch = batch[:0]
		return nil
	}
	line := 1
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line++
		if err != nil {
			return sum, fmt.Errorf("csv line %d: %w", line, err)
		}
		sum.Rows++
		field := func(name string) (string, bool) {
			i, ok := cols[strings.ToLower(name)]
			if !ok || i >= len(rec) || rec[i] == "" {
				return "", false
			}
			return rec[i], true
		}
		id := ""
		if idCol < len(rec) {
			id = rec[idCol]
		}
		up, warns, err := opts.Mapping.Record(opts.Object, id, field, opts.Record)
		if err != nil {
			sum.Skipped++
			if len(sum.Problems) < maxProblems {
				sum.Problems = append(sum.Problems, fmt.Sprintf("line %d: %v", line, err))
			}
			continue
		}
		for _, w := range warns {
			sum.Warnings[w.Code]++
			opts.Logger.Debug("import warning", "line", line, "id", up.ID, "warning", w.String())
		}
		if hasDel && delCol < len(rec) && strings.EqualFold(strings.TrimSpace(rec[delCol]), "true") {
			up.Deleted = true
			sum.Deleted++
		}
		up.Source, up.Ref = "import", fmt.Sprintf("line %d", line)
		batch = append(batch, up)
		if len(batch) == opts.Batch {
			if err := write(); err != nil {
				return sum, err
			}
		}
	}
	return sum, write()
}
