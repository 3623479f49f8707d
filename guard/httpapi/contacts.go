package httpapi

import (
	"context"
	"time"

	"github.com/consentguard/consentguard/guard"
	"github.com/gin-gonic/gin"
)

// contactView is GET /v1/contacts/{id}: the record as stored (no
// plaintext identifiers: the store has none) and its consent history.
type contactView struct {
	ID        string       `json:"id"`
	Object    string       `json:"object"`
	Version   string       `json:"version"`
	Deleted   bool         `json:"deleted"`
	UpdatedAt string       `json:"updated_at"`
	Consent   consentView  `json:"consent"`
	History   []changeView `json:"history"`
}

// consentView is the consent per channel: the raw word and its meaning.
type consentView struct {
	Email   consentValue `json:"email"`
	Phone   consentValue `json:"phone"`
	Post    consentValue `json:"post"`
	Storage consentValue `json:"storage"`
}

type consentValue struct {
	Value   string        `json:"value"`
	Meaning guard.Consent `json:"meaning"`
	// Unrecognised marks a word the vocabulary does not know; it counts
	// as missing.
	Unrecognised bool `json:"unrecognised,omitempty"`
}

type changeView struct {
	At      string        `json:"at"`
	Version string        `json:"version"`
	Outcome guard.Outcome `json:"outcome"`
	Source  string        `json:"source"`
	Ref     string        `json:"ref,omitempty"`
	Deleted bool          `json:"deleted"`
	Consent rawConsent    `json:"consent"`
}

type rawConsent struct {
	Email   string `json:"email"`
	Phone   string `json:"phone"`
	Post    string `json:"post"`
	Storage string `json:"storage"`
}

type eraseView struct {
	ID      string        `json:"id"`
	Outcome guard.Outcome `json:"outcome"`
}

// handleContactGet serves GET /v1/contacts/{id}.
func (s *server) handleContactGet() gin.HandlerFunc {
	return s.contactRoute(func(ctx context.Context, c *gin.Context, id string) error {
		rec, err := s.contacts.Get(ctx, id)
		if err != nil {
			return err
		}
		hist, err := s.contacts.History(ctx, id)
		if err != nil {
			return err
		}
		writeJSON(c, statusFor(nil), s.contactView(rec, hist))
		return nil
	})
}

// handleContactDelete serves DELETE /v1/contacts/{id}: admin erase, which
// leaves a tombstone so that no older message brings the record back.
func (s *server) handleContactDelete() gin.HandlerFunc {
	return s.contactRoute(func(ctx context.Context, c *gin.Context, id string) error {
		out, err := s.contacts.Erase(ctx, id)
		if err != nil {
			return err
		}
		s.log.Info("contact erased", "id", id, "outcome", out.String())
		writeJSON(c, statusFor(nil), eraseView{ID: id, Outcome: out})
		return nil
	})
}

// contactRoute is what the contact routes share: it normalises the {id},
// runs serve under the store timeout, and answers the error of either.
func (s *server) contactRoute(serve func(ctx context.Context, c *gin.Context, id string) error) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, err := guard.NormalizeRecordID(c.Param("id"))
		if err == nil {
			ctx, cancel := context.WithTimeout(c.Request.Context(), s.timeout)
			defer cancel()
			err = serve(ctx, c, id)
		}
		if err != nil {
			s.fail(c, err)
		}
	}
}

func (s *server) contactView(r guard.Record, hist []guard.Change) contactView {
	v := s.guard.Vocabulary()
	val := func(raw string) consentValue {
		m, known := v.Classify(raw)
		return consentValue{Value: raw, Meaning: m, Unrecognised: !known}
	}
	cv := contactView{
		ID:        r.ID,
		Object:    r.Object,
		Version:   guard.VersionString(r.Version),
		Deleted:   r.Deleted,
		UpdatedAt: guard.VersionString(r.UpdatedAt),
		Consent: consentView{
			Email:   val(r.Consent[guard.Email]),
			Phone:   val(r.Consent[guard.Phone]),
			Post:    val(r.Consent[guard.Post]),
			Storage: val(r.Consent[guard.Storage]),
		},
		History: make([]changeView, 0, len(hist)),
	}
	for _, h := range hist {
		cv.History = append(cv.History, changeView{
			At:      guard.VersionString(h.At),
			Version: guard.VersionString(h.Version),
			Outcome: h.Outcome,
			Source:  h.Source,
			Ref:     h.Ref,
			Deleted: h.Deleted,
			Consent: rawConsent{
				Email:   h.Consent[guard.Email],
				Phone:   h.Consent[guard.Phone],
				Post:    h.Consent[guard.Post],
				Storage: h.Consent[guard.Storage],
			},
		})
	}
	return cv
}

// handleHealthz is liveness: the process serves HTTP.
func (s *server) handleHealthz() gin.HandlerFunc {
	return func(c *gin.Context) {
		writeJSON(c, statusFor(nil), map[string]string{"status": "ok"})
	}
}

// handleReadyz is readiness: 200 when the store answers a ping within the
// timeout, else 503.
func (s *server) handleReadyz() gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx, cancel := context.WithTimeout(c.Request.Context(), s.timeout)
		defer cancel()
		start := time.Now()
		if err := s.contacts.Ping(ctx); err != nil {
			s.log.Warn("readiness: store does not answer", "err", err, "after", time.Since(start))
			writeJSON(c, statusFor(guard.ErrUnavailable), map[string]string{"status": "unavailable", "reason": string(guard.ReasonStoreUnavailable)})
			return
		}
		writeJSON(c, statusFor(nil), map[string]string{"status": "ready"})
	}
}
