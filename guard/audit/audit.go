// Package audit appends every consent decision to a JSON Lines file, so
// that a data-protection officer can later show why a mail went out or a
// call was placed (GDPR Art. 7(1), UWG §7a).
//
// Identifiers are written only through the digest function given to Open —
// consentguard passes the store's cache.Store.IdentifierHash, hex
// HMAC-SHA256(hash_key, "kind:value") — so the file holds no plaintext email
// or phone, yet a known address can be looked up by hashing it (the
// hash_key is needed for that).
package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/consentguard/consentguard/guard"
)

// Entry is one line of the audit file.
type Entry struct {
	At             time.Time         `json:"at"`
	Channel        guard.Channel     `json:"channel"`
	Allowed        bool              `json:"allowed"`
	Reason         guard.Reason      `json:"reason"`
	IdentifierKind string            `json:"identifier_kind,omitempty"`
	IdentifierHash string            `json:"identifier_hash,omitempty"`
	Records        []guard.RecordRef `json:"records"`
}

// Log is an append-only decision log. Entries are buffered and flushed
// every FlushInterval and on Close.
type Log struct {
	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	digest func(guard.Identifier) string
	err    error
	done   chan struct{}
	closed bool
	wg     sync.WaitGroup
}

// FlushInterval is how long an entry may sit in the buffer.
const FlushInterval = time.Second

// Open opens (creating if needed) the file at path for appending. digest
// turns an identifier into the only form the file keeps of it.
func Open(path string, digest func(guard.Identifier) string) (*Log, error) {
	if digest == nil {
		return nil, errors.New("audit: no identifier digest")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := &Log{f: f, w: bufio.NewWriterSize(f, 64<<10), digest: digest, done: make(chan struct{})}
	l.wg.Add(1)
	go l.flusher()
	return l, nil
}

// Observe appends a decision; it is the guard.Options.Observe hook.
func (l *Log) Observe(d guard.Decision) {
	e := Entry{At: d.At.UTC(), Channel: d.Channel, Allowed: d.Allowed, Reason: d.Reason, Records: d.Records}
	if d.Identifier.Kind != 0 && d.Identifier.Value != "" {
		e.IdentifierKind = d.Identifier.Kind.String()
		e.IdentifierHash = l.digest(d.Identifier)
	}
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if _, err := l.w.Write(b); err != nil && l.err == nil {
		l.err = err
	}
}

// Err reports the first write error, if any.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *Log) flusher() {
	defer l.wg.Done()
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			_ = l.Flush()
		}
	}
}

// Flush writes buffered entries to the file.
func (l *Log) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	if err := l.w.Flush(); err != nil && l.err == nil {
		l.err = err
	}
	return l.err
}

// Close flushes, syncs and closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	close(l.done)
	ferr := l.w.Flush()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
	serr := l.f.Sync()
	cerr := l.f.Close()
	return errors.Join(ferr, serr, cerr)
}
