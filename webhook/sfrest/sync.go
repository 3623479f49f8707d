package sfrest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/webhook"
)

// Store is what a sync writes to; *cache.Store satisfies it. Apply is the
// same compare-and-set path the webhooks use.
type Store interface {
	Apply(ctx context.Context, ups []guard.Update) ([]guard.Outcome, error)
}

// Options configure a sync.
type Options struct {
	// Objects to read ("Contact", "Lead"); default every mapped object.
	Objects []string
	// Since, when set, reads only rows with SystemModstamp at or after it
	// (cut to the second). Zero reads everything.
	Since   time.Time
	Mapping webhook.Mapping // default webhook.DefaultMapping()
	Record  webhook.RecordOptions
	Logger  *slog.Logger
}

// Summary counts what a sync did.
type Summary struct {
	Objects []string `json:"objects"`
	Since   string   `json:"since,omitempty"` // SOQL literal, "" for a full sync
	Pages   int      `json:"pages"`
	// Rows counts every row read, deleted rows included.
	Rows     int                         `json:"rows"`
	Deleted  int                         `json:"deleted"`
	Skipped  int                         `json:"skipped"`
	Outcomes map[string]int              `json:"outcomes"`
	Warnings map[webhook.WarningCode]int `json:"warnings"`
	// Problems lists skipped rows by object, Id and field (no values).
	Problems []string `json:"problems,omitempty"`
}

func (s Summary) String() string {
	var b strings.Builder
	since := "everything"
	if s.Since != "" {
		since = "since " + s.Since
	}
	fmt.Fprintf(&b, "sync %s (%s): pages %d, rows %d, deleted %d, skipped %d", strings.Join(s.Objects, ","), since, s.Pages, s.Rows, s.Deleted, s.Skipped)
	webhook.WriteCounts(&b, s.Outcomes, s.Warnings, s.Problems)
	return b.String()
}

// ErrStore wraps a store failure: pages before it are written, and running
// the sync again is safe.
var ErrStore = errors.New("consent store write failed")

// maxProblems bounds the problems a summary lists.
const maxProblems = 100

// SOQLTime renders t as a SOQL dateTime literal (UTC, seconds, unquoted).
func SOQLTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// SelectSOQL is the query for an object's live rows: exactly the fields
// its mapping reads, optionally from since on, in SystemModstamp, Id order.
func SelectSOQL(object string, obj webhook.Object, since time.Time) string {
	return buildSOQL(obj.Fields(), object, since, false)
}

// DeletedSOQL is the QueryAll query for an object's deleted rows: Id and
// SystemModstamp (the deletion time) of rows with IsDeleted = TRUE.
func DeletedSOQL(object string, since time.Time) string {
	return buildSOQL([]string{"Id", "SystemModstamp"}, object, since, true)
}

func buildSOQL(fields []string, object string, since time.Time, deleted bool) string {
	var where []string
	if deleted {
		where = append(where, "IsDeleted = TRUE")
	}
	if !since.IsZero() {
		where = append(where, "SystemModstamp >= "+SOQLTime(since))
	}
	q := "SELECT " + strings.Join(fields, ", ") + " FROM " + object
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	return q + " ORDER BY SystemModstamp, Id"
}

// Sync reads every mapped object's rows (modified since o.Since) from
// Salesforce and writes them page by page, then the deleted rows as
// tombstones at their SystemModstamp. Rows the mapping refuses (a bad Id or
// version) are skipped and listed; warnings are counted. On a Salesforce or
// store failure it stops and returns the error with the summary so far
// (store failures wrap ErrStore).
func Sync(ctx context.Context, c *Client, st Store, o Options) (Summary, error) {
	sum := Summary{Outcomes: map[string]int{}, Warnings: map[webhook.WarningCode]int{}}
	if o.Mapping == nil {
		o.Mapping = webhook.DefaultMapping()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	objects, err := resolveObjects(o.Mapping, o.Objects)
	if err != nil {
		return sum, err
	}
	sum.Objects = objects
	if !o.Since.IsZero() {
		sum.Since = SOQLTime(o.Since)
	}
	s := &syncer{c: c, st: st, o: o, sum: &sum}
	for _, name := range objects {
		_, obj, _ := o.Mapping.Object(name)
		if err := s.live(ctx, name, obj); err != nil {
			return sum, fmt.Errorf("%s: %w", name, err)
		}
		if err := s.deleted(ctx, name, obj); err != nil {
			return sum, fmt.Errorf("%s deleted rows: %w", name, err)
		}
	}
	return sum, nil
}

// resolveObjects returns the canonical names of the requested objects, or
// every mapped object (sorted) when none is requested.
func resolveObjects(m webhook.Mapping, want []string) ([]string, error) {
	if len(want) == 0 {
		out := make([]string, 0, len(m))
		for name := range m {
			out = append(out, name)
		}
		sort.Strings(out)
		return out, nil
	}
	var out []string
	var errs []error
	for _, w := range want {
		w = strings.TrimSpace(w)
		if w == "" {
			continue
		}
		name, _, ok := m.Object(w)
		if !ok {
			errs = append(errs, fmt.Errorf("%w: %q", webhook.ErrUnknownObject, webhook.Printable(w, 40)))
			continue
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no object given"))
	}
	return out, errors.Join(errs...)
}

type syncer struct {
	c   *Client
	st  Store
	o   Options
	sum *Summary
}

func (s *syncer) problem(format string, args ...any) {
	s.sum.Skipped++
	if len(s.sum.Problems) < maxProblems {
		s.sum.Problems = append(s.sum.Problems, fmt.Sprintf(format, args...))
	}
}

// live syncs the rows the Query resource returns.
func (s *syncer) live(ctx context.Context, name string, obj webhook.Object) error {
	return s.query(ctx, name, SelectSOQL(name, obj, s.o.Since), false, func(r Record) (guard.Update, error) {
		id, _ := r.Field("Id")
		up, warns, err := s.o.Mapping.Record(name, id, r.Field, s.o.Record)
		if err != nil {
			return up, err
		}
		for _, w := range warns {
			s.sum.Warnings[w.Code]++
			s.o.Logger.Debug("sync warning", "object", name, "id", up.ID, "warning", w.String())
		}
		return up, nil
	})
}

// deleted syncs the rows QueryAll reports with IsDeleted = TRUE as
// tombstones at their SystemModstamp.
func (s *syncer) deleted(ctx context.Context, name string, obj webhook.Object) error {
	return s.query(ctx, name, DeletedSOQL(name, s.o.Since), true, func(r Record) (guard.Update, error) {
		s.sum.Deleted++
		return s.tombstone(name, r)
	})
}

// query runs soql on object name's rows (the deleted ones with QueryAll
// when all is set) and writes each page in one Apply: row turns a row into
// its update, or gives the reason to skip it, which is listed as a problem.
func (s *syncer) query(ctx context.Context, name, soql string, all bool, row func(Record) (guard.Update, error)) error {
	op, what := "query", name
	if all {
		op, what = "queryAll", name+" deleted"
	}
	return s.c.Query(ctx, soql, all, func(p Page) error {
		s.sum.Pages++
		ref := fmt.Sprintf("%s %s page %d", op, name, p.Number)
		ups := make([]guard.Update, 0, len(p.Records))
		for i, r := range p.Records {
			s.sum.Rows++
			up, err := row(r)
			if err != nil {
				raw, _ := r.Field("Id")
				s.problem("%s page %d row %d (%s): %v", what, p.Number, i+1, safeID(raw), err)
				continue
			}
			up.Source, up.Ref = "sync", ref
			ups = append(ups, up)
		}
		return s.apply(ctx, ups)
	})
}

func (s *syncer) tombstone(name string, r Record) (guard.Update, error) {
	raw, _ := r.Field("Id")
	id, err := webhook.RecordID(raw)
	if err != nil {
		return guard.Update{}, err
	}
	up := guard.Update{ID: id, Object: name, Deleted: true}
	ms, ok := r.Field("SystemModstamp")
	if !ok {
		// Without a version the store tombstones at max(stored, now).
		s.sum.Warnings[webhook.WarnUnversioned]++
		return up, nil
	}
	t, err := s.o.Record.ParseVersion(ms)
	if err != nil {
		return guard.Update{}, &webhook.FieldError{Field: "SystemModstamp", Err: err}
	}
	up.Version = t
	return up, nil
}

// apply writes one page's updates and counts the outcomes.
func (s *syncer) apply(ctx context.Context, ups []guard.Update) error {
	if len(ups) == 0 {
		return nil
	}
	outs, err := s.st.Apply(ctx, ups)
	if err == nil && len(outs) != len(ups) {
		err = fmt.Errorf("store answered %d of %d updates", len(outs), len(ups))
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	for _, o := range outs {
		s.sum.Outcomes[o.String()]++
	}
	return nil
}

// safeID renders a row's Id for a problem line: only Id-shaped text.
func safeID(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return "no Id"
	}
	if len(s) > 18 || strings.ContainsFunc(s, func(r rune) bool {
		return !('0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z')
	}) {
		return "bad Id"
	}
	return s
}
