package policy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/consentguard/consentguard/guard/policy"
)

// fragment is the documented main.cf fragment; the test uses it verbatim,
// with only the policy server's port replaced.
const fragment = "../../deploy/postfix/main.cf.fragment"

// TestRealPostfix starts a private Postfix instance (own config, queue and
// data directories, maillog_file) whose smtpd asks our policy server, and
// relays to a go-smtp sink. Postfix must reject a Nein recipient at RCPT,
// relay the Ja recipient, defer when the store is down, and defer when the
// policy server itself is down.
func TestRealPostfix(t *testing.T) {
	pfx := findPostfix(t)
	if testing.Short() {
		t.Skip("starts a Postfix instance")
	}

	g, redis := mustGuard(t)
	polAddr := startPolicyServer(t, g, policy.Options{})
	k := startPostfixSink(t)

	frag, err := os.ReadFile(fragment)
	if err != nil {
		t.Fatal(err)
	}
	_, polPort, _ := net.SplitHostPort(polAddr.addr)
	if !bytes.Contains(frag, []byte("inet:127.0.0.1:9998")) {
		t.Fatalf("%s no longer holds inet:127.0.0.1:9998", fragment)
	}
	frag = bytes.ReplaceAll(frag, []byte("inet:127.0.0.1:9998"), []byte("inet:127.0.0.1:"+polPort))

	inst := startPostfix(t, pfx, k.addr, string(frag))

	// 1. Nein is rejected at RCPT with our text, Ja is relayed.
	c := dialPostfix(t, inst.smtpd)
	if err := c.Mail("news@shop.example", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	var se *smtp.SMTPError
	err = c.Rcpt("nein@example.de", nil)
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) ||
		!strings.Contains(se.Message, "<nein@example.de>: no email consent (consent_denied)") {
		t.Errorf("RCPT Nein through Postfix: %v; want 550 5.7.1 … no email consent (consent_denied)", err)
	}
	if err := c.Rcpt("ja@example.de", nil); err != nil {
		t.Fatalf("RCPT Ja through Postfix: %v\n%s", err, inst.log())
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "From: news@shop.example\r\nSubject: Postfix test\r\n\r\nHallo Ja.\r\n")
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	c.Quit()

	msgs := k.wait(t, 1, 30*time.Second, inst)
	if got := msgs[0].to; len(got) != 1 || got[0] != "ja@example.de" {
		t.Errorf("sink got recipients %q, want [ja@example.de]", got)
	}
	if !bytes.Contains(msgs[0].data, []byte("Hallo Ja.")) {
		t.Errorf("relayed message lacks the body: %q", msgs[0].data)
	}

	// 2. Store down: the policy server answers DEFER_IF_PERMIT.
	redis.Stop(t)
	c = dialPostfix(t, inst.smtpd)
	if err := c.Mail("news@shop.example", nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("ja@example.de", nil)
	if !errors.As(err, &se) || se.Code/100 != 4 || !strings.Contains(se.Message, "consent store unavailable") {
		t.Errorf("RCPT with the store down: %v; want 4xx consent store unavailable", err)
	}
	c.Quit()

	// 3. Policy server down: Postfix uses default_action, a temporary reject.
	polAddr.shutdown()
	c = dialPostfix(t, inst.smtpd)
	if err := c.Mail("news@shop.example", nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("ja@example.de", nil)
	if !errors.As(err, &se) || se.Code/100 != 4 || !strings.Contains(se.Message, "Consent service unavailable") {
		t.Errorf("RCPT with the policy server down: %v; want 4xx Consent service unavailable\n%s", err, inst.log())
	}
	c.Quit()
	if n := len(k.messages()); n != 1 {
		t.Errorf("sink got %d messages, want 1", n)
	}
}

func findPostfix(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("postfix")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/postfix"); serr == nil {
			p, err = "/usr/sbin/postfix", nil
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("postfix not installed (CI=true): %v", err)
		}
		t.Skipf("postfix not installed: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("starting a Postfix instance needs root")
	}
	return p
}

type postfixInstance struct {
	bin, dir, smtpd string
}

func (p *postfixInstance) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	return "--- maillog ---\n" + string(b)
}

func (p *postfixInstance) run(args ...string) error {
	cmd := exec.Command(p.bin, append([]string{"-c", filepath.Join(p.dir, "etc")}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("postfix %s: %v: %s\n%s", strings.Join(args, " "), err, out, p.log())
	}
	return nil
}

func startPostfix(t *testing.T, bin, relay, fragment string) *postfixInstance {
	t.Helper()
	// Postfix daemons run as user postfix and must reach the queue: not
	// t.TempDir, which is private to root.
	dir, err := os.MkdirTemp("", "consentguard-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &postfixInstance{bin: bin, dir: dir}
	t.Cleanup(func() {
		if err := p.run("stop"); err != nil {
			t.Logf("stopping postfix: %v", err)
		}
		// Wait for the master to go away before removing its queue.
		for i := 0; i < 100 && p.run("status") == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		os.RemoveAll(dir)
	})
	pu, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("user postfix: %v", err)
	}
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	for _, d := range []string{"etc", "queue", "data"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		t.Fatal(err)
	}
	p.smtpd = freeAddr(t)

	mainCF := fmt.Sprintf(`# private test instance
compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = %[1]s
maillog_file = %[1]s/maillog
myhostname = mta.consentguard.test
mydomain = consentguard.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:%[2]s
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_policy_service_retry_delay = 1s

%[3]s
`, dir, portOf(relay), fragment)
	masterCF := fmt.Sprintf(`%s inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, p.smtpd)
	if err := os.WriteFile(filepath.Join(dir, "etc", "main.cf"), []byte(mainCF), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "master.cf"), []byte(masterCF), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.run("check"); err != nil {
		t.Fatal(err)
	}
	if err := p.run("start"); err != nil {
		t.Fatal(err)
	}
	// Wait for smtpd to answer.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.smtpd, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix smtpd on %s did not come up: %v\n%s", p.smtpd, err, p.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p
}

func dialPostfix(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.CommandTimeout = 30 * time.Second
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// postfixSink records what Postfix relays.
type postfixSink struct {
	addr string
	mu   sync.Mutex
	msgs []sinkMsg
}

type sinkMsg struct {
	from string
	to   []string
	data []byte
}

func startPostfixSink(t *testing.T) *postfixSink {
	t.Helper()
	k := &postfixSink{}
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{k: k}, nil
	}))
	s.Domain = "sink.test"
	s.ErrorLog = discardLog{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k.addr = l.Addr().String()
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return k
}

func (k *postfixSink) messages() []sinkMsg {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]sinkMsg(nil), k.msgs...)
}

// wait polls until n messages arrived (a deadline against a hung test,
// not a timing assertion).
func (k *postfixSink) wait(t *testing.T, n int, max time.Duration, p *postfixInstance) []sinkMsg {
	t.Helper()
	deadline := time.Now().Add(max)
	for {
		if m := k.messages(); len(m) >= n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink got %d messages, want %d\n%s", len(k.messages()), n, p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type sinkSession struct {
	k   *postfixSink
	msg sinkMsg
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.msg = sinkMsg{from: from}
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.to = append(s.msg.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.data = b
	s.k.mu.Lock()
	s.k.msgs = append(s.k.msgs, s.msg)
	s.k.mu.Unlock()
	return nil
}

func (s *sinkSession) Reset()        { s.msg = sinkMsg{} }
func (s *sinkSession) Logout() error { return nil }

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}
