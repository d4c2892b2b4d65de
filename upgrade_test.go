package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

var (
	v2Once   sync.Once
	v2Binary string
	v2Err    error
)

// binaryV2 is the manager built again with another version string (and
// -race when the tests run with it), once per test run.
func binaryV2(t testing.TB) []byte {
	t.Helper()
	v2Once.Do(func() {
		v2Binary = filepath.Join(filepath.Dir(binary), "redis-operator-v2")
		args := []string{"build", "-o", v2Binary, "-ldflags", "-X main.version=test-v2 -X main.commit=testcommit"}
		if raceBuild {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			v2Err = fmt.Errorf("building v2: %v: %s", err, out)
		}
	})
	if v2Err != nil {
		t.Fatal(v2Err)
	}
	b, err := os.ReadFile(v2Binary)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// upgradable starts a primary whose binary is a copy of its own, in a
// directory of its own, as the install command puts it in a pod, with an
// operator token.
func upgradable(t testing.TB, extraArgs ...string) (*instance, string) {
	t.Helper()
	dir := t.TempDir()
	exe := filepath.Join(dir, "bin", "redis-operator")
	os.MkdirAll(filepath.Dir(exe), 0o755)
	b, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "token"), "up-token")
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", binary: exe,
		extraArgs: append([]string{"--operator-token-file", filepath.Join(dir, "token")}, extraArgs...)})
	if len(extraArgs) == 0 {
		in.waitReady(20 * time.Second)
	}
	return in, exe
}

// put sends PUT /v1/update and returns the status code and the body.
func (in *instance) put(body io.Reader, sum, token string) (int, map[string]any) {
	in.t.Helper()
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/v1/update", in.httpPort), body)
	if sum != "" {
		req.Header.Set("X-Binary-SHA256", sum)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		in.t.Fatalf("PUT /v1/update: %v", err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		in.t.Fatalf("PUT /v1/update: %d %q", resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

// While the manager replaces itself, probes see no failure, a client
// writing to Redis sees no error, redis-server keeps its PID, its log keeps
// coming, and the status names the new build. Then back again.
func TestUpgradeInPlaceKeepsRedisServing(t *testing.T) {
	v2 := binaryV2(t)
	in, exe := upgradable(t)
	v1 := func() []byte { b, _ := os.ReadFile(binary); return b }()
	pid := in.redisPID()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var probes, probeFailures, writes, writeErrors atomic.Int64
	var firstFailure atomic.Value
	wg.Go(func() {
		// As the kubelet probes: a new connection each time. (A kept-alive
		// connection can be closed by the server as a request goes out on
		// it, upgrade or not.)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			probes.Add(1)
			resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", in.httpPort))
			if err == nil {
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != 200 {
				probeFailures.Add(1)
				firstFailure.CompareAndSwap(nil, fmt.Sprint(err, resp))
			}
		}
	})
	wg.Go(func() {
		c := in.redis()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.Do("INCR", "counter"); err != nil {
				writeErrors.Add(1)
			} else {
				writes.Add(1)
			}
		}
	})
	// A client of the discovery port, a new connection each time, as one
	// that looks for the primary does: its listener is inherited too.
	var asks, askFailures atomic.Int64
	var firstAskFailure atomic.Value
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			asks.Add(1)
			c, err := redis.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", in.sentinelPort), redis.DialPassword(in.password), redis.DialReadTimeout(5*time.Second))
			var addr []string
			if err == nil {
				addr, err = redis.Strings(c.Do("SENTINEL", "get-master-addr-by-name", "cache"))
				c.Close()
			}
			if err != nil || len(addr) != 2 || addr[1] != fmt.Sprint(in.port) {
				askFailures.Add(1)
				firstAskFailure.CompareAndSwap(nil, fmt.Sprint(addr, err))
			}
		}
	})
	// A client that keeps its connection, as a Sentinel client's pool does,
	// and asks on it all along; and a subscriber. Both connections cross the
	// exec, with what they had set on them.
	dialDiscovery := func() redis.Conn {
		c, err := redis.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", in.sentinelPort), redis.DialPassword(in.password), redis.DialReadTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	kept := dialDiscovery()
	if _, err := kept.Do("CLIENT", "SETNAME", "kept"); err != nil {
		t.Fatal(err)
	}
	var keptAsks, keptFailures atomic.Int64
	var firstKeptFailure atomic.Value
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			keptAsks.Add(1)
			addr, err := redis.Strings(kept.Do("SENTINEL", "get-master-addr-by-name", "cache"))
			if err != nil || len(addr) != 2 || addr[1] != fmt.Sprint(in.port) {
				keptFailures.Add(1)
				firstKeptFailure.CompareAndSwap(nil, fmt.Sprint(addr, err))
			}
		}
	})
	sub := redis.PubSubConn{Conn: dialDiscovery()}
	if err := sub.Subscribe("+switch-master"); err != nil {
		t.Fatal(err)
	}
	if m, ok := sub.Receive().(redis.Subscription); !ok || m.Count != 1 {
		t.Fatalf("SUBSCRIBE answered %v", m)
	}
	time.Sleep(200 * time.Millisecond)
	for _, to := range []struct {
		bin     []byte
		version string
	}{{v2, "test-v2"}, {v1, "test"}} {
		code, body := in.put(bytes.NewReader(to.bin), sha(to.bin), "up-token")
		if code != 200 || body["version"] != to.version || body["redisPid"] != float64(pid) {
			t.Fatalf("upgrade to %s: %d %v", to.version, code, body)
		}
		eventually(t, 5*time.Second, "the status to name "+to.version+", ready", func() bool {
			st := in.status()
			return st.ManagerVersion == to.version && st.ExecutableHash == sha(to.bin) && st.Ready && st.LastError == ""
		})
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if n := probeFailures.Load(); n > 0 {
		t.Errorf("%d of %d probes failed during the upgrades; the first: %v", n, probes.Load(), firstFailure.Load())
	}
	if writeErrors.Load() > 0 || writes.Load() == 0 {
		t.Errorf("%d writes failed, %d succeeded", writeErrors.Load(), writes.Load())
	}
	if n := askFailures.Load(); n > 0 || asks.Load() == 0 {
		t.Errorf("%d of %d questions to the discovery port failed during the upgrades; the first: %v", n, asks.Load(), firstAskFailure.Load())
	}
	if n := keptFailures.Load(); n > 0 || keptAsks.Load() == 0 {
		t.Errorf("%d of %d questions on a kept connection to the discovery port failed during the upgrades; the first: %v", n, keptAsks.Load(), firstKeptFailure.Load())
	}
	if name, err := redis.String(kept.Do("CLIENT", "GETNAME")); name != "kept" {
		t.Errorf("the kept connection's name after the upgrades: %q, %v", name, err)
	}
	// Still subscribed: a PING in RESP2 gets the subscriber's answer.
	if err := sub.Ping(""); err != nil {
		t.Fatal(err)
	}
	if m := sub.Receive(); m != (redis.Pong{}) {
		t.Errorf("the subscriber's PING after the upgrades answered %v, not a subscriber's pong", m)
	}
	if got := in.redisPID(); got != pid {
		t.Fatalf("redis-server's PID went from %d to %d", pid, got)
	}
	if b, _ := os.ReadFile(exe); !bytes.Equal(b, v1) {
		t.Error("the binary in place is not the last one uploaded")
	}
	// The count of upgrades outlives the managers that made them.
	if n := metric(scrape(t, in), "redis_operator_upgrades_total"); n != 2 {
		t.Errorf("redis_operator_upgrades_total %v after two upgrades", n)
	}
	// redis-server's log still reaches the manager's output.
	before := len(in.logRecords())
	if _, err := in.redis().Do("BGSAVE"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "redis-server's log of the BGSAVE", func() bool {
		for _, r := range in.logRecords()[before:] {
			if r["logger"] == "redis" && strings.Contains(fmt.Sprint(r["msg"]), "Background saving terminated with success") {
				return true
			}
		}
		return false
	})
	if code := in.stop(); code != 0 || !in.hasLog("Redis is now ready to exit, bye bye...") {
		t.Fatalf("exit %d; redis-server stopped gracefully: %v", code, in.hasLog("Redis is now ready to exit, bye bye..."))
	}
}

// Every bad upload is refused with its own status, and changes nothing: the
// old manager serves on, redis-server keeps its PID, no file is left.
func TestUpgradeRejections(t *testing.T) {
	v2 := binaryV2(t)
	in, exe := upgradable(t)
	pid := in.redisPID()
	script := []byte("#!/bin/sh\necho redis-operator fake\n")
	otherArch := bytes.Clone(v2)
	otherArch[18], otherArch[19] = 183, 0 // e_machine: EM_AARCH64
	falseBin, err := os.ReadFile("/bin/false")
	if err != nil {
		t.Fatal(err)
	}
	// A binary whose version is fine but which takes none of the flags
	// this instance runs with.
	src := filepath.Join(t.TempDir(), "main.go")
	writeFile(t, src, "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tif len(os.Args) > 1 && os.Args[1] == \"version\" {\n\t\tfmt.Println(\"redis-operator picky\")\n\t\treturn\n\t}\n\tfmt.Fprintln(os.Stderr, \"redis-operator: flag provided but not defined: -cluster\")\n\tos.Exit(2)\n}\n")
	picky := filepath.Join(filepath.Dir(src), "picky")
	if out, err := exec.Command("go", "build", "-o", picky, src).CombinedOutput(); err != nil {
		t.Fatalf("building a picky binary: %v: %s", err, out)
	}
	pickyBin, _ := os.ReadFile(picky)
	for _, c := range []struct {
		name  string
		body  []byte
		sum   string
		token string
		code  int
		want  string
	}{
		{"no token", v2, sha(v2), "", 401, "bearer token"},
		{"wrong token", v2, sha(v2), "nope", 401, "bearer token"},
		{"no checksum", v2, "", "up-token", 400, "X-Binary-SHA256"},
		{"wrong checksum", v2, sha(script), "up-token", 400, "checksum mismatch"},
		{"truncated", v2[:len(v2)/2], sha(v2[:len(v2)/2]), "up-token", 422, ""},
		{"not ELF", script, sha(script), "up-token", 422, "not an executable"},
		{"other architecture", otherArch, sha(otherArch), "up-token", 422, "EM_AARCH64"},
		{"version fails", falseBin, sha(falseBin), "up-token", 422, "self-check"},
		{"settings refused", pickyBin, sha(pickyBin), "up-token", 422, "refuses this instance's settings: redis-operator: flag provided but not defined"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := in.put(bytes.NewReader(c.body), c.sum, c.token)
			if code != c.code || !strings.Contains(fmt.Sprint(body["error"]), c.want) {
				t.Errorf("%d %v; want %d saying %q", code, body, c.code, c.want)
			}
			if st := in.status(); st.ManagerVersion != "test" || !st.Ready {
				t.Errorf("after a refused upgrade: %+v", st)
			}
			if entries, _ := os.ReadDir(filepath.Dir(exe)); len(entries) != 1 {
				t.Errorf("%d files beside the binary; want it alone", len(entries))
			}
		})
	}
	// A second upgrade while one is on its way in is refused.
	pr, pw := io.Pipe()
	first := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/v1/update", in.httpPort), pr)
		req.Header.Set("X-Binary-SHA256", sha(v2))
		req.Header.Set("Authorization", "Bearer up-token")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				err = fmt.Errorf("the interrupted upload was taken")
			}
		}
		first <- err
	}()
	pw.Write(v2[:1<<20])
	eventually(t, 5*time.Second, "a second upload to be refused as concurrent", func() bool {
		code, _ := in.put(bytes.NewReader(v2), sha(v2), "up-token")
		return code == http.StatusConflict
	})
	pw.CloseWithError(io.ErrUnexpectedEOF) // the client gives up half-way
	if err := <-first; err != nil && strings.Contains(err.Error(), "was taken") {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the interrupted upload to leave no file", func() bool {
		entries, _ := os.ReadDir(filepath.Dir(exe))
		return len(entries) == 1
	})
	if in.redisPID() != pid || in.status().ManagerVersion != "test" {
		t.Fatal("a refused upgrade changed the instance")
	}
}

// A SIGTERM right after the upgrade answers reaches the new manager, which
// stops redis-server gracefully.
func TestSIGTERMRightAfterAnUpgrade(t *testing.T) {
	v2 := binaryV2(t)
	in, _ := upgradable(t)
	if code, body := in.put(bytes.NewReader(v2), sha(v2), "up-token"); code != 200 {
		t.Fatalf("upgrade: %d %v", code, body)
	}
	in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		t.Fatal("no stop within 30s of SIGTERM")
	}
	if in.exitErr != nil || !in.hasLog("Redis is now ready to exit, bye bye...") || in.hasLog("redis-server killed") {
		t.Fatalf("exit %v; not a graceful stop", in.exitErr)
	}
}

// BenchmarkUpgradeHandover upgrades b.N times, to the other build each
// time, under a probe load, and reports the handover gap: from the exec
// to the new manager serving, as the new manager measures it.
func BenchmarkUpgradeHandover(b *testing.B) {
	v2 := binaryV2(b)
	v1, _ := os.ReadFile(binary)
	in, _ := upgradable(b)
	pid := in.redisPID()
	var gaps, puts []time.Duration
	b.ResetTimer()
	for i := range b.N {
		bin := [2][]byte{v2, v1}[i%2]
		start := time.Now()
		code, body := in.put(bytes.NewReader(bin), sha(bin), "up-token")
		puts = append(puts, time.Since(start))
		ms, _ := body["handoverMs"].(float64)
		if code != 200 || ms == 0 {
			b.Fatalf("upgrade %d: %d %v", i, code, body)
		}
		gaps = append(gaps, time.Duration(ms*float64(time.Millisecond)))
	}
	b.StopTimer()
	if in.redisPID() != pid {
		b.Fatal("redis-server was restarted")
	}
	b.ReportMetric(percentileMS(gaps, 0.50), "gap-p50-ms")
	b.ReportMetric(percentileMS(gaps, 0.99), "gap-p99-ms")
	b.ReportMetric(percentileMS(puts, 0.50), "request-p50-ms")
	b.ReportMetric(0, "ns/op")
}

// Over HTTPS the TLS session cannot cross the exec: the old manager
// accepts the upgrade (202), and the new one serves the same certificate on
// the inherited listener.
func TestUpgradeOverHTTPS(t *testing.T) {
	v2 := binaryV2(t)
	dir := t.TempDir()
	ca := newTestCA(t, "operator-ca")
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	c, k := ca.issue(t, 100, true)
	writeFile(t, certFile, string(c))
	writeFile(t, keyFile, string(k))
	writeFile(t, caFile, string(ca.pem))
	in, _ := upgradable(t, "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-client-ca-file", caFile)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	cp, kp := ca.issue(t, 101, false)
	pair, err := tls.X509KeyPair(cp, kp)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}, DisableKeepAlives: true}}
	url := fmt.Sprintf("https://127.0.0.1:%d", in.httpPort)
	status := func() instanceStatus {
		var st instanceStatus
		if resp, err := client.Get(url + "/v1/status"); err == nil {
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		return st
	}
	eventually(t, 20*time.Second, "the instance to be ready over HTTPS", func() bool { return status().Ready })
	pid := in.redisPID()
	req, _ := http.NewRequest("PUT", url+"/v1/update", bytes.NewReader(v2))
	req.Header.Set("X-Binary-SHA256", sha(v2))
	resp, err := client.Do(req) // the client certificate is the authorisation
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || body["version"] != "test-v2" {
		t.Fatalf("upgrade over HTTPS: %d %v; want 202, the old manager cannot answer for the exec", resp.StatusCode, body)
	}
	eventually(t, 10*time.Second, "the new manager to serve over HTTPS", func() bool {
		st := status()
		return st.ManagerVersion == "test-v2" && st.Ready
	})
	if in.redisPID() != pid {
		t.Fatal("redis-server was restarted")
	}
}

// An upgrade is refused once a stop is pending: an upload that completes
// after SIGTERM is answered 409, the binary stays as it was, and the stop
// is the usual graceful one.
func TestUpgradeRefusedOnceAStopIsPending(t *testing.T) {
	v2 := binaryV2(t)
	in, exe := upgradable(t)
	before, _ := os.ReadFile(exe)
	pr, pw := io.Pipe()
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/v1/update", in.httpPort), pr)
		req.Header.Set("X-Binary-SHA256", sha(v2))
		req.Header.Set("Authorization", "Bearer up-token")
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{code: resp.StatusCode, body: string(b)}
	}()
	pw.Write(v2[:len(v2)/2])
	in.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 5*time.Second, "the stop to begin", func() bool { return in.hasLog("stop requested") })
	pw.Write(v2[len(v2)/2:])
	pw.Close()
	r := <-done
	if r.err != nil || r.code != http.StatusConflict || !strings.Contains(r.body, "stopping") {
		t.Fatalf("an upload finished during a stop: %d %q %v; want 409", r.code, r.body, r.err)
	}
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		t.Fatal("no stop within 30s of SIGTERM")
	}
	if in.exitErr != nil || !in.hasLog("Redis is now ready to exit, bye bye...") {
		t.Fatalf("exit %v; not a graceful stop", in.exitErr)
	}
	if after, _ := os.ReadFile(exe); !bytes.Equal(before, after) {
		t.Fatal("the binary was replaced during a stop")
	}
	if entries, _ := os.ReadDir(filepath.Dir(exe)); len(entries) != 1 {
		t.Errorf("%d files beside the binary; want it alone", len(entries))
	}
}

// A new binary that cannot run after the exec (here, the cluster file it
// reads at start went bad meanwhile) stops the redis-server it adopted the
// way the supervisor stops one: SHUTDOWN, which saves, never a kill. As
// PID 1, its exit would otherwise kill Redis with its unsaved writes.
func TestFailedStartAfterAnUpgradeStopsRedisGracefully(t *testing.T) {
	v2 := binaryV2(t)
	in, _ := upgradable(t)
	c := in.redis()
	writeKeys(t, c, "kept", 500)
	c.Close()
	pid := in.redisPID()
	writeFile(t, in.clusterFile, "kind: RedisCluster\nmetadata: {name: cache\n") // no longer YAML
	eventually(t, 5*time.Second, "the running manager to refuse the file", func() bool {
		return in.hasLog("cannot use the cluster's new state; keeping the last good one")
	})
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/v1/update", in.httpPort), bytes.NewReader(v2))
	req.Header.Set("X-Binary-SHA256", sha(v2))
	req.Header.Set("Authorization", "Bearer up-token")
	if resp, err := (&http.Client{Timeout: time.Minute}).Do(req); err == nil {
		resp.Body.Close() // the new manager, which would answer, cannot start
	}
	if code := in.awaitExit(40 * time.Second); code != 2 {
		t.Fatalf("the new manager exited with %d, want 2 (a start error)", code)
	}
	var stopped, killed bool
	for _, r := range in.logRecords() {
		switch r["msg"] {
		case "redis-server stopped":
			stopped = r["pid"] == float64(pid) && r["status"] == "exit status 0"
		case "redis-server killed":
			killed = true
		}
	}
	if !in.hasLog("cannot run after the upgrade; stopping the inherited redis-server") || !stopped || killed {
		t.Fatalf("the inherited redis-server %d was not stopped gracefully (stopped %v, killed %v):\n%s", pid, stopped, killed, in.out.String())
	}
	cf := filepath.Join(t.TempDir(), "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	again := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, dataDir: in.dataDir, password: "s3cret-pw"})
	again.waitReady(20 * time.Second)
	c = again.redis()
	defer c.Close()
	checkKeys(t, c, "kept", 500)
}
