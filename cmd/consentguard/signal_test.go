package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for the real one: with
// CONSENTGUARD_TEST_MAIN=1 it runs main() on its arguments.
func TestMain(m *testing.M) {
	if os.Getenv("CONSENTGUARD_TEST_MAIN") == "1" {
		os.Args = append([]string{"consentguard"}, os.Args[1:]...)
		main()
		return
	}
	os.Exit(m.Run())
}

// The process (not just run) stops cleanly on SIGTERM: listeners close and
// it exits 0.
func TestServeExitsOnSIGTERM(t *testing.T) {
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Env = append(os.Environ(), "CONSENTGUARD_TEST_MAIN=1", "CONSENTGUARD_HTTP_LISTEN=127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("no listening line: %v\n%s", err, stderr.String())
	}
	m := listenLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("unexpected first line %q", line)
	}
	go io.Copy(io.Discard, stdout)
	resp, err := http.Get("http://" + m[2] + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15 s of SIGTERM")
	}
	if !strings.Contains(stderr.String(), "shutting down") || !strings.Contains(stderr.String(), "stopped") {
		t.Fatalf("shutdown not logged:\n%s", stderr.String())
	}
	if _, err := http.Get("http://" + m[2] + "/healthz"); err == nil {
		t.Fatal("still listening after exit")
	}
}
