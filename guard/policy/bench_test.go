package policy_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard/policy"
)

// BenchmarkPolicy sends RCPT requests over 8 persistent connections, as 8
// Postfix smtpd processes would, alternating an allowed and a denied
// recipient. Target: ≥ 20,000 requests/s.
func BenchmarkPolicy(b *testing.B) {
	const conns = 8
	g, _ := mustGuard(b)
	addr := startPolicy(b, g, policy.Options{})
	reqs := [2]string{request("RCPT", "ja@example.de"), request("RCPT", "nein@example.de")}
	want := [2]string{"action=DUNNO\n", "action=550 5.7.1 <nein@example.de>: no email consent (consent_denied)\n"}

	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, conns)
	for i, c := range cs {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReader(c)
			for j := range n {
				k := (i + j) & 1
				if _, err := io.WriteString(c, reqs[k]); err != nil {
					errs <- err.Error()
					return
				}
				line, err := br.ReadString('\n')
				if err != nil || line != want[k] {
					errs <- "reply " + strings.TrimSpace(line)
					return
				}
				if empty, err := br.ReadString('\n'); err != nil || empty != "\n" {
					errs <- "no empty line after reply"
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for e := range errs {
		b.Fatal(e)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
}
