// Package e2e runs the real manager binary against a real kube-apiserver and
// etcd, started in this process, with deploy/ applied as shipped and nothing
// but the shipped Role's token, and against real redis-server processes.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/storage/etcd3/testserver"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	kubeapiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"sigs.k8s.io/yaml"
)

const ns = "e2e"

var (
	binary, binaryV2 string
	tokenFile        string
	redisCluster     = schema.GroupVersionResource{Group: "redisoperator.io", Version: "v1", Resource: "redisclusters"}
)

func TestMain(m *testing.M) {
	if ports := os.Getenv(writerProcessEnv); ports != "" {
		runWriterProcess(ports)
		return
	}
	dir, err := os.MkdirTemp("", "redis-operator-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, binaryV2 = filepath.Join(dir, "redis-operator"), filepath.Join(dir, "redis-operator-v2")
	for out, v := range map[string]string{binary: "e2e", binaryV2: "e2e-v2"} {
		build := exec.Command("go", "build", "-o", out, "-ldflags", "-X main.version="+v, ".")
		build.Dir = ".."
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building the manager:", err)
			os.Exit(1)
		}
	}
	tokenFile = filepath.Join(dir, "operator-token")
	os.WriteFile(tokenFile, []byte("e2e-operator-token"), 0o600)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// controlPlane is etcd and kube-apiserver, reached by the managers through
// a proxy the test can cut to take the API server away.
type controlPlane struct {
	admin *rest.Config
	proxy *cutProxy
}

func startControlPlane(t testing.TB) *controlPlane {
	t.Helper()
	return startControlPlaneWith(t, "--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount")
}

// startControlPlaneWith is startControlPlane with the API server's flags.
func startControlPlaneWith(t testing.TB, flags ...string) *controlPlane {
	t.Helper()
	etcd := testserver.NewTestConfig(t)
	testserver.RunEtcd(t, etcd)
	storage := storagebackend.NewDefaultConfig(path.Join(uuid.New().String(), "registry"), nil)
	storage.Transport.ServerList = []string{etcd.ListenClientUrls[0].String()}
	srv := kubeapiservertesting.StartTestServerOrDie(t, nil, flags, storage)
	t.Cleanup(srv.TearDownFn)
	host := strings.TrimPrefix(srv.ClientConfig.Host, "https://")
	admin := kubernetes.NewForConfigOrDie(srv.ClientConfig)
	if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &controlPlane{admin: srv.ClientConfig, proxy: newCutProxy(t, host)}
}

// awaitCRD waits until the RedisCluster resource is served.
func (cp *controlPlane) awaitCRD(t testing.TB) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	eventually(t, 30*time.Second, "the CRD to be served", func() bool {
		_, err := dyn.Resource(redisCluster).Namespace(ns).List(context.Background(), metav1.ListOptions{})
		return err == nil
	})
}

// apply server-side-applies every document of a YAML file, as kubectl
// apply --server-side would, with the mapping read from discovery.
func (cp *controlPlane) apply(t testing.TB, file, namespace string) {
	t.Helper()
	if _, err := cp.tryApply(file, namespace); err != nil {
		t.Fatal(err)
	}
}

// tryApply is apply returning the first error, and the objects applied.
func (cp *controlPlane) tryApply(file, namespace string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	dc := discovery.NewDiscoveryClientForConfigOrDie(cp.admin)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var applied []*unstructured.Unstructured
	for {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return applied, nil
		}
		if err != nil {
			return applied, err
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			return applied, fmt.Errorf("%s: %w", file, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return applied, fmt.Errorf("%s: %w", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ri = dyn.Resource(m.Resource).Namespace(namespace)
		}
		out, err := ri.Apply(context.Background(), obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "e2e", Force: true})
		if err != nil {
			return applied, fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		applied = append(applied, out)
	}
}

// kubeconfig writes a kubeconfig that holds only a token of the
// ServiceAccount deploy/rbac.yaml ships, pointing at the proxy.
func (cp *controlPlane) kubeconfig(t testing.TB, token string) string {
	t.Helper()
	return cp.kubeconfigFor(t, token, "https://"+cp.proxy.addr)
}

// kubeconfigFor is kubeconfig pointing at server.
func (cp *controlPlane) kubeconfigFor(t testing.TB, token, server string) string {
	t.Helper()
	tls := cp.admin.TLSClientConfig
	cfg := map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "e2e",
		"clusters": []any{map[string]any{"name": "e2e", "cluster": map[string]any{
			"server":                     server,
			"certificate-authority-data": base64.StdEncoding.EncodeToString(tls.CAData),
			"tls-server-name":            tls.ServerName,
		}}},
		"users":    []any{map[string]any{"name": "instance", "user": map[string]any{"token": token}}},
		"contexts": []any{map[string]any{"name": "e2e", "context": map[string]any{"cluster": "e2e", "user": "instance", "namespace": ns}}},
	}
	b, _ := json.Marshal(cfg)
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (cp *controlPlane) tokenClient(token string) *rest.Config {
	c := rest.AnonymousClientConfig(cp.admin)
	c.BearerToken = token
	return c
}

// cutProxy forwards TCP to the API server until cut, and again once restored.
type cutProxy struct {
	t      testing.TB
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	down   bool
	conns  map[net.Conn]bool
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	p := &cutProxy{t: t, target: target, conns: map[net.Conn]bool{}}
	p.listen("127.0.0.1:0")
	p.addr = p.ln.Addr().String()
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.down = ln, false
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
}

func (p *cutProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.down { // accepted just as the proxy was cut
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// cut closes the listener and every connection: the API server is gone.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

func (p *cutProxy) restore() { p.listen(p.addr) }

// instance is one manager process.
type instance struct {
	pod            string
	dataDir        string
	port, httpPort int
	sentinelPort   int
	cmd            *exec.Cmd
	out            *syncBuffer
}

// handedOut are the ports freePort gave in this test binary.
var handedOut sync.Map

// freePort is a port for a server under test to listen on, below the
// ephemeral range (32768 and up): a port the kernel picked for :0 can be
// taken, before the server binds it, as the source port of an outgoing
// connection (a replica's link), and the server fails with "Address
// already in use". Never the same port twice in one test binary.
func freePort(t testing.TB) int {
	t.Helper()
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if _, given := handedOut.LoadOrStore(p, true); given {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		return p
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

func startInstance(t testing.TB, pod, kubeconfig string) *instance {
	return startInstanceAt(t, pod, kubeconfig, filepath.Join(t.TempDir(), pod), freePort(t))
}

func startInstanceAt(t testing.TB, pod, kubeconfig, dataDir string, port int) *instance {
	t.Helper()
	return startInstanceOf(t, "cache", pod, kubeconfig, dataDir, port)
}

func startInstanceOf(t testing.TB, cluster, pod, kubeconfig, dataDir string, port int) *instance {
	t.Helper()
	return launch(t, pod, dataDir, port, []string{"CLUSTER_NAME=" + cluster, "POD_NAME=" + pod, "OPERATOR_TOKEN_FILE=" + tokenFile},
		"--kubeconfig", kubeconfig, "--namespace", ns)
}

// launch runs the manager for pod, on ports of its own, with the source
// args and env name; it is stopped with SIGTERM when the test ends.
func launch(t testing.TB, pod, dataDir string, port int, env []string, args ...string) *instance {
	t.Helper()
	in := &instance{pod: pod, dataDir: dataDir, port: port, httpPort: freePort(t), sentinelPort: freePort(t), out: &syncBuffer{}}
	in.cmd = exec.Command(binary, append(append([]string{"instance"}, args...),
		"--data-dir", dataDir, "--redis-port", fmt.Sprint(in.port),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", in.httpPort), "--announce-host", "127.0.0.1",
		"--sentinel-port", fmt.Sprint(in.sentinelPort))...)
	in.cmd.Env = append(os.Environ(), env...)
	in.cmd.Stdout, in.cmd.Stderr = in.out, in.out
	in.cmd.WaitDelay = 5 * time.Second
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { in.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			in.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("log of %s:\n%s", pod, in.out.String())
		}
	})
	return in
}

func (in *instance) get(p string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", in.httpPort, p))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// scrape reads the instance's /metrics as Prometheus would: it must parse,
// hold no series twice, and show no password.
func (in *instance) scrape(t testing.TB) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", in.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.Contains(string(body), password) {
		t.Fatalf("%s's /metrics: %s, or it shows the password", in.pod, resp.Status)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s's /metrics does not parse: %v\n%s", in.pod, err, body)
	}
	for name, f := range families {
		seen := map[string]bool{}
		for _, m := range f.GetMetric() {
			key := fmt.Sprint(m.GetLabel())
			if seen[key] {
				t.Fatalf("%s's /metrics has %s%s twice", in.pod, name, key)
			}
			seen[key] = true
		}
	}
	return families
}

// value is the value of a series; -1 when there is no such series.
func value(families map[string]*dto.MetricFamily, name string, labels ...string) float64 {
next:
	for _, m := range families[name].GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
	}
	return -1
}

// redis runs redis-cli against the instance, so that the e2e module needs no
// Redis client of its own.
func (in *instance) redis(args ...string) (string, error) {
	out, err := exec.Command("redis-cli", append([]string{"-p", fmt.Sprint(in.port), "-a", password, "--no-auth-warning"}, args...)...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	// redis-cli prints an error reply as its text and exits 0.
	if first, _, _ := strings.Cut(s, " "); err == nil && (redisErrors[first] || strings.HasPrefix(s, "Could not connect")) {
		err = errors.New(s)
	}
	return s, err
}

func (in *instance) redisPID(t testing.TB) int {
	t.Helper()
	out, err := in.redis("INFO", "server")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			var pid int
			fmt.Sscan(v, &pid)
			return pid
		}
	}
	t.Fatal("no process_id in INFO")
	return 0
}

var redisErrors = map[string]bool{"ERR": true, "READONLY": true, "LOADING": true, "NOAUTH": true, "WRONGPASS": true, "MASTERDOWN": true, "MISCONF": true, "BUSY": true}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const password = "e2e-s3cret"

// writer INCRs a counter on the old primary and moves to the new one when
// refused, counting the writes acknowledged; a minimal RESP client keeps the
// module free of a Redis library.
type writer struct {
	mu              sync.Mutex
	acked, ackedNew int64
	firstNew        time.Time
	stop, done      chan struct{}
}

func startWriter(t testing.TB, oldPort, newPort int) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go w.write(oldPort, newPort)
	return w
}

// write is the writer's loop, until stop.
func (w *writer) write(oldPort, newPort int) {
	dial := func(port int) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return nil, nil
		}
		r := bufio.NewReader(c)
		fmt.Fprintf(c, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password)
		r.ReadString('\n')
		return c, r
	}
	func() {
		defer close(w.done)
		c, r := dial(oldPort)
		onNew := false
		for {
			select {
			case <-w.stop:
				if c != nil {
					c.Close()
				}
				return
			default:
			}
			if c == nil {
				time.Sleep(time.Millisecond)
				c, r = dial(newPort)
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprint(c, "*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n")
			line, err := r.ReadString('\n')
			if err == nil && strings.HasPrefix(line, ":") {
				w.mu.Lock()
				w.acked++
				if onNew {
					w.ackedNew++
					if w.firstNew.IsZero() {
						w.firstNew = time.Now()
					}
				}
				w.mu.Unlock()
				continue
			}
			// Refused (READONLY) or cut: the primary is, or will be, the new one.
			c.Close()
			c, onNew = nil, true
		}
	}()
}

// startWriterProcess is startWriter in a process of its own (this test
// binary again, see writerProcessEnv): a client of its own, not one
// sharing the test process's CPU and collections with the API server and
// etcd it runs. Its figures come back over a pipe.
func startWriterProcess(t testing.TB, oldPort, newPort int) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", writerProcessEnv, oldPort, newPort))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-w.stop
		stdin.Close()
	}()
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var acked, ackedNew, first int64
			fmt.Sscan(sc.Text(), &acked, &ackedNew, &first)
			w.mu.Lock()
			w.acked, w.ackedNew = acked, ackedNew
			if first != 0 {
				w.firstNew = time.Unix(0, first)
			}
			w.mu.Unlock()
		}
		cmd.Wait()
	}()
	return w
}

// writerProcessEnv makes this test binary a writer (runWriterProcess):
// "<old port>,<new port>".
const writerProcessEnv = "E2E_WRITER_PORTS"

// runWriterProcess writes until its stdin closes, and reports every few
// milliseconds, and at the end: "<acked> <acked on the new> <first on the
// new, Unix ns>".
func runWriterProcess(ports string) {
	var oldPort, newPort int
	fmt.Sscanf(ports, "%d,%d", &oldPort, &newPort)
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(w.stop)
	}()
	go w.write(oldPort, newPort)
	report := func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		var first int64
		if !w.firstNew.IsZero() {
			first = w.firstNew.UnixNano()
		}
		fmt.Printf("%d %d %d\n", w.acked, w.ackedNew, first)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	for {
		select {
		case <-tick.C:
			report()
		case <-w.done:
			report()
			return
		}
	}
}

func (w *writer) onNew() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ackedNew
}

func (w *writer) firstOnNew() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.firstNew
}

func (w *writer) finish() int64 {
	close(w.stop)
	<-w.done
	return w.acked
}

// entries reads status.instancesStatus with the admin client.
func entries(t testing.TB, dyn dynamic.Interface) (map[string]map[string]any, string) {
	t.Helper()
	u, err := dyn.Resource(redisCluster).Namespace(ns).Get(context.Background(), "cache", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw, _, _ := unstructured.NestedMap(u.Object, "status", "instancesStatus")
	out := map[string]map[string]any{}
	for k, v := range raw {
		out[k], _ = v.(map[string]any)
	}
	current, _, _ := unstructured.NestedString(u.Object, "status", "currentPrimary")
	return out, current
}

func fence(t testing.TB, dyn dynamic.Interface, value string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{"redisoperator.io/fencedInstances": value}}})
	if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestInstancesOnARealAPIServer(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed; run hack/ensure-redis.sh")
	}
	cp := startControlPlane(t)
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.admin)
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	cp.apply(t, "../deploy/crd.yaml", ns)
	cp.awaitCRD(t)
	cp.apply(t, "../deploy/rbac.yaml", ns)

	for _, obj := range []string{
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cache-config}\ndata:\n  redis.conf: |\n    appendonly yes\n    repl-diskless-sync-delay 0\n",
		"apiVersion: v1\nkind: Secret\nmetadata: {name: cache-auth}\nstringData: {password: " + password + "}\n",
		"apiVersion: v1\nkind: Secret\nmetadata: {name: not-yours}\nstringData: {key: value}\n",
		"apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata: {name: cache}\nspec:\n  instances: 3\n  targetPrimary: cache-0\n  configMapRef: {name: cache-config, key: redis.conf}\n  authSecretRef: {name: cache-auth, key: password}\n  replication: {maxLagBytes: 1048576}\n",
	} {
		f := filepath.Join(t.TempDir(), "obj.yaml")
		os.WriteFile(f, []byte(obj), 0o600)
		cp.apply(t, f, ns)
	}

	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "cache-instance", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := cp.kubeconfig(t, tr.Status.Token)

	// The shipped Role is no more than the contract's: the token cannot
	// list pods, read another Secret, or touch the RedisCluster's spec.
	sa := kubernetes.NewForConfigOrDie(cp.tokenClient(tr.Status.Token))
	if _, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the instance's token can list pods: %v", err)
	}
	if _, err := sa.CoreV1().Secrets(ns).Get(ctx, "not-yours", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the instance's token can read another Secret: %v", err)
	}
	saDyn := dynamic.NewForConfigOrDie(cp.tokenClient(tr.Status.Token))
	if _, err := saDyn.Resource(redisCluster).Namespace(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the instance's token can list every RedisCluster: %v", err)
	}
	if _, err := saDyn.Resource(redisCluster).Namespace(ns).Get(ctx, "another", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the instance's token can read another RedisCluster: %v", err)
	}
	if _, err := saDyn.Resource(redisCluster).Namespace(ns).Patch(ctx, "cache", types.MergePatchType, []byte(`{"spec":{"targetPrimary":"cache-1"}}`), metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the instance's token can change the spec: %v", err)
	}

	var nodes []*instance
	for i := range 3 {
		nodes = append(nodes, startInstance(t, fmt.Sprintf("cache-%d", i), kubeconfig))
	}
	eventually(t, 60*time.Second, "three ready entries, cache-0 the current primary", func() bool {
		es, current := entries(t, dyn)
		ready := 0
		for _, n := range nodes {
			if e := es[n.pod]; e != nil && e["ready"] == true {
				ready++
			}
		}
		return ready == 3 && current == "cache-0" && es["cache-0"]["role"] == "master" && es["cache-1"]["role"] == "replica"
	})
	if _, err := nodes[0].redis("SET", "greeting", "hello"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the key on a replica", func() bool {
		v, _ := nodes[2].redis("GET", "greeting")
		return v == "hello"
	})
	// Prometheus's own parser reads every manager's /metrics.
	for _, n := range nodes {
		f := n.scrape(t)
		role := map[string]string{"cache-0": "master", "cache-1": "replica", "cache-2": "replica"}[n.pod]
		if value(f, "redis_up") != 1 || value(f, "redis_operator_role", "role", role) != 1 || value(f, "redis_operator_ready") != 1 {
			t.Errorf("%s's /metrics: redis_up %v, role %s %v, ready %v", n.pod, value(f, "redis_up"), role,
				value(f, "redis_operator_role", "role", role), value(f, "redis_operator_ready"))
		}
	}

	// The entries follow Redis: a crash of cache-2's redis-server shows.
	syscall.Kill(nodes[2].redisPID(t), syscall.SIGKILL)
	eventually(t, 20*time.Second, "cache-2's entry to count the restart", func() bool {
		es, _ := entries(t, dyn)
		return fmt.Sprint(es["cache-2"]["restarts"]) == "1" && es["cache-2"]["ready"] == true
	})

	// Fencing cache-1 stops its redis-server within a second.
	start := time.Now()
	fence(t, dyn, `["cache-1"]`)
	eventually(t, time.Second, "cache-1's redis-server to stop within 1s of the fence", func() bool {
		_, err := nodes[1].redis("PING")
		return err != nil
	})
	t.Logf("fence: redis-server stopped %s after the annotation", time.Since(start).Round(time.Millisecond))
	eventually(t, 10*time.Second, "cache-1 fenced in status and probes", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-1"]["fenced"] == true && nodes[1].get("/healthz") == 200 && nodes[1].get("/readyz") == 503
	})
	fence(t, dyn, `[]`)
	eventually(t, 30*time.Second, "cache-1 back after unfencing", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-1"]["fenced"] == false && es["cache-1"]["ready"] == true
	})

	// A planned switchover to cache-1 under a continuous write load: every
	// write the client saw acknowledged is on the new primary. Beside it,
	// go-redis's FailoverClient finds the primary through the managers'
	// discovery ports, and follows.
	w := startWriter(t, nodes[0].port, nodes[1].port)
	var discovery []string
	for _, n := range nodes {
		discovery = append(discovery, fmt.Sprintf("127.0.0.1:%d", n.sentinelPort))
	}
	gw := startGoWriter(discovery, password)
	eventually(t, 20*time.Second, "go-redis to find the primary through the discovery ports", func() bool { return gw.ackedSince(time.Time{}) })
	time.Sleep(500 * time.Millisecond)
	moved := time.Now()
	if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(ctx, "cache", types.MergePatchType, []byte(`{"spec":{"targetPrimary":"cache-1"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "cache-1 to acknowledge writes as the new primary", func() bool { return w.onNew() >= 200 })
	t.Logf("switchover: first write on cache-1 acknowledged %s after targetPrimary changed", w.firstOnNew().Sub(moved).Round(time.Millisecond))
	eventually(t, 20*time.Second, "go-redis to follow the switchover", func() bool { return gw.ackedSince(moved) })
	time.Sleep(200 * time.Millisecond)
	t.Logf("switchover: go-redis could not write for %s", gw.gap(moved).Round(time.Millisecond))
	if goAcked := gw.finish(); lostOn(t, nodes[1].port, "w", goAcked) > 0 {
		t.Fatalf("go-redis lost %d of %d acknowledged writes in the switchover", lostOn(t, nodes[1].port, "w", goAcked), len(goAcked))
	}
	acked := w.finish()
	if got, err := nodes[1].redis("GET", "counter"); err != nil || got != fmt.Sprint(acked) {
		t.Fatalf("counter on the new primary is %q (%v); the client saw %d writes acknowledged", got, err, acked)
	}
	if _, err := nodes[0].redis("SET", "x", "y"); err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("the old primary still takes writes: %v", err)
	}
	eventually(t, 20*time.Second, "currentPrimary cache-1 and cache-0 a ready replica", func() bool {
		es, current := entries(t, dyn)
		return current == "cache-1" && es["cache-1"]["role"] == "master" && es["cache-0"]["role"] == "replica" && es["cache-0"]["ready"] == true
	})

	// Fault: the API server goes away for a minute. Redis keeps serving
	// (the primary takes writes, the replicas copy them), no probe fails
	// (a kubelet must not restart a pod for the API server's sake), and once
	// it is back the status catches up and the watch delivers again.
	eventually(t, 20*time.Second, "every instance ready before the outage", func() bool {
		for _, n := range nodes {
			if n.get("/readyz") != 200 {
				return false
			}
		}
		return true
	})
	cp.proxy.cut()
	outage := time.Now()
	outageWrites := 0
	for time.Since(outage) < time.Minute {
		if _, err := nodes[1].redis("INCR", "during-outage"); err != nil {
			t.Fatalf("Redis stopped serving while the API server was away: %v", err)
		}
		outageWrites++
		for _, n := range nodes {
			if code := n.get("/healthz"); code != 200 {
				t.Fatalf("%s /healthz %d while the API server was away", n.pod, code)
			}
			if code := n.get("/readyz"); code != 200 {
				t.Fatalf("%s /readyz %d while the API server was away: a Service would lose it", n.pod, code)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	eventually(t, 10*time.Second, "the replicas to hold the writes taken during the outage", func() bool {
		for _, n := range []*instance{nodes[0], nodes[2]} {
			if v, _ := n.redis("GET", "during-outage"); v != fmt.Sprint(outageWrites) {
				return false
			}
		}
		return true
	})
	syscall.Kill(nodes[0].redisPID(t), syscall.SIGKILL)
	time.Sleep(2 * time.Second)
	cp.proxy.restore()
	eventually(t, 60*time.Second, "cache-0's restart to reach the status after the outage", func() bool {
		es, _ := entries(t, dyn)
		return fmt.Sprint(es["cache-0"]["restarts"]) == "1"
	})
	fence(t, dyn, `["cache-2"]`)
	eventually(t, 60*time.Second, "the watch to be back and deliver a fence", func() bool {
		_, err := nodes[2].redis("PING")
		return err != nil
	})

	// And the planned switchover back, cache-1 to cache-0, under load.
	fence(t, dyn, `[]`)
	eventually(t, 30*time.Second, "cache-2 back after unfencing", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-2"]["ready"] == true
	})
	w = startWriter(t, nodes[1].port, nodes[0].port)
	time.Sleep(500 * time.Millisecond)
	moved = time.Now()
	if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(ctx, "cache", types.MergePatchType, []byte(`{"spec":{"targetPrimary":"cache-0"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "cache-0 to acknowledge writes as the primary again", func() bool { return w.onNew() >= 200 })
	t.Logf("switchover back: first write on cache-0 acknowledged %s after targetPrimary changed", w.firstOnNew().Sub(moved).Round(time.Millisecond))
	acked += w.finish()
	if got, err := nodes[0].redis("GET", "counter"); err != nil || got != fmt.Sprint(acked) {
		t.Fatalf("counter on cache-0 is %q (%v); the client saw %d writes acknowledged", got, err, acked)
	}
	eventually(t, 20*time.Second, "currentPrimary cache-0 and cache-1 a ready replica", func() bool {
		es, current := entries(t, dyn)
		return current == "cache-0" && es["cache-1"]["role"] == "replica" && es["cache-1"]["ready"] == true
	})

	// The primary's redis-server and manager die together and the target
	// moves: cache-1 promotes itself after the failover window, cache-2
	// follows, and cache-0 comes back as a replica that takes no write.
	// Failover is asynchronous: what cache-1 has not received is lost, so
	// the primary dies once cache-1 holds every acknowledged write.
	eventually(t, 10*time.Second, "cache-1 to hold every acknowledged write", func() bool {
		v, err := nodes[1].redis("GET", "counter")
		return err == nil && v == fmt.Sprint(acked)
	})
	old := nodes[0]
	pid := old.redisPID(t)
	old.cmd.Process.Kill()
	syscall.Kill(pid, syscall.SIGKILL)
	if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(ctx, "cache", types.MergePatchType, []byte(`{"spec":{"targetPrimary":"cache-1"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "cache-1 to fail over and cache-2 to follow it", func() bool {
		es, current := entries(t, dyn)
		return current == "cache-1" && es["cache-1"]["role"] == "master" && es["cache-2"]["role"] == "replica" && es["cache-2"]["ready"] == true
	})
	if v, err := nodes[1].redis("GET", "counter"); err != nil || v != fmt.Sprint(acked) {
		t.Fatalf("the acknowledged writes are not on the failed-over primary: %q %v", v, err)
	}
	if v, err := nodes[1].redis("GET", "during-outage"); err != nil || v != fmt.Sprint(outageWrites) {
		t.Fatalf("the writes taken during the API outage are not on the failed-over primary: %q %v, want %d", v, err, outageWrites)
	}
	back := startInstanceAt(t, "cache-0", kubeconfig, old.dataDir, old.port)
	eventually(t, 30*time.Second, "cache-0 back as a ready replica", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-0"]["role"] == "replica" && es["cache-0"]["ready"] == true
	})
	if _, err := back.redis("SET", "x", "y"); err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("the old primary took a write after coming back: %v", err)
	}
	nodes = append(nodes, back)

	// The primary's manager is upgraded in place: redis-server keeps its
	// PID, neither /readyz nor the status entry ever says it is not ready
	// (the new manager starts from the old one's view, not from a first
	// read of the API server), and the entry names the new build.
	primary := nodes[1]
	ppid := primary.redisPID(t)
	stopPolls := make(chan struct{})
	var polls sync.WaitGroup
	var notReady error
	var notReadyOnce sync.Once
	fail := func(err error) { notReadyOnce.Do(func() { notReady = err }) }
	polls.Go(func() {
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}} // as the kubelet
		for {
			select {
			case <-stopPolls:
				return
			case <-time.After(5 * time.Millisecond):
			}
			resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", primary.httpPort))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("/readyz %d", resp.StatusCode)
				}
			}
			if err != nil {
				fail(err)
			}
		}
	})
	polls.Go(func() {
		for {
			select {
			case <-stopPolls:
				return
			case <-time.After(20 * time.Millisecond):
			}
			u, err := dyn.Resource(redisCluster).Namespace(ns).Get(ctx, "cache", metav1.GetOptions{})
			if err != nil {
				continue
			}
			if ready, _, _ := unstructured.NestedBool(u.Object, "status", "instancesStatus", primary.pod, "ready"); !ready {
				fail(errors.New("the status entry said not ready"))
			}
		}
	})
	time.Sleep(200 * time.Millisecond)
	_, answer := putUpdate(t, fmt.Sprintf("127.0.0.1:%d", primary.httpPort), "e2e-operator-token", binaryV2, "e2e-v2")
	t.Logf("upgrade: the new manager served %v ms after the exec", answer["handoverMs"])
	eventually(t, 10*time.Second, "the primary's entry to name the new build", func() bool {
		es, _ := entries(t, dyn)
		return es[primary.pod]["managerVersion"] == "e2e-v2" && es[primary.pod]["ready"] == true && es[primary.pod]["role"] == "master"
	})
	time.Sleep(300 * time.Millisecond)
	close(stopPolls)
	polls.Wait()
	if notReady != nil {
		t.Errorf("during the upgrade: %v", notReady)
	}
	if got := primary.redisPID(t); got != ppid {
		t.Errorf("the primary's redis-server went from PID %d to %d", ppid, got)
	}

	for _, n := range nodes {
		if log := n.out.String(); strings.Contains(strings.ToLower(log), "forbidden") {
			t.Errorf("%s was refused something the shipped Role should allow:\n%s", n.pod, log)
		}
		if strings.Contains(n.out.String(), password) {
			t.Errorf("%s logged the password", n.pod)
		}
	}
}

// putUpdate sends a manager binary to PUT /v1/update at addr, and fails
// the test unless the new manager answers as version. It returns the
// binary's SHA-256 and the answer.
func putUpdate(t testing.TB, addr, token, file, version string) (string, map[string]any) {
	t.Helper()
	bin, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bin)
	req, _ := http.NewRequest("PUT", "http://"+addr+"/v1/update", bytes.NewReader(bin))
	req.Header.Set("X-Binary-SHA256", hex.EncodeToString(sum[:]))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer map[string]any
	json.NewDecoder(resp.Body).Decode(&answer)
	if resp.StatusCode != 200 || answer["version"] != version {
		t.Fatalf("PUT /v1/update to %s: %d %v", addr, resp.StatusCode, answer)
	}
	return hex.EncodeToString(sum[:]), answer
}

// Every manifest deploy/kustomization.yaml lists is accepted by the real
// API server as shipped, server-side applied in the listed order; the
// RedisCluster example passes the CRD's schema and a wrong one does not;
// and the StatefulSet keeps the promises the manager depends on.
func TestDeployManifests(t *testing.T) {
	cp := startControlPlane(t)
	var kust struct {
		Resources []string `json:"resources"`
		Images    []struct{ Name string }
	}
	b, err := os.ReadFile("../deploy/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &kust); err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{"kustomization.yaml": true}
	kinds := map[string]*unstructured.Unstructured{}
	for _, f := range kust.Resources {
		listed[f] = true
		objs, err := cp.tryApply(filepath.Join("../deploy", f), ns)
		if err != nil {
			t.Fatalf("deploy/%s: %v", f, err)
		}
		for _, o := range objs {
			kinds[o.GetKind()+"/"+o.GetName()] = o
		}
		if f == "crd.yaml" {
			cp.awaitCRD(t)
		}
	}
	files, _ := filepath.Glob("../deploy/*.yaml")
	for _, f := range files {
		if !listed[filepath.Base(f)] {
			t.Errorf("deploy/%s is not in kustomization.yaml", filepath.Base(f))
		}
	}
	for _, want := range []string{"CustomResourceDefinition/redisclusters.redisoperator.io", "ServiceAccount/cache-instance", "Role/cache-instance",
		"RoleBinding/cache-instance", "RedisCluster/cache", "ConfigMap/cache-config", "Secret/cache-auth", "Secret/cache-operator-token",
		"Service/cache", "Service/cache-sentinel", "StatefulSet/cache", "PodDisruptionBudget/cache"} {
		if kinds[want] == nil {
			t.Errorf("deploy/ holds no %s", want)
		}
	}

	// The discovery Service reaches every pod's discovery port, ready or not.
	if svc := kinds["Service/cache-sentinel"]; svc != nil {
		publish, _, _ := unstructured.NestedBool(svc.Object, "spec", "publishNotReadyAddresses")
		ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
		if !publish || len(ports) != 1 || fmt.Sprint(ports[0].(map[string]any)["port"]) != "26379" || ports[0].(map[string]any)["targetPort"] != "sentinel" {
			t.Errorf("Service/cache-sentinel: publishNotReadyAddresses %v, ports %v", publish, ports)
		}
	}

	// The schema refuses what the manager would refuse later, at apply.
	for name, spec := range map[string]string{
		"no-instances": "instances: 0",
		"bad-sha":      "instances: 1\n  bootstrap: {restore: {url: 'https://b.example/x.rdb', sha256: 'not-hex'}}",
		"bad-scheme":   "instances: 1\n  bootstrap: {restore: {url: 'ftp://b.example/x.rdb', sha256: '" + strings.Repeat("a", 64) + "'}}",
		"no-sha":       "instances: 1\n  bootstrap: {restore: {url: 'https://b.example/x.rdb'}}",
	} {
		f := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(f, []byte("apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata: {name: "+name+"}\nspec:\n  "+spec+"\n"), 0o600)
		if _, err := cp.tryApply(f, ns); !apierrors.IsInvalid(errors.Unwrap(err)) {
			t.Errorf("RedisCluster %s: %v, want it refused as invalid", name, err)
		}
	}

	// The StatefulSet as the API server stored it.
	var sts struct {
		Spec struct {
			Template struct {
				Spec struct {
					TerminationGracePeriodSeconds int64 `json:"terminationGracePeriodSeconds"`
					ServiceAccountName            string
					SecurityContext               struct{ RunAsNonRoot bool }
					InitContainers                []container
					Containers                    []container
				}
			}
		}
	}
	if kinds["StatefulSet/cache"] == nil {
		t.FailNow()
	}
	raw, _ := kinds["StatefulSet/cache"].MarshalJSON()
	if err := json.Unmarshal(raw, &sts); err != nil {
		t.Fatal(err)
	}
	pod := sts.Spec.Template.Spec
	if pod.ServiceAccountName != "cache-instance" || !pod.SecurityContext.RunAsNonRoot {
		t.Errorf("pod: serviceAccountName %q, runAsNonRoot %v", pod.ServiceAccountName, pod.SecurityContext.RunAsNonRoot)
	}
	if len(pod.InitContainers) != 1 || strings.Join(pod.InitContainers[0].Command, " ") != "/redis-operator install --keep-existing /controller/redis-operator" {
		t.Fatalf("init containers: %+v", pod.InitContainers)
	}
	if image, _, _ := strings.Cut(pod.InitContainers[0].Image, ":"); len(kust.Images) != 1 || kust.Images[0].Name != image {
		t.Errorf("kustomization.yaml's images (%+v) do not name the manager's image %s", kust.Images, image)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("containers: %+v", pod.Containers)
	}
	c := pod.Containers[0]
	env := map[string]string{}
	fieldRefs := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		if e.ValueFrom != nil {
			fieldRefs[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if !slices.ContainsFunc(c.Ports, func(p struct {
		Name          string
		ContainerPort int
	}) bool {
		return p.Name == "sentinel" && p.ContainerPort == 26379
	}) {
		t.Errorf("the Redis container does not name the discovery port 26379 sentinel: %+v", c.Ports)
	}
	if strings.Join(c.Command, " ") != "/controller/redis-operator instance" {
		t.Errorf("the Redis container runs %q, not the manager", c.Command)
	}
	if fieldRefs["POD_NAME"] != "metadata.name" || fieldRefs["POD_NAMESPACE"] != "metadata.namespace" || fieldRefs["POD_IP"] != "status.podIP" {
		t.Errorf("downward API env: %v", fieldRefs)
	}
	shutdown, err := time.ParseDuration(env["SHUTDOWN_TIMEOUT"])
	if err != nil || time.Duration(pod.TerminationGracePeriodSeconds)*time.Second <= shutdown+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d is not well above SHUTDOWN_TIMEOUT %q", pod.TerminationGracePeriodSeconds, env["SHUTDOWN_TIMEOUT"])
	}
	for probe, path := range map[string]*probe{"/startupz": c.StartupProbe, "/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if path == nil || path.HTTPGet.Path != probe {
			t.Errorf("no probe on %s", probe)
		}
	}
	// With a read-only root, the manager writes only where volumes are: its
	// data directory, beside its binary (an upgrade), and reads its token.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	for what, path := range map[string]string{"REDIS_DATA_DIR": env["REDIS_DATA_DIR"], "the manager binary": c.Command[0], "OPERATOR_TOKEN_FILE": env["OPERATOR_TOKEN_FILE"]} {
		if what != "REDIS_DATA_DIR" {
			path = filepath.Dir(path)
		}
		if mounts[path] == "" {
			t.Errorf("%s (%s) is on no volume: %v", what, path, mounts)
		}
	}
	sc := c.SecurityContext
	if sc == nil || !sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("the Redis container's security context: %+v", sc)
	}
}

// container is the part of a pod's container the test reads.
type container struct {
	Image        string
	Command      []string
	VolumeMounts []struct{ Name, MountPath string }
	Env          []struct {
		Name      string
		Value     string
		ValueFrom *struct{ FieldRef struct{ FieldPath string } }
	}
	Ports []struct {
		Name          string
		ContainerPort int
	}
	StartupProbe, ReadinessProbe, LivenessProbe *probe
	SecurityContext                             *struct {
		ReadOnlyRootFilesystem   bool
		AllowPrivilegeEscalation bool
		Capabilities             struct{ Drop []string }
	}
}

type probe struct{ HTTPGet struct{ Path string } }
