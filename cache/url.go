package cache

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// NewClient builds a go-redis client from one URL, choosing the deployment
// by scheme:
//
//	redis://[user:pass@]host:6379[/db][?opts]      single server
//	rediss://…                                     single server over TLS
//	redis+sentinel://[suser:spass@]s1:26379[/db]?master_name=mymaster&addr=s2:26379&password=…
//	rediss+sentinel://…                            Sentinel-managed master (TLS)
//	redis+cluster://[user:pass@]n1:6379?addr=n2:6379&addr=n3:6379
//	rediss+cluster://…                             Cluster (TLS)
//
// Query options are go-redis's (dial_timeout, read_timeout, pool_size, …;
// see redis.ParseURL, ParseFailoverURL, ParseClusterURL). For Sentinel the
// URL's user info authenticates against the sentinels and the password
// query option against the master. Context deadlines are honoured
// (context_timeout_enabled) unless the URL sets that option itself, so the
// guard's store timeout bounds every call.
func NewClient(rawURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: redis url: %v", ErrConfig, redactErr(err, rawURL))
	}
	base, mode, _ := strings.Cut(u.Scheme, "+")
	if base != "redis" && base != "rediss" {
		return nil, fmt.Errorf("%w: redis url scheme %q: want redis, rediss, redis+sentinel or redis+cluster", ErrConfig, u.Scheme)
	}
	ctxTimeout := !u.Query().Has("context_timeout_enabled")
	u.Scheme = base
	plain := u.String()
	switch mode {
	case "":
		o, err := redis.ParseURL(plain)
		if err != nil {
			return nil, fmt.Errorf("%w: redis url: %v", ErrConfig, redactErr(err, plain))
		}
		o.ContextTimeoutEnabled = o.ContextTimeoutEnabled || ctxTimeout
		return redis.NewClient(o), nil
	case "sentinel":
		o, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return nil, fmt.Errorf("%w: redis sentinel url: %v", ErrConfig, redactErr(err, plain))
		}
		if o.MasterName == "" {
			return nil, fmt.Errorf("%w: redis sentinel url needs ?master_name=", ErrConfig)
		}
		o.ContextTimeoutEnabled = o.ContextTimeoutEnabled || ctxTimeout
		return redis.NewFailoverClient(o), nil
	case "cluster":
		o, err := redis.ParseClusterURL(plain)
		if err != nil {
			return nil, fmt.Errorf("%w: redis cluster url: %v", ErrConfig, redactErr(err, plain))
		}
		o.ContextTimeoutEnabled = o.ContextTimeoutEnabled || ctxTimeout
		return redis.NewClusterClient(o), nil
	}
	return nil, fmt.Errorf("%w: redis url scheme %q: want redis, rediss, redis+sentinel or redis+cluster", ErrConfig, u.Scheme)
}

// redactErr keeps passwords in the URL out of error messages.
func redactErr(err error, raw string) string {
	msg := err.Error()
	if u, perr := url.Parse(raw); perr == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return msg
}
