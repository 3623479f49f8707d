package guard

import "time"

// Reason is the one code a Decision rests on.
type Reason string

// Reason codes, as the front ends and the audit log print them.
const (
	ReasonGranted           Reason = "consent_granted"
	ReasonDenied            Reason = "consent_denied"
	ReasonPending           Reason = "consent_pending"
	ReasonMissing           Reason = "consent_missing"
	ReasonStorageDenied     Reason = "storage_denied"
	ReasonUnknownContact    Reason = "unknown_contact"
	ReasonStoreUnavailable  Reason = "store_unavailable"
	ReasonInvalidIdentifier Reason = "invalid_identifier"
)

// severity orders the denial reasons for rule 4: the highest wins.
func (r Reason) severity() int {
	switch r {
	case ReasonGranted:
		return 0
	case ReasonMissing:
		return 1
	case ReasonPending:
		return 2
	case ReasonDenied:
		return 3
	case ReasonStorageDenied:
		return 4
	}
	return 5
}

// Decision says whether one send or call may go out, why, and which records
// (at which versions) it rests on.
type Decision struct {
	Allowed bool        `json:"allowed"`
	Channel Channel     `json:"channel"`
	Reason  Reason      `json:"reason"`
	Records []RecordRef `json:"records"`
	// Identifier is the normalised identifier that was checked; it is not
	// rendered: front ends decide what, if anything, to echo.
	Identifier Identifier `json:"-"`
	At         time.Time  `json:"-"`
}

// RecordRef is one record a decision rests on.
type RecordRef struct {
	ID      string `json:"id"`
	Object  string `json:"object,omitempty"`
	Consent string `json:"consent"`
	Version string `json:"version,omitempty"`
	Reason  Reason `json:"reason"`
}

// VersionString renders a version the way Salesforce does (UTC, millis):
// 2026-11-28T09:15:02.000Z. It runs once per record of every decision, so
// it formats by hand rather than through time.Format.
func VersionString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	t = t.UTC()
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	if y < 0 || y > 9999 {
		return t.Format("2006-01-02T15:04:05.000Z07:00")
	}
	ms := t.Nanosecond() / 1e6
	var b [24]byte
	put := func(i, v, n int) {
		for j := i + n - 1; j >= i; j-- {
			b[j] = byte('0' + v%10)
			v /= 10
		}
	}
	put(0, y, 4)
	b[4] = '-'
	put(5, int(mo), 2)
	b[7] = '-'
	put(8, d, 2)
	b[10] = 'T'
	put(11, h, 2)
	b[13] = ':'
	put(14, mi, 2)
	b[16] = ':'
	put(17, s, 2)
	b[19] = '.'
	put(20, ms, 3)
	b[23] = 'Z'
	return string(b[:])
}

// Decide applies decision rules 2–4 of DESIGN.md to the records found for
// one identifier. It is pure: no store, no clock.
func Decide(v Vocabulary, ch Channel, recs []Record) Decision {
	var refs []RecordRef
	if live := countLive(recs); live > 0 {
		refs = make([]RecordRef, 0, live)
	}
	d, _ := decide(v, ch, recs, refs, nil)
	return d
}

func countLive(recs []Record) int {
	n := 0
	for i := range recs {
		if !recs[i].Deleted {
			n++
		}
	}
	return n
}

// versionCache remembers the last version rendered: the records of one
// batch often share versions (bulk imports), and a hit saves formatting
// and allocating the string.
type versionCache struct {
	t time.Time
	s string
}

func (c *versionCache) get(t time.Time) string {
	if c == nil {
		return VersionString(t)
	}
	if c.s != "" && t.Equal(c.t) {
		return c.s
	}
	c.t, c.s = t, VersionString(t)
	return c.s
}

// decide is Decide appending the decision's RecordRefs to refs, whose
// spare capacity (when there is enough) holds them without allocating.
// The Decision's Records is capped to its own entries, so appending to it
// never overwrites a neighbour's. It returns refs grown by the entries.
func decide(v Vocabulary, ch Channel, recs []Record, refs []RecordRef, vc *versionCache) (Decision, []RecordRef) {
	d := Decision{Channel: ch, Reason: ReasonUnknownContact, Records: []RecordRef{}}
	worst := ReasonGranted
	start := len(refs)
	for i := range recs {
		r := &recs[i]
		if r.Deleted {
			continue
		}
		reason := recordReason(v, ch, r)
		refs = append(refs, RecordRef{
			ID:      r.ID,
			Object:  r.Object,
			Consent: r.Consent[ch],
			Version: vc.get(r.Version),
			Reason:  reason,
		})
		if reason.severity() > worst.severity() {
			worst = reason
		}
	}
	if len(refs) == start {
		return d, refs
	}
	d.Records = refs[start:len(refs):len(refs)]
	d.Reason = worst
	d.Allowed = worst == ReasonGranted
	return d, refs
}

// recordReason is rule 3 for one record.
func recordReason(v Vocabulary, ch Channel, r *Record) Reason {
	if c, _ := v.Classify(r.Consent[Storage]); c == Denied {
		return ReasonStorageDenied
	}
	switch c, _ := v.Classify(r.Consent[ch]); c {
	case Granted:
		return ReasonGranted
	case Denied:
		return ReasonDenied
	case Pending:
		return ReasonPending
	}
	return ReasonMissing
}
