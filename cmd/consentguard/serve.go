package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/audit"
	"github.com/consentguard/consentguard/guard/httpapi"
	"github.com/consentguard/consentguard/guard/policy"
	"github.com/consentguard/consentguard/guard/smtprelay"
	"github.com/consentguard/consentguard/webhook"
)

// shutdownGrace bounds graceful shutdown after SIGTERM.
const shutdownGrace = 10 * time.Second

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlagSet("serve", stderr)
	checkOnly := fs.Bool("check-config", false, "validate the configuration and exit")
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	if *checkOnly {
		cfg, err := loadConfig(*cfgPath, getenv, newValidator(), forServe)
		if err != nil {
			return err
		}
		store := "redis " + redactURL(cfg.Redis.URL)
		if cfg.Embedded() {
			store = "embedded in-memory store (nothing persisted)"
		}
		fmt.Fprintf(stdout, "configuration ok: http %s, %s\n", cfg.HTTP.Listen, store)
		return nil
	}

	gin.SetMode(gin.ReleaseMode) // gin's mode is process-wide; serve owns the process
	var auditLog *audit.Log
	observe := func(d guard.Decision) {
		if auditLog != nil {
			auditLog.Observe(d)
		}
	}
	a, err := openApp(ctx, *cfgPath, getenv, stderr, forServe, observe)
	if err != nil {
		return err
	}
	defer a.close()
	cfg, log := a.cfg, a.log

	if cfg.Audit.Path != "" {
		auditLog, err = audit.Open(cfg.Audit.Path, a.store.IdentifierHash)
		if err != nil {
			return fmt.Errorf("audit.path: %w", err)
		}
		defer auditLog.Close()
	}
	if cfg.Embedded() {
		log.Warn("NO REDIS CONFIGURED: running on an embedded in-memory store; nothing is persisted and all consent is lost on exit. Set CONSENTGUARD_REDIS_URL for production.")
	}
	if cfg.Salesforce.Token == "" {
		log.Warn("salesforce.token is not set: /salesforce/outbound rejects every message (401)")
	}
	if len(cfg.API.Keys) == 0 && !cfg.API.AllowAnonymous {
		log.Warn("api.keys is empty: /v1 answers anyone who can reach " + cfg.HTTP.Listen)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	wh := webhook.New(a.store, webhook.Options{
		Mapping:     cfg.Salesforce.Objects,
		Vocabulary:  cfg.Salesforce.Values,
		Region:      cfg.Identity.DefaultRegion,
		OrgIDs:      cfg.Salesforce.OrgIDs,
		Token:       cfg.Salesforce.Token,
		BearerToken: cfg.Events.BearerToken,
		HMACSecret:  cfg.Events.HMACSecret,
		MaxBody:     cfg.HTTP.MaxBody,
		Logger:      log,
		Registerer:  reg,
	})
	api := httpapi.New(a.guard, a.store, httpapi.Options{
		AllowAnonymous: cfg.API.AllowAnonymous || len(cfg.API.Keys) == 0,
		Keys:           cfg.API.Keys,
		MaxBatch:       cfg.API.MaxBatch,
		Logger:         log,
		Gatherer:       reg,
		Registerer:     reg,
		Validate:       a.validate,
		ExtraRoutes:    campaignRoutes(a),
	})
	mux := http.NewServeMux()
	mux.Handle("/salesforce/", wh)
	mux.Handle("/", api)

	httpSrv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      120 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	tlsCfg, err := httpTLS(cfg.HTTP)
	if err != nil {
		return err
	}
	httpSrv.TLSConfig = tlsCfg

	type service struct {
		name     string
		ln       net.Listener
		serve    func(net.Listener) error
		shutdown func(context.Context) error
	}
	var services []service
	listen := func(name, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s listen %s: %w", name, addr, err)
		}
		return ln, nil
	}
	closeAll := func() {
		for _, s := range services {
			s.ln.Close()
		}
	}

	ln, err := listen("http", cfg.HTTP.Listen)
	if err != nil {
		return err
	}
	httpServe := httpSrv.Serve
	if tlsCfg != nil {
		httpServe = func(l net.Listener) error { return httpSrv.Serve(tls.NewListener(l, tlsCfg)) }
	}
	services = append(services, service{"http", ln, httpServe, httpSrv.Shutdown})

	if cfg.SMTP.Listen != "" {
		var inTLS *tls.Config
		if cfg.SMTP.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.SMTP.TLSCert, cfg.SMTP.TLSKey)
			if err != nil {
				closeAll()
				return fmt.Errorf("smtp.tls_cert: %w", err)
			}
			inTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		relay := smtprelay.New(a.guard, smtprelay.Options{
			Upstream:         cfg.SMTP.Upstream,
			UpstreamTLS:      cfg.SMTP.UpstreamTLS,
			UpstreamUser:     cfg.SMTP.UpstreamUser,
			UpstreamPassword: cfg.SMTP.UpstreamPassword,
			Domain:           cfg.SMTP.Domain,
			TLS:              inTLS,
			Users:            cfg.SMTP.Users,
			MaxMessageBytes:  cfg.SMTP.MaxMessageBytes,
			MaxRecipients:    cfg.SMTP.MaxRecipients,
			AddConsentHeader: cfg.SMTP.ConsentHeader,
			Logger:           log,
			Registerer:       reg,
		})
		ln, err := listen("smtp", cfg.SMTP.Listen)
		if err != nil {
			closeAll()
			return err
		}
		services = append(services, service{"smtp", ln, relay.Serve, relay.Shutdown})
	}
	if cfg.Policy.Listen != "" {
		ps := policy.New(a.guard, policy.Options{Mode: cfg.Policy.Mode, Logger: log, Registerer: reg})
		ln, err := listen("policy", cfg.Policy.Listen)
		if err != nil {
			closeAll()
			return err
		}
		services = append(services, service{"policy", ln, ps.Serve, ps.Shutdown})
	}

	// Announced in one write once every listener is bound, so that whoever
	// waits for these lines (an operator, a test, a readiness script) finds
	// them all together.
	var announce strings.Builder
	for _, s := range services {
		scheme := ""
		if s.name == "http" {
			scheme = "http://"
			if tlsCfg != nil {
				scheme = "https://"
			}
		}
		fmt.Fprintf(&announce, "consentguard %s listening on %s%s\n", s.name, scheme, s.ln.Addr())
	}
	_, _ = io.WriteString(stdout, announce.String())
	log.Info("consentguard serving", "version", version, "store", redactURL(cfg.Redis.URL), "services", len(services))
	eg, gctx := errgroup.WithContext(ctx)
	for _, s := range services {
		eg.Go(func() error {
			if err := s.serve(s.ln); err != nil && !closed(err) {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			return nil
		})
	}
	eg.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "grace", shutdownGrace)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		// Every server drains at once, within one shared grace period.
		errs := make([]error, len(services))
		var wg sync.WaitGroup
		for i, s := range services {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.shutdown(sctx); err != nil && !closed(err) {
					errs[i] = fmt.Errorf("%s shutdown: %w", s.name, err)
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	err = eg.Wait()
	log.Info("stopped")
	return err
}

// closed reports the errors a server's Serve or Shutdown returns because
// it was shut down or its listener closed: the normal end, not a failure.
func closed(err error) bool {
	return errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, smtprelay.ErrServerClosed) || errors.Is(err, policy.ErrServerClosed)
}

// httpTLS builds the listener's TLS config: server certificate, and with
// client_ca a required, verified client certificate (mutual TLS).
func httpTLS(c HTTPConfig) (*tls.Config, error) {
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("http.tls_cert/tls_key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("http.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("http.client_ca %s: no PEM certificates", c.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
