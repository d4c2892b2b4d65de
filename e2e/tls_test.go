package e2e

// spec.tls on a real API server: the Secret created, renewed and broken
// through the API, a Sentinel client (go-redis) finding the primary and
// writing over TLS through a switchover.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// testCA issues the certificates of the tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cache-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// secret is the data of a kubernetes.io/tls Secret with a certificate of
// this serial for 127.0.0.1, for servers and clients both.
func (ca *testCA) secret(t testing.TB, serial int64) map[string][]byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "cache"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return map[string][]byte{
		"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}),
		"ca.crt":  ca.pem,
	}
}

// clientTLS is how an application reaches the instances with the Secret.
func clientTLS(t testing.TB, data map[string][]byte) *tls.Config {
	cert, err := tls.X509KeyPair(data["tls.crt"], data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(data["ca.crt"])
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}
}

// servedSerial is the serial of the certificate a new connection to port
// is shown, or -1.
func servedSerial(port int, cfg *tls.Config) int64 {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
	if err != nil {
		return -1
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// tlsFixture is three managers of a RedisCluster with spec.tls on a real
// API server, with the ServiceAccount and Role of deploy/rbac.yaml.
type tlsFixture struct {
	admin kubernetes.Interface
	dyn   dynamic.Interface
	nodes []*instance
	data  map[string][]byte // the Secret as last written
}

func startTLSCluster(t testing.TB, ca *testCA) *tlsFixture {
	t.Helper()
	cp, kubeconfig := startDeployedAPIServer(t)
	f := &tlsFixture{admin: kubernetes.NewForConfigOrDie(cp.admin), dyn: dynamic.NewForConfigOrDie(cp.admin), data: ca.secret(t, 2)}
	if _, err := f.admin.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cache-tls"},
		Type: corev1.SecretTypeTLS, Data: f.data}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createCluster(t, cp, "cache", 3)
	patch := []byte(`{"spec":{"tls":{"secretRef":{"name":"cache-tls"},"clientAuth":"required"}}}`)
	if _, err := f.dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		f.nodes = append(f.nodes, startInstanceOf(t, "cache", fmt.Sprintf("cache-%d", i), kubeconfig, filepath.Join(t.TempDir(), fmt.Sprint(i)), freePort(t)))
	}
	for _, n := range f.nodes {
		eventually(t, 60*time.Second, n.pod+" to be ready", func() bool { return n.get("/readyz") == 200 })
	}
	return f
}

// startDeployedAPIServer is a real API server with the CRD and the Role of
// deploy/, and a kubeconfig with a token of its ServiceAccount, pointing
// at the API server itself.
func startDeployedAPIServer(t testing.TB) (*controlPlane, string) {
	t.Helper()
	cp := startControlPlane(t)
	cp.apply(t, "../deploy/crd.yaml", ns)
	cp.awaitCRD(t)
	cp.apply(t, "../deploy/rbac.yaml", ns)
	tr, err := kubernetes.NewForConfigOrDie(cp.admin).CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "cache-instance",
		&authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cp, cp.kubeconfigFor(t, tr.Status.Token, cp.admin.Host)
}

// renew writes the Secret through the API.
func (f *tlsFixture) renew(t testing.TB, data map[string][]byte) {
	t.Helper()
	s, err := f.admin.CoreV1().Secrets(ns).Get(context.Background(), "cache-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data = data
	if _, err := f.admin.CoreV1().Secrets(ns).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// entry is one instance's status entry as the API server holds it.
func (f *tlsFixture) entry(t testing.TB, pod string) map[string]any {
	return fleetEntries(t, f.dyn)["cache"][pod]
}

func (f *tlsFixture) redisPID(t testing.TB, n *instance) string {
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", n.port), Password: password, TLSConfig: clientTLS(t, f.data)})
	defer c.Close()
	info, err := c.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(info, "process_id:")
	pid, _, _ := strings.Cut(after, "\r\n")
	return pid
}

func TestTLSOnARealAPIServer(t *testing.T) {
	ca := newTestCA(t)
	f := startTLSCluster(t, ca)
	for _, n := range f.nodes {
		// tls and sentinelAddress are in the CRD's schema: a field missing
		// there would be pruned by the API server.
		if e := f.entry(t, n.pod); e["tls"] != true || e["lastError"] != "" || e["sentinelAddress"] != fmt.Sprintf("127.0.0.1:%d", n.sentinelPort) {
			t.Errorf("%s: status tls %v, sentinelAddress %v, lastError %v", n.pod, e["tls"], e["sentinelAddress"], e["lastError"])
		}
	}

	// go-redis, unmodified, finds the primary through the discovery ports
	// and writes over TLS, through a switchover, and loses nothing.
	var sentinels []string
	for _, n := range f.nodes {
		sentinels = append(sentinels, fmt.Sprintf("127.0.0.1:%d", n.sentinelPort))
	}
	w := startGoWriterWith("tls", &goredis.FailoverOptions{MasterName: "cache", SentinelAddrs: sentinels,
		Password: password, SentinelPassword: password, TLSConfig: clientTLS(t, f.data)})
	// A hundred writes before the switchover, so that the count checked
	// after it says something however quick the switchover is.
	eventually(t, 30*time.Second, "go-redis to write over TLS", func() bool { return w.count() >= 100 })
	moved := time.Now()
	if _, err := f.dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType,
		[]byte(`{"spec":{"targetPrimary":"cache-1"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "go-redis to write to cache-1", func() bool {
		return roleTLS(f.nodes[1].port, clientTLS(t, f.data)) == "master" && w.ackedSince(moved.Add(200*time.Millisecond))
	})
	acked := w.finish()
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", f.nodes[1].port), Password: password, TLSConfig: clientTLS(t, f.data)})
	if lost := lostWith(t, c, "tls", acked); lost > 0 || len(acked) < 100 {
		t.Errorf("%d of %d acknowledged writes lost across the switchover", lost, len(acked))
	}
	c.Close()
	t.Logf("go-redis over TLS: %d writes acknowledged, switchover followed", len(acked))

	// A renewal written through the API is served by every instance within
	// a second or so, by the same redis-servers.
	pids := map[string]string{}
	for _, n := range f.nodes {
		pids[n.pod] = f.redisPID(t, n)
	}
	renewed := ca.secret(t, 3)
	began := time.Now()
	f.renew(t, renewed)
	for _, n := range f.nodes {
		eventually(t, 10*time.Second, n.pod+" to serve the renewed certificate", func() bool { return servedSerial(n.port, clientTLS(t, renewed)) == 3 })
	}
	t.Logf("renewal through the API served by every instance %s after the Secret's update", time.Since(began).Round(time.Millisecond))
	f.data = renewed
	for _, n := range f.nodes {
		if pid := f.redisPID(t, n); pid != pids[n.pod] {
			t.Errorf("%s: redis-server restarted for the renewal", n.pod)
		}
	}

	// A Secret whose key is not its certificate's: refused by each, with
	// the reason in its status entry, and the renewed one keeps serving.
	bad := ca.secret(t, 4)
	bad["tls.key"] = ca.secret(t, 5)["tls.key"]
	f.renew(t, bad)
	for _, n := range f.nodes {
		eventually(t, 10*time.Second, n.pod+" to refuse the Secret in its status entry", func() bool {
			e, _ := f.entry(t, n.pod)["lastError"].(string)
			return strings.Contains(e, "tls.key and tls.crt are not a pair")
		})
		if got := servedSerial(n.port, clientTLS(t, renewed)); got != 3 {
			t.Errorf("%s serves serial %d after a refused Secret", n.pod, got)
		}
		if strings.Contains(n.out.String(), "PRIVATE KEY") {
			t.Errorf("%s logged a key", n.pod)
		}
	}
}

// BenchmarkTLSRenewal times a renewal on a real API server: from the
// update of the Secret to the new certificate served to a new connection
// by each of the three instances.
func BenchmarkTLSRenewal(b *testing.B) {
	ca := newTestCA(b)
	f := startTLSCluster(b, ca)
	var times []time.Duration
	b.ResetTimer()
	for i := range b.N {
		serial := int64(10 + i)
		data := ca.secret(b, serial)
		cfg := clientTLS(b, data)
		began := time.Now()
		f.renew(b, data)
		for _, n := range f.nodes {
			eventually(b, 10*time.Second, n.pod+" to serve the renewed certificate", func() bool { return servedSerial(n.port, cfg) == serial })
		}
		times = append(times, time.Since(began))
		time.Sleep(100 * time.Millisecond)
	}
	b.StopTimer()
	b.Logf("renewals: %v", times)
	b.ReportMetric(percentileMS(times, 0.5), "p50-ms")
	b.ReportMetric(percentileMS(times, 0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// roleTLS is ROLE's first word from the server at port, over TLS.
func roleTLS(port int, cfg *tls.Config) string {
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), Password: password, TLSConfig: cfg})
	defer c.Close()
	r, err := c.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return ""
	}
	return fmt.Sprint(r[0])
}
