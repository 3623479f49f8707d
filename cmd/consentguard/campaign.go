package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/httpapi"
	"github.com/consentguard/consentguard/guard/scrub"
	"github.com/consentguard/consentguard/webhook"
	"github.com/consentguard/consentguard/webhook/csvimport"
)

// maxListBytes bounds a CSV posted to /v1/scrub or /v1/import.
const maxListBytes = 512 << 20

// campaignRoutes mounts POST /v1/scrub and POST /v1/import on the API.
func campaignRoutes(a *app) func(*gin.Engine) {
	return func(r *gin.Engine) {
		r.POST("/v1/scrub", httpapi.RequireScope("scrub"), gin.WrapF(scrubHandler(a.guard, a.log)))
		r.POST("/v1/import", httpapi.RequireScope("import"), gin.WrapF(importHandler(a)))
	}
}

func jsonError(w http.ResponseWriter, status int, reason guard.Reason, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	body := map[string]any{"error": msg}
	if reason != "" {
		body["allowed"] = false
		body["reason"] = reason
	}
	_ = json.NewEncoder(w).Encode(body)
}

// scrubHandler streams a campaign list through the guard: CSV in, the
// allowed rows (or every row annotated) out. The counts follow as HTTP
// trailers. A store failure before the first row is a 503; after it, the
// connection is cut so the client cannot mistake a partial list for a
// whole one.
func scrubHandler(g *guard.Guard, log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ch, err := guard.ParseChannel(q.Get("channel"))
		if err != nil {
			jsonError(w, http.StatusBadRequest, "", "channel: want email, phone, post or storage")
			return
		}
		opts := scrub.Options{Channel: ch, Column: q.Get("column")}
		if opts.Column == "" {
			jsonError(w, http.StatusBadRequest, "", "column: required (the header of the identifier column)")
			return
		}
		opts.Annotate, _ = strconv.ParseBool(q.Get("annotate"))
		var ok bool
		if opts.Kind, ok = scrubKind(q.Get("kind")); !ok {
			jsonError(w, http.StatusBadRequest, "", "kind: want email, phone or contact")
			return
		}
		body := http.MaxBytesReader(w, r.Body, maxListBytes)
		w.Header().Set("Trailer", "X-Scrub-Rows, X-Scrub-Allowed, X-Scrub-Denied")
		sw := &startedWriter{w: w, header: func() {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			w.WriteHeader(http.StatusOK)
		}}
		bw := bufio.NewWriterSize(sw, 32<<10)
		sum, err := scrub.Run(r.Context(), g, bufio.NewReaderSize(body, 64<<10), bw, opts)
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			log.Warn("scrub failed", "channel", ch.String(), "rows", sum.Rows, "err", err)
			if sw.started {
				panic(http.ErrAbortHandler)
			}
			var mbe *http.MaxBytesError
			switch {
			case errors.Is(err, guard.ErrUnavailable):
				jsonError(w, http.StatusServiceUnavailable, guard.ReasonStoreUnavailable, "consent store unavailable")
			case errors.As(err, &mbe):
				jsonError(w, http.StatusRequestEntityTooLarge, "", "list too large")
			default:
				jsonError(w, http.StatusBadRequest, "", err.Error())
			}
			return
		}
		if !sw.started {
			sw.header()
		}
		w.Header().Set("X-Scrub-Rows", strconv.Itoa(sum.Rows))
		w.Header().Set("X-Scrub-Allowed", strconv.Itoa(sum.Allowed))
		w.Header().Set("X-Scrub-Denied", strconv.Itoa(sum.Denied))
	}
}

// scrubKind reads what a list's identifier column holds (?kind= and the
// scrub command's -kind): email, phone or contact (contact_id); "" leaves
// it to the channel (scrub.DefaultKind).
func scrubKind(s string) (guard.Kind, bool) {
	switch s {
	case "":
		return 0, true
	case "email":
		return guard.KindEmail, true
	case "phone":
		return guard.KindPhone, true
	case "contact", "contact_id":
		return guard.KindRecordID, true
	}
	return 0, false
}

// startedWriter writes the response header on the first body byte.
type startedWriter struct {
	w       http.ResponseWriter
	header  func()
	started bool
}

func (s *startedWriter) Write(p []byte) (int, error) {
	if !s.started {
		s.started = true
		s.header()
	}
	return s.w.Write(p)
}

// importHandler loads a Salesforce CSV export, as `consentguard import`.
func importHandler(a *app) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		object := r.URL.Query().Get("object")
		if object == "" {
			object = "Contact"
		}
		body := http.MaxBytesReader(w, r.Body, maxListBytes)
		sum, err := csvimport.Run(r.Context(), a.store, bufio.NewReaderSize(body, 64<<10), a.importOptions(object))
		status := http.StatusOK
		resp := map[string]any{"summary": sum}
		var mbe *http.MaxBytesError
		switch {
		case err == nil:
		case errors.As(err, &mbe):
			status, resp["error"] = http.StatusRequestEntityTooLarge, "file too large"
		case errors.Is(err, webhook.ErrUnknownObject):
			status, resp["error"] = http.StatusBadRequest, "object: not in salesforce.objects"
		case errors.Is(err, csvimport.ErrStore):
			status, resp["error"] = http.StatusServiceUnavailable, "consent store unavailable; rows before the failure are written, re-running the import is safe"
		default:
			status, resp["error"] = http.StatusBadRequest, err.Error()
		}
		if err != nil {
			a.log.Warn("import failed", "object", object, "rows", sum.Rows, "err", err)
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(resp)
	}
}
