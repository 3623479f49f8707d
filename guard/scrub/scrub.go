// Package scrub filters campaign lists (CSV) through the guard before
// launch: only rows whose contact may be reached on the channel remain.
// Every row is decided by guard.Guard.CheckBatch, in chunks, so a list of
// any length streams through in bounded memory.
package scrub

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/consentguard/consentguard/guard"
)

// Options say which column holds the identifier and what to write.
type Options struct {
	Channel guard.Channel
	Column  string     // header name, matched case-insensitively
	Kind    guard.Kind // 0: the channel's own (email → email, phone → phone, else contact Id)
	// Annotate writes every row with consent_allowed and consent_reason
	// columns appended, instead of only the allowed rows.
	Annotate bool
	// Chunk is how many rows go to the store at once; default 1000.
	Chunk int
}

// Summary counts what a scrub did.
type Summary struct {
	Rows    int                  `json:"rows"`
	Allowed int                  `json:"allowed"`
	Denied  int                  `json:"denied"`
	Reasons map[guard.Reason]int `json:"reasons"`
}

// String renders the summary for a terminal.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rows %d, allowed %d, denied %d", s.Rows, s.Allowed, s.Denied)
	keys := make([]string, 0, len(s.Reasons))
	for r := range s.Reasons {
		keys = append(keys, string(r))
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %-20s %d", k, s.Reasons[guard.Reason(k)])
	}
	return b.String()
}

// ErrColumn: the named column is not in the header.
var ErrColumn = errors.New("column not found")

// DefaultKind is the identifier kind a channel's list usually carries.
func DefaultKind(ch guard.Channel) guard.Kind {
	switch ch {
	case guard.Email:
		return guard.KindEmail
	case guard.Phone:
		return guard.KindPhone
	}
	return guard.KindRecordID
}

// Run reads CSV from r and writes the kept rows (with the header) to w.
// On a store failure it stops and returns an error wrapping
// guard.ErrUnavailable: rows not yet decided are never written.
func Run(ctx context.Context, g *guard.Guard, r io.Reader, w io.Writer, opts Options) (Summary, error) {
	sum := Summary{Reasons: map[guard.Reason]int{}}
	if opts.Kind == 0 {
		opts.Kind = DefaultKind(opts.Channel)
	}
	if opts.Chunk <= 0 {
		opts.Chunk = 1000
	}
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = false
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return sum, fmt.Errorf("empty input: want a header row")
	}
	if err != nil {
		return sum, fmt.Errorf("csv header: %w", err)
	}
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // Excel's BOM
	}
	col := -1
	for i, h := range header {
		if strings.EqualFold(strings.TrimSpace(h), strings.TrimSpace(opts.Column)) {
			col = i
			break
		}
	}
	if col < 0 {
		return sum, fmt.Errorf("%w: %q (header has %d columns)", ErrColumn, opts.Column, len(header))
	}
	cw := csv.NewWriter(w)
	out := header
	if opts.Annotate {
		out = append(append([]string{}, header...), "consent_allowed", "consent_reason")
	}
	if err := cw.Write(out); err != nil {
		return sum, err
	}

	rows := make([][]string, 0, opts.Chunk)
	ids := make([]guard.Identifier, 0, opts.Chunk)
	flush := func() error {
		if len(rows) == 0 {
			return nil
		}
		ds, err := g.CheckBatch(ctx, opts.Channel, ids)
		if err != nil {
			return err
		}
		for i, d := range ds {
			sum.Rows++
			sum.Reasons[d.Reason]++
			if d.Allowed {
				sum.Allowed++
			} else {
				sum.Denied++
			}
			switch {
			case opts.Annotate:
				err = cw.Write(append(rows[i], fmt.Sprint(d.Allowed), string(d.Reason)))
			case d.Allowed:
				err = cw.Write(rows[i])
			}
			if err != nil {
				return err
			}
		}
		cw.Flush()
		rows, ids = rows[:0], ids[:0]
		return cw.Error()
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
		var id guard.Identifier
		if col < len(rec) {
			id, _ = g.Parse(opts.Kind, rec[col]) // a failure stays zero: invalid_identifier
		}
		rows = append(rows, rec)
		ids = append(ids, id)
		if len(rows) == opts.Chunk {
			if err := flush(); err != nil {
				return sum, err
			}
		}
	}
	if err := flush(); err != nil {
		return sum, err
	}
	cw.Flush()
	return sum, cw.Error()
}
