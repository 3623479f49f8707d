package guard

import "time"

// Record is one Salesforce Contact or Lead as the store holds it: consent per
// channel as the raw word Salesforce sent, and the version it was written at.
// A record never carries plaintext identifiers.
type Record struct {
	ID      string // 18-character Salesforce Id
	Object  string // "Contact", "Lead"
	Version time.Time
	// Consent holds the stored word per channel, indexed by Channel;
	// "" when Salesforce sent nothing.
	Consent [NumChannels]string
	// Deleted marks a tombstone: the record was deleted at Version and no
	// older write may bring it back. Lookups do not return tombstones.
	Deleted bool
	// UpdatedAt is when the store last changed the record.
	UpdatedAt time.Time
}

// Update is one record state to write, as delivered by Salesforce or an
// import. It carries the record's normalised identifiers in plaintext; the
// store keeps only their keyed hashes.
//
// The store applies it under the ingest rules of DESIGN.md: a newer version
// replaces; an equal version keeps the lesser consent per channel and the
// identifiers both carry; an update without a version (zero Version) can only
// lower consent; a delete leaves a tombstone that older writes cannot pass.
type Update struct {
	ID          string
	Object      string
	Version     time.Time // zero: unversioned
	Deleted     bool
	Consent     [NumChannels]string
	Identifiers []Identifier // email and phone; record Ids are ignored
	// Source says where the update came from ("outbound", "events",
	// "import", "sync", "erase"); Ref a message or notification Id. Both go
	// into the record's history.
	Source string
	Ref    string
}

// Outcome is what the store did with an Update.
type Outcome uint8

// Outcomes of applying an Update.
const (
	Created    Outcome = iota + 1 // no record existed
	Replaced                      // newer version replaced the record
	Merged                        // equal version: lesser consent kept
	Restricted                    // unversioned update lowered consent
	Tombstoned                    // delete applied
	Stale                         // older than (or blocked by) the stored version: ignored
	Unchanged                     // nothing to change
)

var outcomeNames = [...]string{"", "created", "replaced", "merged", "restricted", "tombstoned", "stale", "unchanged"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) && o != 0 {
		return outcomeNames[o]
	}
	return "unknown"
}

// MarshalText renders the outcome name.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// Change is one entry of a record's consent history: what was applied, when,
// from where, and the resulting consent.
type Change struct {
	At      time.Time
	Version time.Time
	Outcome Outcome
	Source  string
	Ref     string
	Consent [NumChannels]string
	Deleted bool
}
