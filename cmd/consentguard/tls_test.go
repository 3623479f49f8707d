package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache/redistest"
)

// testCA issues certificates for the mutual-TLS test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func mustCA(tb testing.TB, name string) *testCA {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for a server or client.
func (ca *testCA) issue(tb testing.TB, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// Salesforce's outbound messages can present a client certificate; with
// http.client_ca the listener accepts only clients that present one signed
// by that CA.
func TestServeMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := mustCA(t, "server ca"), mustCA(t, "salesforce client ca"), mustCA(t, "someone else")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sc, sk := serverCA.issue(t, "consentguard", x509.ExtKeyUsageServerAuth)
	cc, ck := clientCA.issue(t, "proxy.salesforce.com", x509.ExtKeyUsageClientAuth)
	oc, ok := otherCA.issue(t, "intruder", x509.ExtKeyUsageClientAuth)
	cfg := write("config.yaml", []byte("http:\n  tls_cert: "+write("server.crt", sc)+"\n  tls_key: "+write("server.key", sk)+"\n  client_ca: "+write("client-ca.pem", clientCA.pem)+"\n"))

	rs := redistest.Start(t)
	s := mustServe(t, redisEnv(rs.URL()), "-config", cfg)
	if !strings.Contains(s.stdout.String(), "https://") {
		t.Fatalf("listener does not announce https: %s", s.stdout.String())
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(serverCA.pem)
	client := func(certPEM, keyPEM []byte) *http.Client {
		tc := &tls.Config{RootCAs: roots}
		if certPEM != nil {
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
	}
	url := "https://" + s.addrs["http"] + "/salesforce/outbound?token=" + testToken
	body := outbound("0035g00000ABCDeAAP", "2026-11-28T09:15:02.000Z", "tls@firma.de", "0211 17540322", "Ja", "Ja")

	resp, err := client(cc, ck).Post(url, "text/xml; charset=utf-8", strings.NewReader(body))
	if err != nil {
		t.Fatalf("with Salesforce's client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with Salesforce's client certificate: %d", resp.StatusCode)
	}
	for name, c := range map[string]*http.Client{"no client certificate": client(nil, nil), "foreign client certificate": client(oc, ok)} {
		resp, err := c.Post(url, "text/xml; charset=utf-8", strings.NewReader(body))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: accepted with %d", name, resp.StatusCode)
		}
	}
	s.stop(t)
}
