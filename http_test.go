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
	"io"
	"maps"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// fillRedis writes n keys of size bytes through a pipeline of MSETs, the way
// a bulk loader would, so that the RDB takes a while to load.
func fillRedis(t testing.TB, in *instance, n, size int) {
	t.Helper()
	value := strings.Repeat("v", size)
	fillValues(t, in, n, func(int) string { return value })
}

// fillValues is fillRedis with the values of value.
func fillValues(t testing.TB, in *instance, n int, value func(i int) string) {
	t.Helper()
	c := in.redis()
	const perMSET, perFlush = 100, 100
	sent := 0
	for i := 0; i < n; {
		for range perFlush {
			if i >= n {
				break
			}
			args := make([]any, 0, 2*perMSET)
			for j := i; j < min(i+perMSET, n); j++ {
				args = append(args, fmt.Sprintf("key:%09d", j), value(j))
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

func newTestCA(t testing.TB, name string) *testCA {
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

// getBackup streams GET /v1/backup into a file and returns the response,
// its trailers read.
func (in *instance) getBackup(token, dest string) (*http.Response, error) {
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/v1/backup", in.httpPort), nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	f, err := os.Create(dest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return resp, err
}

// A backup streamed from a primary under write load restores, in a fresh
// instance, to every key the primary held at one moment: all the keys
// written before it began, and of the keys written during it, an unbroken
// run from the first. Its trailer's SHA-256 is the body's, it needs the
// operator's token, one runs at a time, and with a diskless sync it puts no
// file on the primary's disk.
func TestBackupRoundTrip(t *testing.T) {
	src, _ := upgradable(t) // a primary with an operator token, no save points
	c := src.redis()
	fillTypes(t, c, "k", 300)
	before := dataset(t, c)

	// A writer numbers its writes; each is acknowledged before the next.
	stop, written := make(chan struct{}), make(chan int, 1)
	go func() {
		w, err := dialRedisAs("", localAddr(src.port), []string{src.password}, nil, time.Second)
		if err != nil {
			written <- -1
			return
		}
		defer w.Close()
		i := 0
		for ; ; i++ {
			select {
			case <-stop:
				written <- i
				return
			default:
			}
			if _, err := w.Do("SET", fmt.Sprintf("seq:%06d", i), i); err != nil {
				written <- -1
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()

	if resp, err := src.getBackup("", filepath.Join(t.TempDir(), "x")); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("backup without a token: %v %v, want 401", resp, err)
	}
	type result struct {
		resp *http.Response
		err  error
	}
	dest := filepath.Join(t.TempDir(), "backup.rdb")
	done := make(chan result, 1)
	go func() {
		resp, err := src.getBackup("up-token", dest)
		done <- result{resp, err}
	}()
	// Redis waits repl-diskless-sync-delay (5 s) for more replicas before it
	// forks: a second backup meanwhile is turned away.
	eventually(t, 5*time.Second, "the backup's sync to show on the primary", func() bool {
		info, _ := redis.String(c.Do("INFO", "replication"))
		return strings.Contains(info, "port=0,state=wait_bgsave")
	})
	if resp, err := src.getBackup("up-token", filepath.Join(t.TempDir(), "y")); err != nil || resp.StatusCode != http.StatusConflict {
		t.Errorf("a second backup at once: %v %v, want 409", resp, err)
	}
	res := <-done
	close(stop)
	if n := <-written; n < 0 {
		t.Fatal("the writer failed")
	}
	if res.err != nil || res.resp.StatusCode != http.StatusOK {
		t.Fatalf("backup: %v %v", res.resp, res.err)
	}
	body, _ := os.ReadFile(dest)
	sum := sha256Of(body)
	if got := res.resp.Trailer.Get("X-Backup-Sha256"); got != sum {
		t.Fatalf("trailer X-Backup-Sha256 %q, the body's is %s", got, sum)
	}
	if got := res.resp.Trailer.Get("X-Backup-Length"); got != fmt.Sprint(len(body)) {
		t.Errorf("trailer X-Backup-Length %q, the body has %d bytes", got, len(body))
	}
	if res.resp.Header.Get("X-Redis-Replication-Offset") == "" {
		t.Error("no X-Redis-Replication-Offset header")
	}
	if m, _ := filepath.Glob(filepath.Join(src.dataDir, "*.rdb")); len(m) > 0 {
		t.Errorf("the backup left files on the primary's disk: %v", m)
	}
	eventually(t, 5*time.Second, "the backup's connection to leave the primary's replicas", func() bool {
		return src.status().ConnectedReplicas == 0
	})

	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, withRestore(clusterYAML("cache", "cache-0", "appendonly no", ""), "file://"+dest, sum))
	dst := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	dst.waitReady(30 * time.Second)
	got := dataset(t, dst.redis())
	seqs := 0
	for k := range got {
		if strings.HasPrefix(k, "seq:") {
			seqs++
		}
	}
	for i := range seqs {
		k := fmt.Sprintf("seq:%06d", i)
		if _, ok := got[k]; !ok {
			t.Fatalf("the backup holds %d of the writes made during it, but not %s: not one moment's dataset", seqs, k)
		}
		delete(got, k)
	}
	if !maps.Equal(got, before) {
		t.Fatalf("restored: %d keys besides the writer's, want %d", len(got), len(before))
	}
	t.Logf("backup of %d bytes holds %d keys written during it", len(body), seqs)
}

// BenchmarkBackup streams GET /v1/backup of a 100 MiB dataset b.N times
// while a client PINGs the primary, then restores the last backup into a
// fresh instance. It reports the backup's throughput after Redis's first
// byte (Redis waits repl-diskless-sync-delay, 5 s by default, before it
// forks), the PING latency during the backups, and the restore's
// throughput, checksum and redis-check-rdb included.
func BenchmarkBackup(b *testing.B) {
	src, _ := upgradable(b)
	// Random values: an RDB compresses repeated ones to nothing.
	rng := mrand.New(mrand.NewPCG(1, 2))
	fillValues(b, src, 100_000, func(int) string {
		v := make([]byte, 1024)
		for i := range v {
			v[i] = byte(rng.Uint32())
		}
		return string(v)
	})
	stop, pings := make(chan struct{}), make(chan []time.Duration, 1)
	go func() {
		c, err := dialRedisAs("", localAddr(src.port), []string{src.password}, nil, 5*time.Second)
		if err != nil {
			pings <- nil
			return
		}
		defer c.Close()
		var d []time.Duration
		for {
			select {
			case <-stop:
				pings <- d
				return
			case <-time.After(time.Millisecond):
			}
			t0 := time.Now()
			c.Do("PING")
			d = append(d, time.Since(t0))
		}
	}()
	dest := filepath.Join(b.TempDir(), "backup.rdb")
	var size int64
	var streams []time.Duration
	var sum string
	b.ResetTimer()
	for range b.N {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/v1/backup", src.httpPort), nil)
		req.Header.Set("Authorization", "Bearer up-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("backup: %v %v", resp, err)
		}
		f, _ := os.Create(dest)
		first := make([]byte, 1)
		io.ReadFull(resp.Body, first)
		t0 := time.Now()
		f.Write(first)
		n, err := io.Copy(f, resp.Body)
		streams = append(streams, time.Since(t0))
		f.Close()
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		size, sum = n+1, resp.Trailer.Get("X-Backup-Sha256")
	}
	b.StopTimer()
	close(stop)
	lat := <-pings
	mib := float64(size) / (1 << 20)
	b.ReportMetric(mib, "backup-MiB")
	b.ReportMetric(mib/percentileMS(streams, 0.5)*1000, "backup-MiB/s")
	b.ReportMetric(percentileMS(lat, 0.5), "ping-p50-ms")
	b.ReportMetric(percentileMS(lat, 0.99), "ping-p99-ms")
	b.ReportMetric(percentileMS(lat, 1), "ping-max-ms")

	dir := b.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(b, cf, withRestore(clusterYAML("cache", "cache-0", "appendonly no", ""), "file://"+dest, sum))
	dst := startInstance(b, instanceOpts{pod: "cache-0", clusterFile: cf})
	dst.waitReady(5 * time.Minute)
	for _, r := range dst.logRecords() {
		if r["msg"] == "restored the dataset from backup" {
			b.ReportMetric(mib/r["seconds"].(float64), "restore-MiB/s")
		}
	}
}

// series is one line of /metrics: a name, its labels, its value.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape reads /metrics, checking on the way that no series appears twice
// and that it shows no password. Prometheus's own parser reads it too, in
// e2e/ (TestInstancesOnARealAPIServer), which keeps its module out of this
// one's requirements.
func scrape(t *testing.T, in *instance) []series {
	t.Helper()
	code, body := in.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics %d %s", code, body)
	}
	if strings.Contains(string(body), in.password) {
		t.Fatal("/metrics shows the password")
	}
	var out []series
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics line %q has no value", line)
		}
		key := line[:i]
		if seen[key] {
			t.Fatalf("/metrics has %s twice", key)
		}
		seen[key] = true
		sr := series{name: key, labels: map[string]string{}, value: v}
		if name, labels, ok := strings.Cut(key, "{"); ok {
			sr.name = name
			for _, kv := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
				k, v, _ := strings.Cut(kv, "=")
				sr.labels[k], _ = strconv.Unquote(v)
			}
		}
		out = append(out, sr)
	}
	return out
}

// metric is the value of a series; -1 when /metrics has no such series.
func metric(all []series, name string, labels ...string) float64 {
next:
	for _, s := range all {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return s.value
	}
	return -1
}

// /metrics follows Redis and the manager: keys written move the keyspace
// figures, a fence shows, a crash counts, and a hung redis-server does not
// hold a scrape up.
func TestMetricsFollowRedis(t *testing.T) {
	const fragment = "appendonly yes\nmaxmemory 64mb"
	in := oneInstance(t, fragment)
	in.waitReady(20 * time.Second)
	f := scrape(t, in)
	for name, want := range map[string]float64{"redis_up": 1, "redis_operator_fenced": 0, "redis_operator_ready": 1, "redis_maxmemory_bytes": 64 << 20, "redis_db_keys": 0} {
		if got := metric(f, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if metric(f, "redis_operator_role", "role", "master") != 1 || metric(f, "redis_operator_role", "role", "replica") != 0 {
		t.Errorf("role series: master %v, replica %v", metric(f, "redis_operator_role", "role", "master"), metric(f, "redis_operator_role", "role", "replica"))
	}
	if hash := in.status().ExecutableHash; metric(f, "redis_operator_build_info", "executable_hash", hash) != 1 {
		t.Errorf("no build info for the running binary %s", hash)
	}
	hits0, cmds0 := metric(f, "redis_keyspace_hits_total"), metric(f, "redis_commands_processed_total")

	c := in.redis()
	writeKeys(t, c, "k", 100)
	for i := range 50 {
		c.Do("GET", fmt.Sprintf("k:%d", i))
	}
	c.Do("GET", "no-such-key")
	eventually(t, 5*time.Second, "the keyspace figures to follow the writes and reads", func() bool {
		f := scrape(t, in)
		return metric(f, "redis_db_keys") == 100 && metric(f, "redis_keyspace_hits_total") >= hits0+50 &&
			metric(f, "redis_keyspace_misses_total") >= 1 && metric(f, "redis_commands_processed_total") > cmds0+150
	})

	syscall.Kill(in.redisPID(), syscall.SIGKILL)
	eventually(t, 10*time.Second, "the restart to be counted", func() bool {
		f := scrape(t, in)
		return metric(f, "redis_operator_redis_restarts_total") == 1 && metric(f, "redis_up") == 1
	})

	// Hung: every scrape answers at once, from what was last seen, and
	// redis_up turns 0 once that is old.
	pid := in.redisPID()
	syscall.Kill(pid, syscall.SIGSTOP)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	stopped := time.Now()
	eventually(t, 15*time.Second, "redis_up 0 while redis-server hangs", func() bool {
		began := time.Now()
		f := scrape(t, in)
		if took := time.Since(began); took > 500*time.Millisecond {
			t.Fatalf("a scrape took %s while redis-server hung", took)
		}
		return metric(f, "redis_up") == 0 && metric(f, "redis_used_memory_bytes") == -1
	})
	t.Logf("redis_up 0 after %s of a hang", time.Since(stopped).Round(time.Millisecond))
	syscall.Kill(pid, syscall.SIGCONT)

	writeFile(t, in.clusterFile, withFence(clusterYAML("cache", "cache-0", fragment, in.password), `["cache-0"]`))
	eventually(t, 10*time.Second, "the fence to show", func() bool {
		f := scrape(t, in)
		return metric(f, "redis_operator_fenced") == 1 && metric(f, "redis_up") == 0 && metric(f, "redis_operator_role", "role", "none") == 1
	})
}

// The status command prints this instance's /v1/status for a human.
func TestStatusCommandPrintsATable(t *testing.T) {
	in := oneInstance(t, "appendonly no")
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 7)
	eventually(t, 5*time.Second, "the keys in the status", func() bool { return in.status().Keys == 7 })
	out, err := exec.Command(binary, "status", "--addr", fmt.Sprintf("127.0.0.1:%d", in.httpPort)).CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{`(?m)^role +master, ready$`, `(?m)^keys +7$`, `(?m)^fenced +no$`, `(?m)^last error +-$`, `(?m)^replication +0 replicas connected`} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("status output lacks %s:\n%s", want, out)
		}
	}
	out, err = exec.Command(binary, "status", "--addr", fmt.Sprintf("127.0.0.1:%d", freePort(t))).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "connection refused") {
		t.Errorf("status against nothing: %v\n%s", err, out)
	}
}

// Requests refused for want of credentials cost their caller nothing, so
// the log of them is limited: one line every 10 s, which counts those it
// held back.
func TestRefusedOperatorCommandsDoNotFloodTheLog(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, "op-token")
	cf := filepath.Join(t.TempDir(), "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw",
		extraArgs: []string{"--operator-token-file", tokenFile}})
	in.waitReady(20 * time.Second)
	for i := range 200 {
		if code, body := in.restart(fmt.Sprintf("guess-%d", i)); code != http.StatusUnauthorized {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	const refused = "refused an operator command without valid credentials"
	if n := in.logCount(refused); n != 1 {
		t.Fatalf("%d log lines for 200 refused requests, want 1", n)
	}
}
