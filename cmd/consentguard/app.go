package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"time"

	"github.com/go-playground/validator/v10"
	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/guard"
)

// app is what every command shares: config, logger, store and guard.
type app struct {
	cfg      *Config
	log      *slog.Logger
	validate *validator.Validate
	store    *cache.Store
	guard    *guard.Guard
	closers  []func()
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "YAML config `file` (default $CONSENTGUARD_CONFIG)")
	return fs, cfgPath
}

func newLogger(cfg LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// openApp loads the config for the command's use and opens the app on it
// (startApp). observe, when set, sees every decision.
func openApp(ctx context.Context, cfgPath string, getenv func(string) string, stderr io.Writer, u use, observe func(guard.Decision)) (*app, error) {
	v := newValidator()
	cfg, err := loadConfig(cfgPath, getenv, v, u)
	if err != nil {
		return nil, err
	}
	return startApp(ctx, cfg, v, stderr, observe)
}

// startApp opens the app on cfg, which loadConfig loaded and validated
// with v: it connects and initialises the store and builds the guard. A
// command that looks at its config before opening the store (sync) calls
// it directly rather than have openApp load the config again.
func startApp(ctx context.Context, cfg *Config, v *validator.Validate, stderr io.Writer, observe func(guard.Decision)) (*app, error) {
	a, err := connectApp(cfg, v, stderr)
	if err != nil {
		return nil, err
	}
	if err := a.initStore(ctx, observe); err != nil {
		return nil, err
	}
	return a, nil
}

// connectApp builds the app on cfg, which loadConfig loaded and validated
// with v, and connects the store without initialising it
// (cache.Store.Init not run): repair-index upgrades an older data schema,
// which Init refuses, before it initialises the store.
func connectApp(cfg *Config, v *validator.Validate, stderr io.Writer) (*app, error) {
	a := &app{cfg: cfg, validate: v, log: newLogger(cfg.Log, stderr)}
	// go-redis logs pool trouble through a process-wide logger; route it
	// into ours (it carries addresses of Redis, never of people).
	redis.SetLogger(redisLogger{a.log})
	var rdb redis.UniversalClient
	if cfg.Embedded() {
		emb, err := cache.NewEmbedded()
		if err != nil {
			return nil, fmt.Errorf("embedded store: %w", err)
		}
		a.closers = append(a.closers, emb.Close)
		rdb = emb.Client()
		if cfg.Identity.HashKey == "" {
			k := make([]byte, 32)
			_, _ = rand.Read(k)
			cfg.Identity.HashKey = hex.EncodeToString(k)
		}
	} else {
		c, err := cache.NewClient(cfg.Redis.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url (CONSENTGUARD_REDIS_URL): %w", err)
		}
		a.closers = append(a.closers, func() { _ = c.Close() })
		rdb = c
	}
	a.store = cache.New(rdb, cache.Options{
		HashKey:    []byte(cfg.Identity.HashKey),
		Vocabulary: cfg.Salesforce.Values,
		Logger:     a.log,
	})
	return a, nil
}

// initStore initialises the store connectApp made and builds the guard on it;
// on an error it closes a.
func (a *app) initStore(ctx context.Context, observe func(guard.Decision)) error {
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.store.Init(ictx); err != nil {
		a.close()
		return fmt.Errorf("store %s: %w", redactURL(a.cfg.Redis.URL), err)
	}
	a.guard = guard.New(a.store, guard.Options{
		Vocabulary:   a.cfg.Salesforce.Values,
		Region:       a.cfg.Identity.DefaultRegion,
		Timeout:      a.cfg.Redis.Timeout,
		BatchTimeout: a.cfg.Redis.BatchTimeout,
		Logger:       a.log,
		Observe:      observe,
	})
	return nil
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

// redactURL hides a password in a Redis URL for logs and errors.
func redactURL(u string) string {
	if u == "" {
		return "(embedded)"
	}
	p, err := url.Parse(u)
	if err != nil {
		return "(unparseable redis url)"
	}
	return p.Redacted()
}

// redisLogger adapts slog to go-redis's internal logger.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", "msg", fmt.Sprintf(format, v...))
}
