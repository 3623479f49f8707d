package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/consentguard/consentguard/guard"
	"github.com/gin-gonic/gin"
)

// observe counts and times every request and logs it at debug level. The
// log carries a masked rendering of the query, never the raw one: it holds
// email addresses and phone numbers.
func (s *server) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	elapsed := time.Since(start)
	status := c.Writer.Status()
	s.metrics.observe(c.Request.Method, c.FullPath(), status, elapsed.Seconds())
	if s.log.Enabled(c.Request.Context(), slog.LevelDebug) {
		s.log.LogAttrs(c.Request.Context(), slog.LevelDebug, "http request",
			slog.String("method", c.Request.Method),
			slog.String("path", c.Request.URL.Path),
			slog.String("query", maskQuery(c.Request.URL.RawQuery)),
			slog.Int("status", status),
			slog.Duration("duration", elapsed),
			slog.String("remote", c.Request.RemoteAddr),
		)
	}
}

// maskQuery renders a query for logs: email and phone values masked,
// values of parameters it does not know replaced by "***".
func maskQuery(raw string) string {
	if raw == "" {
		return ""
	}
	q, err := url.ParseQuery(raw)
	if err != nil && len(q) == 0 {
		return "(unparsable)"
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		for _, v := range q[k] {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(url.QueryEscape(k))
			b.WriteByte('=')
			switch k {
			case "email":
				v = guard.Mask(guard.KindEmail, v)
			case "phone":
				v = guard.Mask(guard.KindPhone, v)
			case "channel", "contact_id", "column", "annotate", "object", "token_present":
			default:
				v = "***"
			}
			b.WriteString(url.QueryEscape(v))
		}
	}
	return b.String()
}

// recoverPanics turns a panicking handler into a 500 JSON answer
// ("allowed":false) and an error log, and keeps the server up.
func (s *server) recoverPanics(c *gin.Context) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if v == http.ErrAbortHandler {
			panic(v)
		}
		s.log.LogAttrs(context.Background(), slog.LevelError, "panic serving HTTP request",
			slog.String("method", c.Request.Method),
			slog.String("route", c.FullPath()),
			slog.String("panic", fmt.Sprint(v)),
			slog.String("stack", string(debug.Stack())),
		)
		if !c.Writer.Written() {
			writeError(c, errInternal)
		}
		c.Abort()
	}()
	c.Next()
}

// fail answers err (mapped by statusFor) and logs server-side failures.
func (s *server) fail(c *gin.Context, err error) {
	if statusFor(err) >= 500 {
		s.log.LogAttrs(c.Request.Context(), slog.LevelWarn, "request failed",
			slog.String("method", c.Request.Method),
			slog.String("route", c.FullPath()),
			slog.String("err", err.Error()),
		)
	}
	writeError(c, err)
}
