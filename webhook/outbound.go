package webhook

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/consentguard/consentguard/guard"
)

// outbound serves POST /salesforce/outbound: token (401) → size (413) →
// decode (400) → organisation (403) → dedupe → map → one Apply for every
// new notification that maps (500 on failure) → remember their Ids → ack,
// or 400 naming the first notification that could not be mapped.
// It returns the HTTP status written.
func (h *Handler) outbound(w http.ResponseWriter, r *http.Request) int {
	if !h.token.equal(r.URL.Query().Get("token")) {
		return writeFault(w, http.StatusUnauthorized, "Client", "invalid or missing token")
	}
	buf, err := h.readBody(w, r)
	if errors.Is(err, errTooLarge) {
		return writeFault(w, http.StatusRequestEntityTooLarge, "Client",
			fmt.Sprintf("message larger than %d bytes", h.maxBody))
	}
	if err != nil {
		return writeFault(w, http.StatusBadRequest, "Client", "could not read the request body")
	}
	msg, err := decodeOutbound(buf.Bytes())
	h.release(buf)
	if err != nil {
		h.log.Info("outbound message rejected", "err", err)
		return writeFault(w, http.StatusBadRequest, "Client", Printable(err.Error(), 300))
	}
	if !h.orgAllowed(msg.OrganizationID) {
		h.log.Warn("outbound message from an organisation not allowed", "org", Printable(msg.OrganizationID, 20))
		return writeFault(w, http.StatusForbidden, "Client", "organization not allowed")
	}

	// Dedupe on notification Ids; one POST may repeat one, too.
	org := msg.OrganizationID[:15]
	keys := make([]string, 0, len(msg.Notifications))
	first := make([]int, 0, len(msg.Notifications)) // index of the notification behind keys[i]
	inPost := make(map[string]bool, len(msg.Notifications))
	for i := range msg.Notifications {
		k := "outbound:" + org + ":" + msg.Notifications[i].ID
		if inPost[k] {
			continue
		}
		inPost[k] = true
		keys = append(keys, k)
		first = append(first, i)
	}
	ctx, cancel := h.storeContext(r)
	defer cancel()
	seen, err := h.st.Seen(ctx, keys)
	if err == nil && len(seen) != len(keys) {
		err = fmt.Errorf("store answered %d of %d dedupe keys", len(seen), len(keys))
	}
	if err != nil {
		h.log.Error("outbound message not stored: dedupe lookup failed", "org", org, "err", err)
		return writeFault(w, http.StatusInternalServerError, "Server", "temporarily unable to store notifications; retry later")
	}

	opts := h.recordOptions()
	var (
		ups      = make([]guard.Update, 0, len(keys))
		warns    = make([][]Warning, 0, len(keys))
		done     = make([]string, 0, len(keys)) // keys to remember after the write
		dup      = len(msg.Notifications) - len(keys)
		empty    = 0
		rejected = "" // the first notification that could not be mapped
	)
	for j, k := range keys {
		if seen[j] {
			dup++
			continue
		}
		done = append(done, k)
		n := &msg.Notifications[first[j]]
		if n.empty() {
			empty++
			continue
		}
		id, _ := n.field("Id")
		up, ws, err := h.mapping.Record(n.Object, id, n.field, opts)
		if err != nil {
			// The others are still written (and remembered), so that one
			// bad notification cannot hold back its neighbours; the POST is
			// not acked, and Salesforce's redeliveries of it cost only a
			// dedupe lookup for the good ones.
			done = done[:len(done)-1]
			h.log.Info("outbound notification rejected", "org", org, "notification", n.ID, "err", err)
			if rejected == "" {
				rejected = Printable(fmt.Sprintf("notification %d (%s): %v", first[j]+1, n.ID, err), 300)
			}
			continue
		}
		up.Source, up.Ref = "outbound", n.ID
		ups = append(ups, up)
		warns = append(warns, ws)
	}

	if len(ups) > 0 {
		outs, err := h.st.Apply(ctx, ups)
		if err == nil && len(outs) != len(ups) {
			err = fmt.Errorf("store answered %d of %d updates", len(outs), len(ups))
		}
		if err != nil {
			h.log.Error("outbound message not stored; Salesforce will retry", "org", org,
				"notifications", len(msg.Notifications), "err", err)
			return writeFault(w, http.StatusInternalServerError, "Server", "temporarily unable to store notifications; retry later")
		}
		h.countOutcomes("outbound", outs)
	}
	if len(done) > 0 {
		// The writes are durable; failing to remember only costs a
		// redundant (idempotent) write on a redelivery.
		if err := h.st.Remember(ctx, done, h.ttl); err != nil {
			h.log.Warn("could not remember notification ids", "org", org, "count", len(done), "err", err)
		}
	}
	for i := range ups {
		h.countWarnings("outbound", &ups[i], warns[i])
	}
	h.m.records.WithLabelValues("outbound", "duplicate").Add(float64(dup))
	h.m.records.WithLabelValues("outbound", "empty").Add(float64(empty))
	h.log.Debug("outbound message stored", "org", org, "notifications", len(msg.Notifications),
		"applied", len(ups), "duplicates", dup, "empty", empty)
	if rejected != "" {
		return writeFault(w, http.StatusBadRequest, "Client", rejected)
	}

	return writeBody(w, http.StatusOK, contentTypeXML, []byte(ackEnvelope))
}

// writeFault answers with a SOAP 1.1 fault. msg describes the request,
// never an internal error.
func writeFault(w http.ResponseWriter, status int, code, msg string) int {
	return writeBody(w, status, contentTypeXML, faultEnvelope(code, msg))
}
