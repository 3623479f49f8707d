package cache_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
)

func TestNewClientForms(t *testing.T) {
	tests := []struct {
		url  string
		want string // client type
	}{
		{"redis://127.0.0.1:6379/0", "*redis.Client"},
		{"rediss://user:secret@redis.example.net:6380/2?dial_timeout=3s", "*redis.Client"},
		{"redis+sentinel://s1:26379/0?master_name=mymaster&addr=s2:26379&password=pw", "*redis.Client"},
		{"rediss+sentinel://s1:26379?master_name=mymaster", "*redis.Client"},
		{"redis+cluster://n1:6379?addr=n2:6379&addr=n3:6379", "*redis.ClusterClient"},
		{"rediss+cluster://user:pw@n1:6379", "*redis.ClusterClient"},
	}
	for _, tt := range tests {
		c, err := cache.NewClient(tt.url)
		if err != nil {
			t.Errorf("NewClient(%q): %v", tt.url, err)
			continue
		}
		var got string
		switch c.(type) {
		case *redis.Client:
			got = "*redis.Client"
		case *redis.ClusterClient:
			got = "*redis.ClusterClient"
		default:
			got = "other"
		}
		if got != tt.want {
			t.Errorf("NewClient(%q) = %s, want %s", tt.url, got, tt.want)
		}
		c.Close()
	}
	for _, bad := range []string{
		"http://127.0.0.1:6379",
		"redis+sentinel://s1:26379/0",      // no master_name
		"redis+ring://a:1",                 // unknown deployment
		"redis://127.0.0.1:6379/0?bogus=1", // unknown option
		"redis://:supersecret@127.0.0.1:6379/x",
	} {
		_, err := cache.NewClient(bad)
		if !errors.Is(err, cache.ErrConfig) {
			t.Errorf("NewClient(%q) = %v, want ErrConfig", bad, err)
		}
		if err != nil && strings.Contains(err.Error(), "supersecret") {
			t.Errorf("error reveals the password: %v", err)
		}
	}
}

func TestNewClientTalksToRedis(t *testing.T) {
	srv := redistest.Start(t)
	c, err := cache.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := backend{rdb: c}.store(t, cache.Options{})
	if err := st.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}
