// Package redistest starts a real redis-server for tests: a throwaway
// process on a free 127.0.0.1 port, in a temporary directory, without
// persistence (--save "" --appendonly no). It is the test helper behind the
// rule that the store is tested against real Redis, never a mock.
//
// If redis-server is not on PATH the test is skipped, unless the CI
// environment variable is non-empty, in which case it fails.
package redistest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long Start and Restart wait for the server to answer PING.
const startTimeout = 20 * time.Second

// Server is one redis-server process owned by a test.
type Server struct {
	bin         string
	dir         string
	port        int
	clusterPort int // cluster bus port; 0: not a Cluster node

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start launches redis-server on a free loopback port and registers its
// shutdown with tb.Cleanup. It returns once the server answers PING.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return startServer(tb, false)
}

// StartCluster launches a one-node Redis Cluster: cluster mode on, every
// slot on this node, announced as 127.0.0.1. It returns once the node
// reports cluster_state:ok, so that a redis.ClusterClient given Addr works
// as against any Cluster (ForEachMaster sees one master). Restart brings
// the node back with its slots (nodes.conf stays in the directory).
func StartCluster(tb testing.TB) *Server {
	tb.Helper()
	s := startServer(tb, true)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		tb.Fatalf("redistest: assign cluster slots: %v", err)
	}
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return s
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("redistest: cluster on %s not ok within %s: %v %q", s.Addr(), startTimeout, err, info)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func startServer(tb testing.TB, cluster bool) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("redistest: redis-server not found on PATH (CI is set): %v", err)
		}
		tb.Skipf("redistest: redis-server not found on PATH: %v", err)
	}
	s := &Server{bin: bin, dir: tb.TempDir()}
	tb.Cleanup(s.kill)
	// A free port can be taken by someone else between probing and binding;
	// retry a few times with fresh ports.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			tb.Fatalf("redistest: find free port: %v", err)
		}
		s.port = port
		if cluster {
			// The bus port defaults to port+10000, which may not exist.
			if s.clusterPort, err = freePort(); err != nil {
				tb.Fatalf("redistest: find free port: %v", err)
			}
		}
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	tb.Fatalf("redistest: start redis-server: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is a redis:// URL for the server (database 0).
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Client returns a new go-redis client for the server, closed on test cleanup.
// Timeouts are generous so slow CI machines do not produce false failures,
// retries are off so a stopped server is noticed at once, and context
// deadlines are honoured.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:         s.Addr(),
		DialTimeout:  2 * time.Second,
		ReadTimeout:  5 * time.Second,
		WriteTimeout: 5 * time.Second,
		MaxRetries:   -1,
		// One dial attempt: a stopped server is an error at once.
		DialerRetries: 1,
		// Honour context deadlines (the guard's store timeout) on reads and writes.
		ContextTimeoutEnabled: true,
	})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop kills the server (SIGKILL) and waits for it to exit, simulating
// Redis going away. Data is lost; the port is kept for Restart.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	s.kill()
}

// Restart starts a fresh server on the same port (empty data) and waits
// until it answers PING. It stops a running server first.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.kill()
	var err error
	// The kernel may hold the port briefly after the kill; retry.
	deadline := time.Now().Add(startTimeout)
	for {
		if err = s.start(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: restart redis-server on %s: %v", s.Addr(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--loglevel", "warning",
	}
	if s.clusterPort != 0 {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(s.clusterPort),
			"--cluster-announce-ip", "127.0.0.1",
		)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	out := &lockedWriter{} // stdout and stderr, for the error below
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done

	if err := waitPing(s.Addr(), done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		s.cmd, s.done = nil, nil
		return fmt.Errorf("%w; output: %s", err, out.String())
	}
	return nil
}

func (s *Server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// waitPing dials addr and sends PING until it gets +PONG, the process exits
// or startTimeout passes.
func waitPing(addr string, done <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("redis-server exited early (last error: %v)", lastErr)
		default:
		}
		if lastErr = ping(addr); lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s did not answer PING within %s: %v", addr, startTimeout, lastErr)
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
