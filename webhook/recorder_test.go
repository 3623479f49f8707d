package webhook

import (
	"bytes"
	"net/http"
	"net/http/httptest"
)

// recorder is a minimal ResponseWriter for calling ServeHTTP directly.
type recorder struct {
	hdr  http.Header
	code int
	body bytes.Buffer
}

func newRecorder() *recorder { return &recorder{hdr: http.Header{}} }

func (r *recorder) Header() http.Header { return r.hdr }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}

func newRequest(target string, body []byte) *http.Request {
	return httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
}
