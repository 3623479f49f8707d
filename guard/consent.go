package guard

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Channel is a way of reaching a person, or the storage permission.
type Channel uint8

// The channels, in the order records hold them.
const (
	Email Channel = iota
	Phone
	Post
	Storage
	NumChannels = 4
)

var channelNames = [NumChannels]string{"email", "phone", "post", "storage"}

// Channels lists every channel in record order.
var Channels = [NumChannels]Channel{Email, Phone, Post, Storage}

func (c Channel) String() string {
	if int(c) < len(channelNames) {
		return channelNames[c]
	}
	return fmt.Sprintf("channel(%d)", uint8(c))
}

// ParseChannel reads a channel name: email, phone, post or storage.
func ParseChannel(s string) (Channel, error) {
	for i, n := range channelNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return Channel(i), nil
		}
	}
	return 0, fmt.Errorf("%w: %q (want email, phone, post or storage)", ErrInvalidChannel, s)
}

// MarshalText renders the channel name.
func (c Channel) MarshalText() ([]byte, error) {
	if int(c) >= NumChannels {
		return nil, fmt.Errorf("%w: %d", ErrInvalidChannel, uint8(c))
	}
	return []byte(channelNames[c]), nil
}

// UnmarshalText parses a channel name.
func (c *Channel) UnmarshalText(b []byte) error {
	v, err := ParseChannel(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// Consent is the meaning of a consent value. The order matters: a lesser
// consent is more restrictive (Denied < Missing < Pending < Granted), and
// ingest ties keep the lesser one.
type Consent int8

// Consent meanings, least permissive first.
const (
	Denied  Consent = iota // "Nein"
	Missing                // nothing, or a word the vocabulary does not know
	Pending                // "Abfrage ausstehend"
	Granted                // "Ja"
)

func (c Consent) String() string {
	switch c {
	case Denied:
		return "denied"
	case Missing:
		return "missing"
	case Pending:
		return "pending"
	case Granted:
		return "granted"
	}
	return fmt.Sprintf("consent(%d)", int8(c))
}

// MarshalJSON renders the meaning as a word.
func (c Consent) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

// Vocabulary maps the words Salesforce stores to their meaning. Matching
// ignores surrounding space and case. The first word of Granted and Denied is
// the canonical one that checkbox fields are translated to.
type Vocabulary struct {
	Granted []string `yaml:"granted" json:"granted"`
	Denied  []string `yaml:"denied" json:"denied"`
	Pending []string `yaml:"pending" json:"pending"`
}

// DefaultVocabulary is the German picklist: Ja / Nein / Abfrage ausstehend.
func DefaultVocabulary() Vocabulary {
	return Vocabulary{
		Granted: []string{"Ja"},
		Denied:  []string{"Nein"},
		Pending: []string{"Abfrage ausstehend"},
	}
}

// OrDefault returns v, or DefaultVocabulary() when v lists no word at all
// (the zero value of an option or a configuration left empty).
func (v Vocabulary) OrDefault() Vocabulary {
	if len(v.Granted) == 0 && len(v.Denied) == 0 && len(v.Pending) == 0 {
		return DefaultVocabulary()
	}
	return v
}

// Classify gives the meaning of a stored value. known is false for a
// non-empty word the vocabulary does not list; such a value counts as
// Missing, never as consent.
func (v Vocabulary) Classify(raw string) (c Consent, known bool) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return Missing, true
	}
	if match(v.Denied, s) {
		return Denied, true
	}
	if match(v.Granted, s) {
		return Granted, true
	}
	if match(v.Pending, s) {
		return Pending, true
	}
	return Missing, false
}

// Word returns the canonical word for a meaning ("" for Missing).
func (v Vocabulary) Word(c Consent) string {
	var l []string
	switch c {
	case Granted:
		l = v.Granted
	case Denied:
		l = v.Denied
	case Pending:
		l = v.Pending
	}
	if len(l) == 0 {
		return ""
	}
	return l[0]
}

// Validate reports an empty or ambiguous vocabulary.
func (v Vocabulary) Validate() error {
	if len(v.Granted) == 0 || len(v.Denied) == 0 {
		return fmt.Errorf("vocabulary needs at least one granted and one denied word")
	}
	seen := map[string]string{}
	for name, l := range map[string][]string{"granted": v.Granted, "denied": v.Denied, "pending": v.Pending} {
		for _, w := range l {
			k := strings.ToLower(strings.TrimSpace(w))
			if k == "" {
				return fmt.Errorf("vocabulary %s has an empty word", name)
			}
			if other, ok := seen[k]; ok && other != name {
				return fmt.Errorf("vocabulary word %q is both %s and %s", w, other, name)
			}
			seen[k] = name
		}
	}
	return nil
}

func match(words []string, s string) bool {
	for _, w := range words {
		if w == s || strings.EqualFold(w, s) {
			return true
		}
	}
	return false
}
