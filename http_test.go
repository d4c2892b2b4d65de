package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fillRedis writes n keys of size bytes through a pipeline of MSETs, the way
// a bulk loader would, so that the RDB takes a while to load.
func fillRedis(t *testing.T, in *instance, n, size int) {
	t.Helper()
	c := in.redis()
	value := strings.Repeat("v", size)
	const perMSET, perFlush = 100, 100
	sent := 0
	for i := 0; i < n; {
		for range perFlush {
			if i >= n {
				break
			}
			args := make([]any, 0, 2*perMSET)
			for j := i; j < min(i+perMSET, n); j++ {
				args = append(args, fmt.Sprintf("key:%09d", j), value)
			}
			i += len(args) / 2
			c.Send("MSET", args...)
			sent++
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		for ; sent > 0; sent-- {
			if _, err := c.Receive(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// While a large dataset loads, /startupz says how far it got, /readyz is
// 503, and /healthz 200 (the kubelet must not kill a loading Redis); then
// all three turn 200.
func TestProbesFollowLoading(t *testing.T) {
	in := oneInstance(t, "appendonly no\nsave 3600 1")
	in.waitReady(20 * time.Second)
	const keys = 2_500_000
	start := time.Now()
	fillRedis(t, in, keys, 100)
	t.Logf("wrote %d keys in %s", keys, time.Since(start).Round(time.Millisecond))
	if code := in.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	in2 := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: in.clusterFile, dataDir: in.dataDir, password: in.password})
	var (
		progress          []float64
		notReadyOnLoading bool
		unhealthy         []string
		startedAt         time.Time
	)
	deadline := time.Now().Add(60 * time.Second)
	for startedAt.IsZero() && time.Now().Before(deadline) {
		code, body := in2.get("/startupz")
		var sz struct {
			Loading       bool    `json:"loading"`
			LoadedPercent float64 `json:"loadedPercent"`
		}
		json.Unmarshal(body, &sz)
		switch {
		case code == 200:
			startedAt = time.Now()
		case code == 503 && sz.Loading:
			progress = append(progress, sz.LoadedPercent)
			if rc, rb := in2.get("/readyz"); rc == 503 && strings.Contains(string(rb), "loading") {
				notReadyOnLoading = true
			}
			if hc, hb := in2.get("/healthz"); hc != 200 {
				unhealthy = append(unhealthy, string(hb))
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if startedAt.IsZero() {
		t.Fatal("/startupz never turned 200")
	}
	steps := slices.Compact(slices.Clone(progress))
	t.Logf("loading progress seen by /startupz in %d polls: %v", len(progress), steps)
	if len(steps) < 2 || !slices.IsSorted(steps) {
		t.Fatalf("/startupz did not report a load moving forward: %v", steps)
	}
	if steps[0] < 0 || steps[len(steps)-1] >= 100 {
		t.Errorf("loadedPercent %v is not a percentage of a load under way", steps)
	}
	if !notReadyOnLoading {
		t.Error("/readyz did not say the instance was loading")
	}
	if len(unhealthy) > 0 {
		t.Errorf("/healthz failed while loading: %v", unhealthy)
	}
	in2.waitReady(10 * time.Second)
	if n, err := in2.redis().Do("DBSIZE"); err != nil || n.(int64) != keys {
		t.Fatalf("DBSIZE %v, %v; want %d", n, err, keys)
	}
}

// The probes and the status never reveal the password.
func TestEndpointsCarryNoSecret(t *testing.T) {
	in := oneInstance(t, "appendonly no")
	in.waitReady(20 * time.Second)
	for _, path := range []string{"/healthz", "/readyz", "/startupz", "/v1/status"} {
		code, body := in.get(path)
		if code != 200 {
			t.Errorf("%s: %d %s", path, code, body)
		}
		if strings.Contains(string(body), in.password) {
			t.Errorf("%s shows the password", path)
		}
	}
	if code, _ := in.get("/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	// With no operator token configured, operator commands are closed.
	for _, cmd := range []struct{ method, path string }{{"POST", "/v1/restart"}, {"PUT", "/v1/update"}} {
		req, _ := http.NewRequest(cmd.method, fmt.Sprintf("http://127.0.0.1:%d%s", in.httpPort, cmd.path), strings.NewReader("x"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s %s without a configured token: %d, want 403", cmd.method, cmd.path, resp.StatusCode)
		}
	}
	st := in.status()
	if st.Role != "master" || st.RedisVersion == "" || st.ManagerVersion != "test" || len(st.ExecutableHash) != 64 || st.ConfigHash == "" || st.Address != fmt.Sprintf("127.0.0.1:%d", in.port) {
		t.Errorf("status %+v", st)
	}
}

// testCA is a certificate authority for tests of HTTPS.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and key, PEM encoded, for a server on
// 127.0.0.1 or for a client.
func (ca *testCA) issue(t *testing.T, serial int64, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "operator"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

// Over HTTPS, a client certificate from the configured CA authorises
// operator commands, one from another CA is turned away, and a renewed
// server certificate is served without a restart.
func TestHTTPSWithClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, other := newTestCA(t, "operator-ca"), newTestCA(t, "someone-else")
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	c, k := ca.issue(t, 100, true)
	writeFile(t, certFile, string(c))
	writeFile(t, keyFile, string(k))
	writeFile(t, caFile, string(ca.pem))
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw",
		extraArgs: []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-client-ca-file", caFile}})

	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	client := func(from *testCA, serial int64) *http.Client {
		cfg := &tls.Config{RootCAs: roots}
		if from != nil {
			cp, kp := from.issue(t, serial, false)
			pair, err := tls.X509KeyPair(cp, kp)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	}
	url := fmt.Sprintf("https://127.0.0.1:%d", in.httpPort)
	probe := client(nil, 0)
	eventually(t, 20*time.Second, "/readyz over HTTPS", func() bool {
		resp, err := probe.Get(url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	pid := in.redisPID()
	restart := func(c *http.Client) (int, error) {
		resp, err := c.Post(url+"/v1/restart", "", nil)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := restart(probe); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("restart without a certificate: %d, %v; want 401", code, err)
	}
	if code, err := restart(client(other, 7)); err == nil && code == http.StatusOK {
		t.Fatal("a certificate from another CA restarted redis-server")
	}
	if in.redisPID() != pid {
		t.Fatal("redis-server restarted without authorisation")
	}
	if code, err := restart(client(ca, 8)); err != nil || code != http.StatusOK {
		t.Fatalf("restart with the operator's certificate: %d, %v", code, err)
	}
	if in.redisPID() == pid {
		t.Fatal("redis-server was not restarted")
	}

	c, k = ca.issue(t, 200, true)
	writeFile(t, keyFile, string(k))
	writeFile(t, certFile, string(c))
	eventually(t, 10*time.Second, "the renewed certificate to be served", func() bool {
		resp, err := probe.Get(url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64() == 200
	})
}
