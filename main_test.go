package main

// The tests run the real binary against a real redis-server, the way a pod
// runs it: built once here, started with flags and a cluster file, read
// through its HTTP endpoints, its log and Redis itself.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// binary is the manager built for this test run; race-enabled when the tests
// are, so that the real process is checked for races too.
var binary string

// raceBuild is set by race_test.go in a -race test run.
var raceBuild bool

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "redis-operator-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "redis-operator")
	args := []string{"build", "-o", binary, "-ldflags", "-X main.version=test -X main.commit=testcommit"}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the manager:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRedis(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed; run hack/ensure-redis.sh (the tests need a real one)")
	}
	return path
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

// clusterYAML is a local-mode cluster file: the RedisCluster, its ConfigMap
// and, when password is set, its Secret.
func clusterYAML(name, target, fragment, password string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata:\n  name: %s\nspec:\n  instances: 3\n  targetPrimary: %q\n  configMapRef: {name: %s-config, key: redis.conf}\n", name, target, name)
	if password != "" {
		fmt.Fprintf(&b, "  authSecretRef: {name: %s-auth, key: password}\n", name)
	}
	fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-config\ndata:\n  redis.conf: |\n", name)
	for _, line := range strings.Split(fragment, "\n") {
		fmt.Fprintf(&b, "    %s\n", line)
	}
	if password != "" {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s-auth\nstringData:\n  password: %q\n", name, password)
	}
	return b.String()
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := writeFileAtomic(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// instance is one running manager.
type instance struct {
	t              testing.TB
	pod            string
	clusterFile    string
	dataDir        string
	port, httpPort int
	sentinelPort   int // the discovery port
	password       string
	clientTLS      *tls.Config // how a client reaches its redis-server; nil: plaintext
	user           string      // the ACL user a client logs in as, with password; "": default
	cmd            *exec.Cmd
	out            *syncBuffer
	done           chan struct{}
	exitErr        error
}

type instanceOpts struct {
	pod         string
	clusterFile string
	dataDir     string
	port        int
	password    string
	prefix      []string // runs the manager under these, e.g. unshare
	redisServer string
	extraArgs   []string
	binary      string // the manager to run; the test build when empty
	env         []string
	clientTLS   *tls.Config
}

func startInstance(t testing.TB, o instanceOpts) *instance {
	t.Helper()
	redisServer := o.redisServer
	if redisServer == "" {
		redisServer = requireRedis(t)
	}
	if o.port == 0 {
		o.port = freePort(t)
	}
	if o.dataDir == "" {
		o.dataDir = filepath.Join(t.TempDir(), o.pod)
	}
	in := &instance{t: t, pod: o.pod, clusterFile: o.clusterFile, dataDir: o.dataDir, port: o.port,
		httpPort: freePort(t), sentinelPort: freePort(t), password: o.password, clientTLS: o.clientTLS, out: &syncBuffer{}, done: make(chan struct{})}
	if o.binary == "" {
		o.binary = binary
	}
	args := append(append([]string{}, o.prefix...), o.binary, "instance",
		"--cluster", "cache", "--pod-name", o.pod, "--cluster-file", o.clusterFile,
		"--data-dir", o.dataDir, "--redis-port", fmt.Sprint(o.port), "--redis-server", redisServer,
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", in.httpPort), "--announce-host", "127.0.0.1",
		"--sentinel-port", fmt.Sprint(in.sentinelPort), "--shutdown-timeout", "20s")
	args = append(args, o.extraArgs...)
	in.cmd = exec.Command(args[0], args[1:]...)
	in.cmd.Stdout, in.cmd.Stderr = in.out, in.out
	in.cmd.Env = append(append(os.Environ(), "GORACE=halt_on_error=1"), o.env...)
	in.cmd.WaitDelay = 5 * time.Second // a stray grandchild must not hold the test on its pipe
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { in.exitErr = in.cmd.Wait(); close(in.done) }()
	t.Cleanup(func() {
		select {
		case <-in.done:
		default:
			in.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-in.done:
			case <-time.After(30 * time.Second):
				in.cmd.Process.Kill()
				<-in.done
			}
		}
		if dir := os.Getenv("TEST_LOGS"); dir != "" { // keep every instance's log there
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), in.pod, in.port)), []byte(in.out.String()), 0o644)
		}
		if t.Failed() || strings.Contains(in.out.String(), "DATA RACE") {
			t.Logf("log of %s:\n%s", in.pod, in.out.String())
		}
		if strings.Contains(in.out.String(), "DATA RACE") {
			t.Errorf("%s: the race detector fired", in.pod)
		}
	})
	return in
}

// stop sends SIGTERM and returns the exit code.
func (in *instance) stop() int {
	in.t.Helper()
	in.cmd.Process.Signal(syscall.SIGTERM)
	return in.awaitExit(40 * time.Second)
}

// awaitExit waits up to timeout for the manager to exit and returns its
// exit code.
func (in *instance) awaitExit(timeout time.Duration) int {
	in.t.Helper()
	select {
	case <-in.done:
	case <-time.After(timeout):
		in.t.Fatalf("%s did not exit within %s", in.pod, timeout)
	}
	var ee *exec.ExitError
	if errors.As(in.exitErr, &ee) {
		return ee.ExitCode()
	}
	return 0
}

func (in *instance) get(path string) (int, []byte) {
	in.t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", in.httpPort, path))
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (in *instance) status() instanceStatus {
	in.t.Helper()
	code, body := in.get("/v1/status")
	var st instanceStatus
	if code != http.StatusOK {
		return st
	}
	if err := json.Unmarshal(body, &st); err != nil {
		in.t.Fatalf("/v1/status: %v: %s", err, body)
	}
	return st
}

// eventually polls cond every 20ms until it holds or the timeout passes.
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

func (in *instance) waitReady(timeout time.Duration) {
	in.t.Helper()
	eventually(in.t, timeout, in.pod+" to be ready", func() bool {
		code, _ := in.get("/readyz")
		return code == http.StatusOK
	})
}

func (in *instance) redis() redis.Conn {
	in.t.Helper()
	c, err := dialRedisAs(in.user, localAddr(in.port), []string{in.password}, in.clientTLS, 5*time.Second)
	if err != nil {
		in.t.Fatal(err)
	}
	in.t.Cleanup(func() { c.Close() })
	return c
}

func (in *instance) redisPID() int {
	in.t.Helper()
	text, err := redis.String(in.redis().Do("INFO", "server"))
	if err != nil {
		in.t.Fatal(err)
	}
	return int(parseInfo(text).int("process_id"))
}

// logRecords are the manager's JSON log lines.
func (in *instance) logRecords() []map[string]any {
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(in.out.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			recs = append(recs, m)
		}
	}
	return recs
}

func (in *instance) hasLog(msg string) bool { return in.logCount(msg) > 0 }

// logCount counts the manager's log records with message msg.
func (in *instance) logCount(msg string) int {
	n := 0
	for _, r := range in.logRecords() {
		if r["msg"] == msg {
			n++
		}
	}
	return n
}

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

// oneInstance starts a target primary on fragment in a fresh directory.
func oneInstance(t testing.TB, fragment string) *instance {
	t.Helper()
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", fragment, "s3cret-pw"))
	return startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw"})
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "redis-operator test (commit testcommit, go") {
		t.Fatalf("version printed %q", out)
	}
}

func TestInstallCopiesItselfAtomically(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "controller", "redis-operator")
	os.MkdirAll(filepath.Dir(dest), 0o755)
	if out, err := exec.Command(binary, "install", dest).CombinedOutput(); err != nil {
		t.Fatalf("install: %v: %s", err, out)
	}
	fi, err := os.Stat(dest)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("installed mode %v, want 0755", fi.Mode().Perm())
	}
	out, err := exec.Command(dest, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "redis-operator test") {
		t.Fatalf("installed copy does not run: %v %q", err, out)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), ".*"))
	if len(leftovers) > 0 {
		t.Errorf("install left temp files: %v", leftovers)
	}

	// An init container run again keeps what an upgrade put there; without
	// --keep-existing, install replaces it.
	writeFile(t, dest, "#!/bin/sh\necho keep-me-7c1f\n")
	os.Chmod(dest, 0o755)
	if out, err := exec.Command(binary, "install", "--keep-existing", dest).CombinedOutput(); err != nil {
		t.Fatalf("install --keep-existing: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "keep-me-7c1f") {
		t.Error("install --keep-existing replaced the binary in place")
	}
	if out, err := exec.Command(binary, "install", dest).CombinedOutput(); err != nil {
		t.Fatalf("install: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(dest); strings.Contains(string(b), "keep-me-7c1f") {
		t.Error("install did not replace the binary")
	}
}

// A mistake in how the manager is started is exit 2 and one clear line.
func TestStartErrorsExitTwoWithOneLine(t *testing.T) {
	redisServer := requireRedis(t)
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", ""))
	notADir := filepath.Join(dir, "file")
	writeFile(t, notADir, "x")
	base := []string{"instance", "--pod-name", "cache-0", "--http-addr", "127.0.0.1:0", "--sentinel-port", "0"}
	busy, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := fmt.Sprint(busy.Addr().(*net.TCPAddr).Port)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no cluster", []string{"--cluster-file", cf, "--data-dir", dir}, "--cluster (or CLUSTER_NAME) is required"},
		{"unwritable data dir", []string{"--cluster", "cache", "--cluster-file", cf, "--data-dir", filepath.Join(notADir, "data")}, "data dir"},
		{"no redis-server", []string{"--cluster", "cache", "--cluster-file", cf, "--data-dir", dir, "--redis-server", filepath.Join(dir, "nope")}, "redis-server"},
		{"unreadable cluster file", []string{"--cluster", "cache", "--cluster-file", filepath.Join(dir, "missing.yaml"), "--data-dir", dir, "--redis-server", redisServer}, "missing.yaml"},
		{"no such cluster in file", []string{"--cluster", "other", "--cluster-file", cf, "--data-dir", dir, "--redis-server", redisServer}, `no RedisCluster named "other"`},
		{"bad flag", []string{"--no-such-flag"}, "flag provided but not defined"},
		{"client CA without HTTPS", []string{"--cluster", "cache", "--cluster-file", cf, "--data-dir", dir, "--redis-server", redisServer, "--tls-client-ca-file", cf}, "--tls-client-ca-file needs --tls-cert-file"},
		{"unreadable certificate", []string{"--cluster", "cache", "--cluster-file", cf, "--data-dir", dir, "--redis-server", redisServer, "--tls-cert-file", cf, "--tls-key-file", cf}, "TLS certificate"},
		{"discovery port in use", []string{"--cluster", "cache", "--cluster-file", cf, "--data-dir", dir, "--redis-server", redisServer, "--sentinel-port", busyPort}, "the discovery port"},
		{"discovery port on the Redis port", []string{"--cluster", "cache", "--sentinel-port", "7000", "--redis-port", "7000"}, "--sentinel-port 7000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary, append(append([]string{}, base...), tc.args...)...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2; stderr: %s", err, stderr.String())
			}
			line, more, _ := strings.Cut(strings.TrimSpace(stderr.String()), "\n")
			if more != "" || !strings.HasPrefix(line, "redis-operator: ") || !strings.Contains(line, tc.want) {
				t.Fatalf("stderr %q is not one line saying %q", stderr.String(), tc.want)
			}
		})
	}
}

// Flags win over the environment; the environment fills in the rest.
func TestSettingsFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("CLUSTER_NAME", "from-env")
	t.Setenv("REDIS_PORT", "7001")
	t.Setenv("POD_NAME", "env-pod")
	t.Setenv("SHUTDOWN_TIMEOUT", "5s")
	t.Setenv("PATH", os.Getenv("PATH"))
	s, err := parseSettings([]string{"--redis-port", "7002", "--data-dir", dir, "--cluster-file", filepath.Join(dir, "c.yaml"), "--redis-server", "sh"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if s.cluster != "from-env" || s.podName != "env-pod" || s.redisPort != 7002 || s.shutdownTimeout != 5*time.Second {
		t.Fatalf("settings %+v", s)
	}
	// A Service named redis makes Kubernetes set REDIS_PORT=tcp://...: not ours.
	t.Setenv("REDIS_PORT", "tcp://10.0.0.9:6379")
	if s, err := parseSettings([]string{"--data-dir", dir, "--cluster-file", filepath.Join(dir, "c.yaml"), "--redis-server", "sh"}, io.Discard); err != nil || s.redisPort != 6379 {
		t.Fatalf("a service-link REDIS_PORT gave %v, port %d", err, s.redisPort)
	}
	t.Setenv("REDIS_PORT", "banana")
	if _, err := parseSettings([]string{"--data-dir", dir}, io.Discard); err == nil || !strings.Contains(err.Error(), "REDIS_PORT") {
		t.Fatalf("a bad REDIS_PORT gave %v", err)
	}
}

// percentileMS is the p-th percentile of durations, in milliseconds.
func percentileMS(d []time.Duration, p float64) float64 {
	d = slices.Clone(d)
	slices.Sort(d)
	return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
}

// rdbFixture is the RDB file of a redis-server that fill wrote to.
func rdbFixture(t *testing.T, fill func(redis.Conn)) []byte {
	t.Helper()
	dir, port := t.TempDir(), freePort(t)
	cmd := exec.Command(requireRedis(t), "--port", fmt.Sprint(port), "--dir", dir, "--save", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var c redis.Conn
	eventually(t, 5*time.Second, "redis-server to answer", func() bool {
		var err error
		c, err = dialRedisAs("", localAddr(port), []string{""}, nil, time.Second)
		return err == nil
	})
	defer c.Close()
	fill(c)
	if _, err := c.Do("SAVE"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fillTypes writes n keys of each type Redis has, some with a TTL.
func fillTypes(t testing.TB, c redis.Conn, prefix string, n int) {
	t.Helper()
	for i := range n {
		k := fmt.Sprintf("%s:%d", prefix, i)
		c.Send("SET", k+":s", fmt.Sprintf("value %d", i))
		c.Send("HSET", k+":h", "a", i, "b", "two")
		c.Send("RPUSH", k+":l", "x", "y", i)
		c.Send("SADD", k+":set", "m1", "m2", i)
		c.Send("ZADD", k+":z", 1.5, "one", i, "n")
		c.Send("XADD", k+":x", "*", "f", i)
		if i%10 == 0 {
			c.Send("PEXPIRE", k+":s", 3_600_000)
		}
	}
	if _, err := c.Do(""); err != nil {
		t.Fatal(err)
	}
}

// dataset is every key of the connection's database 0 with its type, its
// value in a canonical form, and whether it expires.
func dataset(t testing.TB, c redis.Conn) map[string]string {
	t.Helper()
	keys, err := redis.Strings(c.Do("KEYS", "*"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		typ, _ := redis.String(c.Do("TYPE", k))
		var v []string
		switch typ {
		case "string":
			s, _ := redis.String(c.Do("GET", k))
			v = []string{s}
		case "hash":
			v, _ = redis.Strings(c.Do("HGETALL", k))
		case "list":
			v, _ = redis.Strings(c.Do("LRANGE", k, 0, -1))
		case "set":
			v, _ = redis.Strings(c.Do("SMEMBERS", k))
			slices.Sort(v)
		case "zset":
			v, _ = redis.Strings(c.Do("ZRANGE", k, 0, -1, "WITHSCORES"))
		case "stream":
			entries, _ := redis.Values(c.Do("XRANGE", k, "-", "+"))
			v = []string{fmt.Sprint(entries...)}
		}
		if typ == "hash" { // pairs in the order of the table
			pairs := []string{}
			for i := 0; i+1 < len(v); i += 2 {
				pairs = append(pairs, v[i]+"="+v[i+1])
			}
			slices.Sort(pairs)
			v = pairs
		}
		ttl, _ := redis.Int64(c.Do("PTTL", k))
		out[k] = fmt.Sprintf("%s %q expires=%v", typ, v, ttl > 0)
	}
	return out
}

// buildStatic builds the manager as `make build` and the Dockerfile do:
// no cgo, no local paths, stripped.
func buildStatic(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "redis-operator")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=static", "-o", out, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// copyInto copies the file at path to the same path under root.
func copyInto(t testing.TB, root, path string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(root, path)
	os.MkdirAll(filepath.Dir(dest), 0o755)
	if err := os.WriteFile(dest, b, mode); err != nil {
		t.Fatal(err)
	}
}

// The shipped binary is static, so a scratch image is enough: it has no
// interpreter and links no library, and it runs as PID 1 of a fresh PID
// namespace in a root directory that holds nothing else. There version
// prints, install copies it, and instance runs a redis-server copied in
// with the libraries it needs, and serves its probes.
func TestStaticBinaryRunsAsPID1InAnEmptyRoot(t *testing.T) {
	redisServer := requireRedis(t)
	exe := buildStatic(t)
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("the binary is not static: it has a %s program header", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the binary links %v", libs)
	}
	f.Close()

	root := t.TempDir()
	os.Chmod(root, 0o755)
	copyInto(t, root, exe, 0o755)
	os.Rename(filepath.Join(root, exe), filepath.Join(root, "redis-operator"))
	os.MkdirAll(filepath.Join(root, "proc"), 0o755)
	os.MkdirAll(filepath.Join(root, "out"), 0o755)
	ns := []string{"unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc=/proc", "--root=" + root}
	if os.Geteuid() != 0 {
		ns = append(ns[:1], append([]string{"--user", "--map-root-user"}, ns[1:]...)...)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ns[0], append(ns[1:], args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run("/redis-operator", "version"); !strings.HasPrefix(out, "redis-operator static ") {
		t.Errorf("version in the empty root: %q", out)
	}
	run("/redis-operator", "install", "/out/redis-operator")
	if a, b := sha256File(t, exe), sha256File(t, filepath.Join(root, "out", "redis-operator")); a != b {
		t.Error("install wrote another file than itself")
	}

	// redis-server and what it links, at the same paths.
	copyInto(t, root, redisServer, 0o755)
	ldd, err := exec.Command("ldd", redisServer).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(ldd), "\n") {
		for _, field := range strings.Fields(line) {
			if strings.HasPrefix(field, "/") {
				real, _ := filepath.EvalSymlinks(field)
				copyInto(t, root, real, 0o755)
				if real != field {
					link := filepath.Join(root, field)
					os.MkdirAll(filepath.Dir(link), 0o755)
					os.Symlink(real, link)
				}
			}
		}
	}
	// What every container runtime gives a scratch image: /dev/null, which
	// redis-server gets for its standard input (an empty file serves as
	// well where a device cannot be made).
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	if err := syscall.Mknod(filepath.Join(root, "dev", "null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		writeFile(t, filepath.Join(root, "dev", "null"), "")
	}
	writeFile(t, filepath.Join(root, "cluster.yaml"), clusterYAML("cache", "cache-0", "appendonly no", ""))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: "/cluster.yaml", dataDir: "/data",
		redisServer: redisServer, binary: "/redis-operator", prefix: ns})
	in.waitReady(20 * time.Second)
	if code, body := in.get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	if _, err := in.redis().Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	var pids []any
	for _, r := range in.logRecords() {
		if r["msg"] == "starting" {
			pids = append(pids, r["pid"])
		}
	}
	if len(pids) != 1 || pids[0] != float64(1) {
		t.Errorf("the manager started as PID %v, want once as 1", pids)
	}
	// SIGTERM to the manager, as the kubelet's runtime sends it to PID 1.
	manager := childrenOf(in.cmd.Process.Pid, "")[0]
	if manager <= 0 {
		t.Fatal("no manager under unshare")
	}
	if err := in.stopPID1(manager); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "data", "dump.rdb")); err != nil {
		t.Errorf("redis-server did not save on the way out: %v", err)
	}
}

// stopPID1 sends SIGTERM to the manager running as PID 1 under unshare (which
// passes no signal on) and returns how it exited.
func (in *instance) stopPID1(manager int) error {
	in.t.Helper()
	if err := syscall.Kill(manager, syscall.SIGTERM); err != nil {
		in.t.Fatal(err)
	}
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		in.t.Fatal("the manager did not stop on SIGTERM as PID 1")
	}
	return in.exitErr
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256Of(b)
}

// BenchmarkRedisThroughput: redis-benchmark against a redis-server the
// manager runs and against a bare one, in turns, and the median rate of
// each with their ratio, managed over bare. The bare one runs on the
// redis.conf the manager renders for the same fragment and password, so
// that only the manager differs. Both run throughout, so the manager's own
// idle CPU weighs on both sides alike and the ratio is what it costs
// redis-server itself (its PING and INFO, the pipe its log goes through).
// Persistence is off, so that no fork or fsync lands in one turn and not
// the other.
//
// redis-benchmark -t set,get -n 500000 -P 16 -c 50: pipelined sixteen
// deep, the rate is bound by redis-server's one thread rather than by
// loopback round trips and the client's system calls, so whatever is taken
// from that thread shows; 500,000 requests last about a second per test on
// two cores, long enough for one scheduling hiccup not to decide a turn;
// 50 clients is redis-benchmark's default. A turn's rate is both tests'
// requests over their time; seven turns of each, the order swapped every
// turn, cancel a drift of the machine. The password goes on
// redis-benchmark's command line, which nothing logs: it reads no
// REDISCLI_AUTH.
func BenchmarkRedisThroughput(b *testing.B) {
	tool, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Fatal("redis-benchmark is not installed; it comes with redis-tools")
	}
	const fragment = "appendonly no\nsave \"\""
	managed := oneInstance(b, fragment)
	managed.waitReady(20 * time.Second)
	compareThroughput(b, tool, managed, bareRedis(b, fragment, managed.password, nil))
}

// compareThroughput is BenchmarkRedisThroughput's measure, with
// redis-benchmark's extra arguments (TLS) for both servers.
func compareThroughput(b *testing.B, tool string, managed *instance, barePort int, extra ...string) {
	pid := managed.redisPID()
	ports := [2]int{barePort, managed.port}
	rate := func(port int) float64 {
		out, err := exec.Command(tool, append([]string{"-p", fmt.Sprint(port), "-a", managed.password,
			"-t", "set,get", "-n", "500000", "-P", "16", "-c", "50", "-q", "--csv"}, extra...)...).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			b.Fatalf("redis-benchmark on %d: %v %s", port, err, stderr)
		}
		var perRequest float64
		tests := 0
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Split(line, ",")
			if f[0] == `"test"` {
				continue
			}
			var rps float64
			if len(f) > 1 {
				fmt.Sscan(strings.Trim(f[1], `"`), &rps)
			}
			if rps <= 0 {
				b.Fatalf("redis-benchmark printed %q", line)
			}
			perRequest += 1 / rps
			tests++
		}
		if tests != 2 {
			b.Fatalf("redis-benchmark ran %d tests, want set and get", tests)
		}
		return 2 / perRequest
	}
	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return (v[(len(v)-1)/2] + v[len(v)/2]) / 2
	}
	rate(ports[0]) // warm both up: the first connections, the allocator
	rate(ports[1])
	var rates [2][]float64 // bare, managed
	b.ResetTimer()
	for turn := range 7 * b.N {
		for i := range 2 {
			k := (turn + i) % 2
			rates[k] = append(rates[k], rate(ports[k]))
		}
	}
	b.StopTimer()
	if managed.redisPID() != pid {
		b.Fatal("the managed redis-server restarted")
	}
	b.Logf("ops/s bare %.0f, managed %.0f", rates[0], rates[1])
	bare, man := median(rates[0]), median(rates[1])
	b.ReportMetric(bare, "bare-ops/s")
	b.ReportMetric(man, "managed-ops/s")
	b.ReportMetric(man/bare, "ratio")
	b.ReportMetric(0, "ns/op")
}

// bareRedis starts redis-server, with no manager, on the redis.conf the
// manager renders for fragment, password and TLS (nil for none), and
// returns its port.
func bareRedis(b *testing.B, fragment, password string, tlsFiles *podTLS) int {
	directives, err := parseFragment(fragment)
	if err != nil {
		b.Fatal(err)
	}
	port, dir := freePort(b), b.TempDir()
	conf, err := renderConfig(directives, podConfig{dataDir: dir, port: port, announceHost: "127.0.0.1", password: password, tls: tlsFiles})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(requireRedis(b), path)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually(b, 10*time.Second, "the bare redis-server to answer", func() bool {
		c, err := dialRedisAs("", localAddr(port), []string{password}, bareTLS(tlsFiles), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port
}

func bareTLS(files *podTLS) *tls.Config {
	if files == nil {
		return nil
	}
	return &tls.Config{InsecureSkipVerify: true}
}
