package audit_test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/audit"
)

func TestLogWritesHashedDecisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	key := []byte("0123456789abcdef0123456789abcdef")
	hash := func(id guard.Identifier) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id.Key()))
		return hex.EncodeToString(m.Sum(nil))
	}
	l, err := audit.Open(path, hash)
	if err != nil {
		t.Fatal(err)
	}
	id, err := guard.ParseEmail("max.mustermann@firma.de")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := guard.Decision{Allowed: i%2 == 0, Channel: guard.Email, Reason: guard.ReasonGranted, Identifier: id, At: at,
				Records: []guard.RecordRef{{ID: "003000000000001AAA", Consent: "Ja", Version: "2026-11-28T09:15:02.000Z", Reason: guard.ReasonGranted}}}
			l.Observe(d)
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "mustermann") {
		t.Fatal("audit file holds a plaintext address")
	}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	n := 0
	for sc.Scan() {
		var e audit.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		if e.IdentifierHash != hash(id) || e.IdentifierKind != "email" || !e.At.Equal(at) || len(e.Records) != 1 {
			t.Fatalf("entry %+v", e)
		}
		n++
	}
	if n != 100 {
		t.Fatalf("%d lines, want 100", n)
	}
	// Observe after Close is dropped, not a panic.
	l.Observe(guard.Decision{})
}

func TestOpenFailsOnBadPath(t *testing.T) {
	if _, err := audit.Open(filepath.Join(t.TempDir(), "no", "such", "dir", "f"), guard.Identifier.Key); err == nil {
		t.Fatal("want error")
	}
}
