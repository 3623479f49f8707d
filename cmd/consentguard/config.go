package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-playground/validator/v10"
	"go.yaml.in/yaml/v3"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/httpapi"
	"github.com/consentguard/consentguard/webhook"
)

// Config is the whole configuration: one YAML file, secrets also (and
// preferably) from the environment. The environment wins.
type Config struct {
	HTTP       HTTPConfig       `yaml:"http"`
	Redis      RedisConfig      `yaml:"redis"`
	Identity   IdentityConfig   `yaml:"identity"`
	Salesforce SalesforceConfig `yaml:"salesforce"`
	Events     EventsConfig     `yaml:"events"`
	API        APIConfig        `yaml:"api"`
	SMTP       SMTPConfig       `yaml:"smtp"`
	Policy     PolicyConfig     `yaml:"policy"`
	Audit      AuditConfig      `yaml:"audit"`
	Log        LogConfig        `yaml:"log"`
}

// HTTPConfig is the API and webhook listener.
type HTTPConfig struct {
	Listen string `yaml:"listen" validate:"required,listen_addr"`
	// TLS: when cert and key are set the listener speaks HTTPS; with
	// client_ca it requires a client certificate signed by that CA (mutual
	// TLS with Salesforce's outbound-message client certificate).
	TLSCert  string `yaml:"tls_cert" validate:"required_with=TLSKey"`
	TLSKey   string `yaml:"tls_key" validate:"required_with=TLSCert"`
	ClientCA string `yaml:"client_ca" validate:"omitempty,required_with=TLSCert"`
	// MaxBody bounds webhook bodies (bytes); default 5 MiB.
	MaxBody int64 `yaml:"max_body" validate:"gte=0"`
}

// RedisConfig selects the store. No URL: the embedded in-memory store.
type RedisConfig struct {
	URL string `yaml:"url"`
	// Timeout bounds one consent lookup; default 250ms.
	Timeout time.Duration `yaml:"timeout" validate:"gte=0"`
	// BatchTimeout bounds the lookup of a batch or scrub chunk; default 2s.
	BatchTimeout time.Duration `yaml:"batch_timeout" validate:"gte=0"`
}

// IdentityConfig controls identifier hashing and phone parsing.
type IdentityConfig struct {
	HashKey       string `yaml:"hash_key"`
	DefaultRegion string `yaml:"default_region" validate:"omitempty,len=2,alpha"`
}

// SalesforceConfig describes the org that feeds consentguard.
type SalesforceConfig struct {
	OrgIDs  []string         `yaml:"org_ids" validate:"dive,alphanum,len=15|len=18"`
	Token   string           `yaml:"token"`
	Values  guard.Vocabulary `yaml:"values"`
	Objects webhook.Mapping  `yaml:"objects"`
	// REST is the API `consentguard sync` reads (OAuth 2.0 client
	// credentials flow of a Connected App / External Client App).
	REST RESTConfig `yaml:"rest"`
}

// RESTConfig reaches the Salesforce REST API for sync.
type RESTConfig struct {
	// URL is the org's My Domain, e.g. https://acme.my.salesforce.com.
	URL          string `yaml:"url" validate:"omitempty,url"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret"`
	APIVersion   string `yaml:"api_version"`
}

// EventsConfig authenticates JSON events from flows and Apex.
type EventsConfig struct {
	BearerToken string `yaml:"bearer_token"`
	HMACSecret  string `yaml:"hmac_secret"`
}

// APIConfig authenticates /v1 callers.
type APIConfig struct {
	AllowAnonymous bool          `yaml:"allow_anonymous"`
	Keys           []httpapi.Key `yaml:"keys" validate:"dive"`
	MaxBatch       int           `yaml:"max_batch" validate:"gte=0"`
}

// SMTPConfig is the mail relay; off without listen.
type SMTPConfig struct {
	Listen           string            `yaml:"listen" validate:"omitempty,listen_addr"`
	Upstream         string            `yaml:"upstream" validate:"required_with=Listen,omitempty,hostname_port"`
	UpstreamTLS      string            `yaml:"upstream_tls" validate:"omitempty,oneof=starttls require none tls"`
	UpstreamUser     string            `yaml:"upstream_user"`
	UpstreamPassword string            `yaml:"upstream_password"`
	Domain           string            `yaml:"domain"`
	TLSCert          string            `yaml:"tls_cert" validate:"required_with=TLSKey"`
	TLSKey           string            `yaml:"tls_key" validate:"required_with=TLSCert"`
	Users            map[string]string `yaml:"users"` // user → bcrypt or argon2id (PHC) hash
	MaxMessageBytes  int64             `yaml:"max_message_bytes" validate:"gte=0"`
	MaxRecipients    int               `yaml:"max_recipients" validate:"gte=0"`
	ConsentHeader    bool              `yaml:"consent_header"`
}

// PolicyConfig is the Postfix policy server; off without listen.
type PolicyConfig struct {
	Listen string `yaml:"listen" validate:"omitempty,listen_addr"`
	Mode   string `yaml:"mode" validate:"omitempty,oneof=enforce shadow"`
}

// AuditConfig: where every decision is appended as a JSON line.
type AuditConfig struct {
	Path string `yaml:"path"`
}

// LogConfig: level debug|info|warn|error, format text|json.
type LogConfig struct {
	Level  string `yaml:"level" validate:"omitempty,oneof=debug info warn error"`
	Format string `yaml:"format" validate:"omitempty,oneof=text json"`
}

// Embedded reports whether the config runs on the in-memory store.
func (c *Config) Embedded() bool { return c.Redis.URL == "" }

func defaultConfig() Config {
	return Config{
		HTTP:       HTTPConfig{Listen: "127.0.0.1:8080", MaxBody: 5 << 20},
		Redis:      RedisConfig{Timeout: guard.DefaultTimeout},
		Identity:   IdentityConfig{DefaultRegion: "DE"},
		Salesforce: SalesforceConfig{Values: guard.DefaultVocabulary(), Objects: webhook.DefaultMapping(), REST: RESTConfig{APIVersion: "62.0"}},
		API:        APIConfig{MaxBatch: 10000},
		Policy:     PolicyConfig{Mode: "enforce"},
		Log:        LogConfig{Level: "info", Format: "text"},
	}
}

// envVars lists the environment variables that override the file.
var envVars = []struct {
	name string
	set  func(c *Config, v string)
}{
	{"CONSENTGUARD_HTTP_LISTEN", func(c *Config, v string) { c.HTTP.Listen = v }},
	{"CONSENTGUARD_REDIS_URL", func(c *Config, v string) { c.Redis.URL = v }},
	{"CONSENTGUARD_HASH_KEY", func(c *Config, v string) { c.Identity.HashKey = v }},
	{"CONSENTGUARD_SALESFORCE_TOKEN", func(c *Config, v string) { c.Salesforce.Token = v }},
	{"CONSENTGUARD_SALESFORCE_ORG_IDS", func(c *Config, v string) { c.Salesforce.OrgIDs = splitList(v) }},
	{"CONSENTGUARD_SALESFORCE_URL", func(c *Config, v string) { c.Salesforce.REST.URL = v }},
	{"CONSENTGUARD_SALESFORCE_CLIENT_ID", func(c *Config, v string) { c.Salesforce.REST.ClientID = v }},
	{"CONSENTGUARD_SALESFORCE_CLIENT_SECRET", func(c *Config, v string) { c.Salesforce.REST.ClientSecret = v }},
	{"CONSENTGUARD_EVENTS_BEARER_TOKEN", func(c *Config, v string) { c.Events.BearerToken = v }},
	{"CONSENTGUARD_EVENTS_HMAC_SECRET", func(c *Config, v string) { c.Events.HMACSecret = v }},
	{"CONSENTGUARD_SMTP_UPSTREAM_PASSWORD", func(c *Config, v string) { c.SMTP.UpstreamPassword = v }},
	{"CONSENTGUARD_AUDIT_PATH", func(c *Config, v string) { c.Audit.Path = v }},
	{"CONSENTGUARD_LOG_LEVEL", func(c *Config, v string) { c.Log.Level = v }},
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		out = append(out, f)
	}
	return out
}

// use says what a command needs of the configuration besides a valid file.
type use int

const (
	// forTool: check, import, scrub, sync, repair-index. With a Redis
	// store they need the hash key; they receive no webhooks.
	forTool use = iota
	// forServe: serve. With a Redis store it also needs the org ids and
	// the token that guard the Salesforce webhook (DESIGN.md).
	forServe
)

// loadConfig reads path (if any) over the defaults, then the environment,
// then validates everything at once for the command's use.
func loadConfig(path string, getenv func(string) string, v *validator.Validate, u use) (*Config, error) {
	cfg := defaultConfig()
	if path == "" {
		path = getenv("CONSENTGUARD_CONFIG")
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		// Mappings in the file replace the defaults per object, not merge.
		cfg.Salesforce.Objects = nil
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		if len(cfg.Salesforce.Objects) == 0 {
			cfg.Salesforce.Objects = webhook.DefaultMapping()
		}
		cfg.Salesforce.Values = cfg.Salesforce.Values.OrDefault()
	}
	for _, e := range envVars {
		if val := getenv(e.name); val != "" {
			e.set(&cfg, val)
		}
	}
	if err := cfg.validate(v, u); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// validate reports every problem at once.
func (c *Config) validate(v *validator.Validate, u use) error {
	var errs []error
	if err := v.Struct(c); err != nil {
		var verrs validator.ValidationErrors
		if errors.As(err, &verrs) {
			for _, fe := range verrs {
				errs = append(errs, fmt.Errorf("%s: fails %q%s", yamlPath(fe.Namespace()), fe.Tag(), param(fe.Param())))
			}
		} else {
			errs = append(errs, err)
		}
	}
	if err := c.Salesforce.Values.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("salesforce.values: %w", err))
	}
	if err := c.Salesforce.Objects.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("salesforce.objects: %w", err))
	}
	if err := httpapi.ValidateKeys(c.API.Keys); err != nil {
		errs = append(errs, fmt.Errorf("api.keys: %w", err))
	}
	if c.Identity.HashKey != "" && len(c.Identity.HashKey) < 32 {
		errs = append(errs, errors.New("identity.hash_key (CONSENTGUARD_HASH_KEY): must be at least 32 characters"))
	}
	if !c.Embedded() {
		// A real store keeps data: serve must let only our org feed it,
		// and every command must hash identifiers under a stable key.
		if u == forServe && len(c.Salesforce.OrgIDs) == 0 {
			errs = append(errs, errors.New("salesforce.org_ids (CONSENTGUARD_SALESFORCE_ORG_IDS): required with a Redis store"))
		}
		if u == forServe && c.Salesforce.Token == "" {
			errs = append(errs, errors.New("salesforce.token (CONSENTGUARD_SALESFORCE_TOKEN): required with a Redis store"))
		}
		if c.Identity.HashKey == "" {
			errs = append(errs, errors.New("identity.hash_key (CONSENTGUARD_HASH_KEY): required with a Redis store"))
		}
	}
	if c.HTTP.ClientCA != "" && c.HTTP.TLSCert == "" {
		errs = append(errs, errors.New("http.client_ca: needs http.tls_cert and http.tls_key"))
	}
	seen := map[string]string{}
	for _, l := range []struct{ key, addr string }{{"http.listen", c.HTTP.Listen}, {"smtp.listen", c.SMTP.Listen}, {"policy.listen", c.Policy.Listen}} {
		if l.addr == "" || strings.HasSuffix(l.addr, ":0") {
			continue
		}
		if other, dup := seen[l.addr]; dup {
			errs = append(errs, fmt.Errorf("%s and %s are both %s", other, l.key, l.addr))
		}
		seen[l.addr] = l.key
	}
	if len(errs) > 0 {
		return &configError{errs: errs}
	}
	return nil
}

// configError lists every problem, one per line.
type configError struct{ errs []error }

func (e *configError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "configuration has %d problem(s):", len(e.errs))
	for _, err := range e.errs {
		b.WriteString("\n  - ")
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *configError) Unwrap() []error { return e.errs }

func param(p string) string {
	if p == "" {
		return ""
	}
	return " (" + p + ")"
}

// yamlPath turns "Config.smtp.upstream" into "smtp.upstream".
func yamlPath(ns string) string {
	if i := strings.IndexByte(ns, '.'); i >= 0 {
		return ns[i+1:]
	}
	return ns
}

// newValidator returns the one validator instance, naming fields by their
// YAML keys so that errors point at the config file.
func newValidator() *validator.Validate {
	v := validator.New(validator.WithRequiredStructEnabled())
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			return ""
		}
		if name == "" {
			return f.Name
		}
		return name
	})
	_ = v.RegisterValidation("listen_addr", func(fl validator.FieldLevel) bool {
		return validListen(fl.Field().String())
	})
	return v
}

// validListen accepts host:port with a port from 0 (any free port) to 65535.
func validListen(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535
}
