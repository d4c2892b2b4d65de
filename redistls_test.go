package main

// spec.tls against real redis-servers: TLS only on the Redis port,
// replication and the manager's own connections over TLS with client
// certificates, a renewal served live, a bad Secret refused, and TLS
// turned on and off one restart at a time without a replica losing its
// primary for longer than that primary's restart.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// tlsLeaf is a certificate for every instance on 127.0.0.1, for a server
// and a client both, as cert-manager issues one with both usages.
func (ca *testCA) tlsLeaf(t testing.TB, serial int64, from, to time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "cache"},
		NotBefore: from, NotAfter: to, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kd)
}

// tlsSecret is the three keys of a kubernetes.io/tls Secret.
type tlsSecret struct{ cert, key, ca []byte }

func newTLSSecret(t testing.TB, ca *testCA, serial int64) tlsSecret {
	cert, key := ca.tlsLeaf(t, serial, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	return tlsSecret{cert, key, ca.pem}
}

// tlsClusterYAML is clusterYAML with spec.tls and its Secret.
func tlsClusterYAML(target, fragment, clientAuth string, s tlsSecret) string {
	y := clusterYAML("cache", target, fragment, "s3cret-pw")
	y = strings.Replace(y, "  configMapRef:", fmt.Sprintf("  tls: {secretRef: {name: cache-tls}, clientAuth: %s}\n  configMapRef:", clientAuth), 1)
	b64 := base64.StdEncoding.EncodeToString
	return y + fmt.Sprintf("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cache-tls\ntype: kubernetes.io/tls\ndata:\n  tls.crt: %s\n  tls.key: %s\n  ca.crt: %s\n",
		b64(s.cert), b64(s.key), b64(s.ca))
}

// clientTLSOf is how an application reaches the instances: it trusts
// ca.crt and shows the certificate when asked.
func clientTLSOf(t testing.TB, s tlsSecret) *tls.Config {
	cert, err := tls.X509KeyPair(s.cert, s.key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.ca)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}
}

// servedSerial is the serial of the certificate a new TLS connection to
// port is shown, or -1.
func servedSerial(port int, roots *x509.CertPool) int64 {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", localAddr(port), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		return -1
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// tlsCluster starts n instances of a cluster with spec.tls, each with an
// operator token.
func tlsCluster(t *testing.T, n int, clientAuth string, s tlsSecret, fragment string) (string, []*instance) {
	t.Helper()
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, tlsClusterYAML("cache-0", fragment, clientAuth, s))
	writeFile(t, filepath.Join(dir, "token"), "op-token")
	var nodes []*instance
	for i := range n {
		nodes = append(nodes, startInstance(t, instanceOpts{pod: fmt.Sprintf("cache-%d", i), clusterFile: cf, password: "s3cret-pw",
			clientTLS: clientTLSOf(t, s), extraArgs: []string{"--operator-token-file", filepath.Join(dir, "token")}}))
	}
	for _, in := range nodes {
		in.waitReady(30 * time.Second)
	}
	return cf, nodes
}

// Refused material names what is wrong and never quotes a key.
func TestTLSMaterialIsChecked(t *testing.T) {
	ca, other := newTestCA(t, "ca"), newTestCA(t, "other-ca")
	good := newTLSSecret(t, ca, 2)
	_, otherKey := ca.tlsLeaf(t, 3, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	expiredCert, expiredKey := ca.tlsLeaf(t, 4, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	strangerCert, strangerKey := other.tlsLeaf(t, 5, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	for _, c := range []struct {
		name       string
		m          tlsMaterial
		wantErr    string
		authClient string
	}{
		{"good", tlsMaterial{cert: good.cert, key: good.key, ca: good.ca}, "", "no"},
		{"good, required", tlsMaterial{cert: good.cert, key: good.key, ca: good.ca, clientAuth: "required"}, "", "yes"},
		{"good, optional", tlsMaterial{cert: good.cert, key: good.key, ca: good.ca, clientAuth: "optional"}, "", "optional"},
		{"the key of another certificate", tlsMaterial{cert: good.cert, key: otherKey, ca: good.ca}, "tls.key and tls.crt are not a pair: private key does not match public key", ""},
		{"a key that is no key", tlsMaterial{cert: good.cert, key: []byte("not a key"), ca: good.ca}, "tls.key and tls.crt are not a pair", ""},
		{"another CA's certificate", tlsMaterial{cert: strangerCert, key: strangerKey, ca: good.ca}, "tls.crt does not chain to ca.crt", ""},
		{"an expired certificate", tlsMaterial{cert: expiredCert, key: expiredKey, ca: good.ca}, "tls.crt is valid from", ""},
		{"no CA", tlsMaterial{cert: good.cert, key: good.key, ca: []byte("nothing")}, "ca.crt holds no PEM certificate", ""},
		{"an unknown clientAuth", tlsMaterial{cert: good.cert, key: good.key, ca: good.ca, clientAuth: "sometimes"}, `clientAuth "sometimes" is not one of`, ""},
	} {
		l, err := checkTLS(&c.m, time.Now())
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.wantErr == "" && l.authValue != c.authClient:
			t.Errorf("%s: tls-auth-clients %q, want %q", c.name, l.authValue, c.authClient)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: error %v, want one saying %q", c.name, err, c.wantErr)
		case err != nil && len(c.m.key) > 60 && (strings.Contains(err.Error(), "PRIVATE KEY-----") || strings.Contains(err.Error(), string(c.m.key[30:60]))):
			t.Errorf("%s: the error quotes the key: %v", c.name, err)
		}
	}
	if _, err := tlsMaterialOf(&tlsSpec{}, map[string][]byte{"tls.crt": good.cert, "ca.crt": good.ca}); err == nil || !strings.Contains(err.Error(), `no key "tls.key"`) {
		t.Errorf("a Secret without tls.key: %v", err)
	}
}

// With clientAuth required: Redis serves TLS only, and only to a client
// with a certificate; replicas replicate over TLS with theirs; the
// manager's own connections (probes, switchover, backup, discovery) all
// work; a switchover under writes loses none.
func TestTLSClusterWithClientCertificates(t *testing.T) {
	ca := newTestCA(t, "cache-ca")
	secret := newTLSSecret(t, ca, 2)
	const fragment = "appendonly no\nsave \"\"\nrepl-diskless-sync-delay 0"
	cf, nodes := tlsCluster(t, 3, "required", secret, fragment)
	for _, in := range nodes {
		st := in.status()
		if !st.TLS || len(st.PendingRestart) != 0 || st.LastError != "" {
			t.Errorf("%s: tls %v, pendingRestart %v, lastError %q", in.pod, st.TLS, st.PendingRestart, st.LastError)
		}
		if in.pod != "cache-0" && st.MasterLinkStatus != "up" {
			t.Errorf("%s: replication link %q over TLS", in.pod, st.MasterLinkStatus)
		}
		if repl, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "tls-replication")); in.pod != "cache-0" && (len(repl) != 2 || repl[1] != "yes") {
			t.Errorf("%s: tls-replication %v", in.pod, repl)
		}
	}
	primary := nodes[0]

	// A plaintext client gets nothing; a TLS client without a certificate
	// neither.
	if c, err := dialRedisAs("", localAddr(primary.port), []string{"s3cret-pw"}, nil, time.Second); err == nil {
		_, err = c.Do("PING")
		c.Close()
		t.Errorf("a plaintext client was served (%v)", err)
	}
	noCert := clientTLSOf(t, secret)
	noCert.Certificates = nil
	if c, err := dialRedisAs("", localAddr(primary.port), []string{"s3cret-pw"}, noCert, time.Second); err == nil {
		_, err = c.Do("PING")
		c.Close()
		if err == nil {
			t.Error("a client without a certificate was served, with clientAuth required")
		}
	}

	// The discovery port speaks TLS, asks for the same certificate, and
	// names the primary.
	var addr []string
	eventually(t, 5*time.Second, "the discovery port over TLS to name the primary", func() bool {
		c, err := dialRedisAs("", localAddr(nodes[2].sentinelPort), []string{"s3cret-pw"}, clientTLSOf(t, secret), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		addr, _ = redis.Strings(c.Do("SENTINEL", "get-master-addr-by-name", "cache"))
		return len(addr) == 2 && addr[1] == strconv.Itoa(primary.port)
	})
	if c, err := net.DialTimeout("tcp", localAddr(nodes[2].sentinelPort), time.Second); err == nil {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "*1\r\n$4\r\nPING\r\n")
		b := make([]byte, 64)
		n, _ := c.Read(b)
		c.Close()
		if strings.Contains(string(b[:n]), "PONG") || strings.Contains(string(b[:n]), "NOAUTH") {
			t.Errorf("the discovery port answered plaintext: %q", b[:n])
		}
	}

	// /metrics tells when the certificate expires.
	leaf, _ := x509.ParseCertificate(mustPEM(t, secret.cert))
	_, body := primary.get("/metrics")
	m := regexp.MustCompile(`(?m)^redis_operator_tls_certificate_expiry_seconds (\S+)$`).FindStringSubmatch(string(body))
	if len(m) != 2 {
		t.Fatal("/metrics has no redis_operator_tls_certificate_expiry_seconds")
	}
	if v, _ := strconv.ParseFloat(m[1], 64); int64(v) != leaf.NotAfter.Unix() {
		t.Errorf("/metrics: the expiry %v, want %d", m, leaf.NotAfter.Unix())
	}

	// GET /v1/backup streams a snapshot over the manager's TLS link.
	primary.redis().Do("SET", "before-backup", "1")
	dest := filepath.Join(t.TempDir(), "backup.rdb")
	resp, err := primary.getBackup("op-token", dest)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("backup: %v %v", resp, err)
	}
	if b, _ := os.ReadFile(dest); len(b) < 9 || string(b[:5]) != "REDIS" {
		t.Errorf("the backup is no RDB: %q", b[:min(len(b), 9)])
	}

	// A switchover under writes, over TLS.
	from, to := nodes[0], nodes[1]
	w := startWriter(t, from, to)
	time.Sleep(300 * time.Millisecond)
	writeFile(t, cf, tlsClusterYAML(to.pod, fragment, "required", secret))
	eventually(t, 10*time.Second, to.pod+" to acknowledge writes as the new primary", func() bool {
		n, _ := w.onTo()
		return n >= 200
	})
	acked := w.finish()
	got, err := redis.Int64(to.redis().Do("GET", "counter"))
	if err != nil || got != acked {
		t.Fatalf("counter on the new primary is %d (%v); %d writes were acknowledged", got, err, acked)
	}
	for _, n := range []*instance{nodes[0], nodes[2]} {
		eventually(t, 10*time.Second, n.pod+" to follow "+to.pod+" over TLS", func() bool {
			return masterPort(t, n) == strconv.Itoa(to.port) && n.status().MasterLinkStatus == "up"
		})
	}
	for _, in := range nodes {
		if logged := in.out.String(); strings.Contains(logged, "PRIVATE KEY") || strings.Contains(logged, "s3cret-pw") {
			t.Errorf("%s logged a secret", in.pod)
		}
	}
}

func mustPEM(t testing.TB, b []byte) []byte {
	t.Helper()
	der := pemDER(b)
	if der == nil {
		t.Fatal("no PEM block")
	}
	return der
}

// A renewed certificate, under a CA that moved to a bundle of old and new,
// is served to new connections by every instance within a second of the
// manager reading it, by the same redis-server, over the same replication
// link. A bad Secret after it is refused, and the renewed one stays.
func TestTLSRenewalIsServedLive(t *testing.T) {
	oldCA, newCA := newTestCA(t, "ca-1"), newTestCA(t, "ca-2")
	first := newTLSSecret(t, oldCA, 2)
	cf, nodes := tlsCluster(t, 2, "none", first, "appendonly no")
	primary, replica := nodes[0], nodes[1]
	oldRoots := x509.NewCertPool()
	oldRoots.AppendCertsFromPEM(oldCA.pem)
	pids := []int{primary.redisPID(), replica.redisPID()}
	linkID := func() string {
		list, err := redis.String(primary.redis().Do("CLIENT", "LIST", "TYPE", "replica"))
		if err != nil {
			t.Fatal(err)
		}
		return regexp.MustCompile(`id=(\d+)`).FindString(list)
	}
	link := linkID()
	fullSyncs := func() string {
		text, _ := redis.String(primary.redis().Do("INFO", "stats"))
		return parseInfo(text)["sync_full"]
	}
	syncs := fullSyncs()
	for _, in := range nodes {
		if got := servedSerial(in.port, oldRoots); got != 2 {
			t.Fatalf("%s serves serial %d", in.pod, got)
		}
	}

	bundle := append(append([]byte{}, oldCA.pem...), newCA.pem...)
	renewedCert, renewedKey := newCA.tlsLeaf(t, 3, time.Now().Add(-time.Minute), time.Now().Add(48*time.Hour))
	renewed := tlsSecret{renewedCert, renewedKey, bundle}
	newRoots := x509.NewCertPool()
	newRoots.AppendCertsFromPEM(bundle)
	changed := time.Now()
	writeFile(t, cf, tlsClusterYAML("cache-0", "appendonly no", "none", renewed))
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to serve the renewed certificate", func() bool { return servedSerial(in.port, newRoots) == 3 })
	}
	t.Logf("renewed certificate served by both instances %s after the file changed", time.Since(changed).Round(time.Millisecond))
	for i, in := range nodes {
		in.clientTLS = clientTLSOf(t, renewed)
		if pid := in.redisPID(); pid != pids[i] {
			t.Errorf("%s: redis-server restarted for the renewal (PID %d, was %d)", in.pod, pid, pids[i])
		}
		if st := in.status(); st.LastError != "" || len(st.PendingRestart) != 0 || !st.Ready {
			t.Errorf("%s after the renewal: %+v", in.pod, st)
		}
	}
	if now := linkID(); now != link || fullSyncs() != syncs {
		t.Errorf("the replication link was dropped for the renewal: %s then %s, full syncs %s then %s", link, now, syncs, fullSyncs())
	}
	onDisk := func(in *instance) string {
		b, err := os.ReadFile(tlsPath(in.dataDir, "tls.crt"))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(tlsPath(in.dataDir, "tls.key"))
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: tls.key is %v", in.pod, fi.Mode().Perm())
		}
		sum := sha256.Sum256(b)
		return hex.EncodeToString(sum[:])
	}
	kept := onDisk(primary)

	// Bad Secrets, one after the other: each is refused with its reason,
	// and the renewed certificate keeps serving, on disk too.
	_, strayKey := newCA.tlsLeaf(t, 9, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	expiredCert, expiredKey := newCA.tlsLeaf(t, 10, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	strangerCert, strangerKey := newTestCA(t, "stranger").tlsLeaf(t, 11, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	for _, bad := range []struct {
		s   tlsSecret
		why string
	}{
		{tlsSecret{renewedCert, strayKey, bundle}, "are not a pair"},
		{tlsSecret{expiredCert, expiredKey, bundle}, "not now"},
		{tlsSecret{strangerCert, strangerKey, bundle}, "does not chain to ca.crt"},
	} {
		writeFile(t, cf, tlsClusterYAML("cache-0", "appendonly no", "none", bad.s))
		for _, in := range nodes {
			eventually(t, 5*time.Second, in.pod+" to refuse a Secret that "+bad.why, func() bool {
				return strings.Contains(in.status().LastError, bad.why)
			})
			if got := servedSerial(in.port, newRoots); got != 3 {
				t.Errorf("%s serves serial %d after a refused Secret (%s)", in.pod, got, bad.why)
			}
		}
	}
	if onDisk(primary) != kept {
		t.Error("a refused Secret reached the disk")
	}
	if !primary.hasLog("refusing the spec.tls Secret; the last good certificate keeps serving") {
		t.Error("no log of the refusal")
	}
	// Put right, the error goes.
	writeFile(t, cf, tlsClusterYAML("cache-0", "appendonly no", "none", renewed))
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to clear the error", func() bool { return in.status().LastError == "" })
	}
	for _, in := range nodes {
		if strings.Contains(in.out.String(), "PRIVATE KEY") {
			t.Errorf("%s logged a key", in.pod)
		}
	}
}

// TLS turned on, then off, on a running cluster: each instance says it
// needs a restart, and whatever the order of the restarts, every replica
// reaches its primary the way that one serves, and is back within a few
// seconds of its primary's own restart.
func TestTLSTurnedOnAndOffOneRestartAtATime(t *testing.T) {
	ca := newTestCA(t, "cache-ca")
	secret := newTLSSecret(t, ca, 2)
	const fragment = "appendonly no\nrepl-diskless-sync-delay 0"
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", fragment, "s3cret-pw"))
	writeFile(t, filepath.Join(dir, "token"), "op-token")
	var nodes []*instance
	for i := range 3 {
		nodes = append(nodes, startInstance(t, instanceOpts{pod: fmt.Sprintf("cache-%d", i), clusterFile: cf, password: "s3cret-pw",
			extraArgs: []string{"--operator-token-file", filepath.Join(dir, "token")}}))
	}
	for _, in := range nodes {
		in.waitReady(30 * time.Second)
	}
	nodes[0].redis().Do("SET", "k", "v")
	serves := func(in *instance, tls bool) {
		t.Helper()
		if tls {
			in.clientTLS = clientTLSOf(t, secret)
		} else {
			in.clientTLS = nil
		}
		eventually(t, 10*time.Second, fmt.Sprintf("%s to serve with TLS %v, and be ready", in.pod, tls), func() bool {
			st := in.status()
			return st.TLS == tls && st.Ready
		})
	}
	restart := func(in *instance) {
		t.Helper()
		if code, body := in.restart("op-token"); code != http.StatusOK {
			t.Fatalf("restart %s: %d %s", in.pod, code, body)
		}
	}
	linksUp := func(what string) {
		t.Helper()
		for _, in := range nodes[1:] {
			eventually(t, 10*time.Second, in.pod+"'s link up "+what, func() bool {
				st := in.status()
				return st.MasterLinkStatus == "up" && st.Ready
			})
		}
	}

	writeFile(t, cf, tlsClusterYAML("cache-0", fragment, "none", secret))
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to say TLS waits for a restart", func() bool {
			return slices.Equal(in.status().PendingRestart, []string{"port", "tls-port"})
		})
	}
	linksUp("with TLS pending")
	restart(nodes[1]) // a replica first: it serves TLS, and reaches its primary in plaintext
	serves(nodes[1], true)
	linksUp("with one replica on TLS")
	began := time.Now()
	restart(nodes[0]) // then the primary: both replicas reach it over TLS, the plaintext one too
	serves(nodes[0], true)
	linksUp("with the primary on TLS")
	t.Logf("both replicas linked %s after the primary's restart began", time.Since(began).Round(time.Millisecond))
	restart(nodes[2])
	serves(nodes[2], true)
	linksUp("all on TLS")
	for _, in := range nodes {
		if st := in.status(); len(st.PendingRestart) != 0 || st.LastError != "" {
			t.Errorf("%s: pendingRestart %v, lastError %q", in.pod, st.PendingRestart, st.LastError)
		}
	}

	// And off again, a replica first: it serves plaintext, and still
	// reaches its TLS primary with the last certificate.
	writeFile(t, cf, clusterYAML("cache", "cache-0", fragment, "s3cret-pw"))
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to say plaintext waits for a restart", func() bool {
			return slices.Equal(in.status().PendingRestart, []string{"port", "tls-port"})
		})
	}
	restart(nodes[2])
	serves(nodes[2], false)
	linksUp("with one replica back on plaintext")
	restart(nodes[0])
	serves(nodes[0], false)
	linksUp("with the primary back on plaintext")
	restart(nodes[1])
	serves(nodes[1], false)
	linksUp("all on plaintext")
	if v, err := redis.String(nodes[1].redis().Do("GET", "k")); err != nil || v != "v" {
		t.Errorf("the key written before: %q %v", v, err)
	}
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func pemDER(b []byte) []byte {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil
	}
	return block.Bytes
}

// BenchmarkRedisThroughputTLS is BenchmarkRedisThroughput over TLS: the
// manager's redis-server with spec.tls against a bare one on the same
// redis.conf TLS lines and certificate, both driven by redis-benchmark
// --tls.
func BenchmarkRedisThroughputTLS(b *testing.B) {
	tool, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Fatal("redis-benchmark is not installed; it comes with redis-tools")
	}
	const fragment = "appendonly no\nsave \"\""
	secret := newTLSSecret(b, newTestCA(b, "bench-ca"), 2)
	dir := b.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(b, cf, tlsClusterYAML("cache-0", fragment, "none", secret))
	managed := startInstance(b, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", clientTLS: clientTLSOf(b, secret)})
	managed.waitReady(20 * time.Second)
	files := &podTLS{cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key"), ca: filepath.Join(dir, "ca.crt"), authClients: "no", replication: true}
	for path, data := range map[string][]byte{files.cert: secret.cert, files.key: secret.key, files.ca: secret.ca} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	compareThroughput(b, tool, managed, bareRedis(b, fragment, managed.password, files), "--tls", "--cacert", files.ca)
}

// A pod whose spec.tls Secret was never good does not start redis-server
// at all, rather than serve plaintext; the Secret put right, it starts
// with TLS.
func TestTLSNeverPlaintextWithoutAGoodCertificate(t *testing.T) {
	ca := newTestCA(t, "cache-ca")
	good := newTLSSecret(t, ca, 2)
	expiredCert, expiredKey := ca.tlsLeaf(t, 3, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, tlsClusterYAML("cache-0", "appendonly no", "none", tlsSecret{expiredCert, expiredKey, ca.pem}))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", clientTLS: clientTLSOf(t, good)})
	eventually(t, 10*time.Second, "the expired certificate to be refused", func() bool {
		return strings.Contains(in.status().LastError, "not now")
	})
	time.Sleep(time.Second)
	if c, err := net.DialTimeout("tcp", localAddr(in.port), time.Second); err == nil {
		c.Close()
		t.Fatal("redis-server listens without a good certificate")
	}
	if code, _ := in.get("/readyz"); code == http.StatusOK {
		t.Error("ready without redis-server")
	}
	writeFile(t, cf, tlsClusterYAML("cache-0", "appendonly no", "none", good))
	in.waitReady(20 * time.Second)
	if st := in.status(); !st.TLS || st.LastError != "" {
		t.Errorf("after the Secret was put right: tls %v, lastError %q", st.TLS, st.LastError)
	}
}

// An in-place upgrade of a manager whose redis-server serves TLS: the new
// manager reaches it over TLS from its first look (the certificate on
// disk, before its first view), redis-server keeps its PID, and the
// probes never fail; a stop after it is a graceful SHUTDOWN over TLS.
func TestTLSUpgradeInPlace(t *testing.T) {
	v2 := binaryV2(t)
	secret := newTLSSecret(t, newTestCA(t, "cache-ca"), 2)
	dir := t.TempDir()
	exe := filepath.Join(dir, "bin", "redis-operator")
	os.MkdirAll(filepath.Dir(exe), 0o755)
	if b, err := os.ReadFile(binary); err != nil || os.WriteFile(exe, b, 0o755) != nil {
		t.Fatal("copying the manager", err)
	}
	writeFile(t, filepath.Join(dir, "token"), "up-token")
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, tlsClusterYAML("cache-0", "appendonly no", "required", secret))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", binary: exe, clientTLS: clientTLSOf(t, secret),
		extraArgs: []string{"--operator-token-file", filepath.Join(dir, "token")}})
	in.waitReady(20 * time.Second)
	pid := in.redisPID()
	stop := make(chan struct{})
	failures := make(chan string, 1)
	go func() {
		for {
			select {
			case <-stop:
				close(failures)
				return
			case <-time.After(5 * time.Millisecond):
			}
			if code, body := in.get("/readyz"); code != http.StatusOK {
				select {
				case failures <- fmt.Sprintf("%d %s", code, body):
				default:
				}
			}
		}
	}()
	sum := sha256.Sum256(v2)
	if code, out := in.put(bytes.NewReader(v2), hex.EncodeToString(sum[:]), "up-token"); code != http.StatusOK {
		t.Fatalf("PUT /v1/update: %d %v", code, out)
	}
	eventually(t, 20*time.Second, "the new manager to run", func() bool { return in.status().ManagerVersion == "test-v2" })
	time.Sleep(2 * time.Second) // several looks at Redis by the new manager
	close(stop)
	if f, failed := <-failures; failed {
		t.Errorf("/readyz failed during the upgrade: %s", f)
	}
	if got := in.redisPID(); got != pid {
		t.Errorf("redis-server's PID %d, was %d", got, pid)
	}
	if st := in.status(); !st.TLS || st.LastError != "" || !st.Ready {
		t.Errorf("after the upgrade: %+v", st)
	}
	if code := in.stop(); code != 0 {
		t.Errorf("exit %d", code)
	}
	if in.hasLog("SHUTDOWN failed; sending SIGTERM") {
		t.Error("the stop could not SHUTDOWN over TLS")
	}
}

// A replica whose TLS attempt meets a primary that serves plaintext waits
// for repl-timeout (60 s) unless abandonHandshake hurries it: the link is
// up within seconds, and repl-timeout is as it was.
func TestStuckTLSHandshakeIsAbandoned(t *testing.T) {
	rs := requireRedis(t)
	secret := newTLSSecret(t, newTestCA(t, "ca"), 2)
	dir := t.TempDir()
	for name, data := range map[string][]byte{"tls.crt": secret.cert, "tls.key": secret.key, "ca.crt": secret.ca} {
		os.WriteFile(filepath.Join(dir, name), data, 0o600)
	}
	start := func(args ...string) int {
		port := freePort(t)
		cmd := exec.Command(rs, append([]string{"--port", fmt.Sprint(port), "--dir", t.TempDir(), "--save", "", "--appendonly", "no"}, args...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		eventually(t, 5*time.Second, "redis-server to answer", func() bool {
			c, err := dialRedisAs("", localAddr(port), nil, nil, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return port
	}
	primary := start()
	replica := start("--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.crt"), "--tls-replication", "yes", "--replicaof", "127.0.0.1", fmt.Sprint(primary))
	c, err := dialRedisAs("", localAddr(replica), nil, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(1500 * time.Millisecond) // the TLS attempt is under way, and stuck
	linkUp := func() bool {
		text, _ := redis.String(c.Do("INFO", "replication"))
		return parseInfo(text)["master_link_status"] == "up"
	}
	if linkUp() {
		t.Fatal("the TLS replica reached its plaintext primary")
	}
	c.Do("CONFIG", "SET", "tls-replication", "no")
	began := time.Now()
	abandonHandshake(slog.New(slog.DiscardHandler), redisNode{dial: localAddr(replica)}, []string{""})
	eventually(t, 5*time.Second, "the link to come up in plaintext", linkUp)
	t.Logf("link up %s after the attempt was abandoned", time.Since(began).Round(time.Millisecond))
	if v, _ := redis.Strings(c.Do("CONFIG", "GET", "repl-timeout")); len(v) != 2 || v[1] != "60" {
		t.Errorf("repl-timeout left at %v", v)
	}
}
