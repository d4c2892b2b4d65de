package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

func writeKeys(t *testing.T, c redis.Conn, prefix string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		c.Send("SET", fmt.Sprintf("%s:%d", prefix, i), fmt.Sprintf("value-%d", i))
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := c.Receive(); err != nil {
			t.Fatal(err)
		}
	}
}

func checkKeys(t *testing.T, c redis.Conn, prefix string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		v, err := redis.String(c.Do("GET", fmt.Sprintf("%s:%d", prefix, i)))
		if err != nil || v != fmt.Sprintf("value-%d", i) {
			t.Fatalf("key %s:%d: %q, %v (of %d written)", prefix, i, v, err, n)
		}
	}
}

// SIGTERM stops redis-server with SHUTDOWN, which saves; nothing written
// before the signal is lost, and nothing is killed. With RDB alone, a kill
// would lose every key written since the last save.
func TestGracefulStopKeepsEveryKey(t *testing.T) {
	for _, tc := range []struct{ name, fragment string }{
		{"aof", "appendonly yes\nappendfsync everysec\nsave \"\""},
		{"rdb", "appendonly no\nsave 3600 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cf := filepath.Join(dir, "cluster.yaml")
			writeFile(t, cf, clusterYAML("cache", "cache-0", tc.fragment, "s3cret-pw"))
			opts := instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: filepath.Join(dir, "data")}
			in := startInstance(t, opts)
			in.waitReady(20 * time.Second)
			writeKeys(t, in.redis(), "k", 5000)
			if code := in.stop(); code != 0 {
				t.Fatalf("exit status %d, want 0", code)
			}
			for _, r := range in.logRecords() {
				if r["msg"] == "redis-server killed" || r["msg"] == "redis-server did not stop within the shutdown budget; killing it" {
					t.Fatalf("redis-server was killed: %v", r)
				}
			}
			stopped := false
			for _, r := range in.logRecords() {
				stopped = stopped || (r["msg"] == "redis-server stopped" && r["status"] == "exit status 0")
			}
			if !stopped {
				t.Fatal("no record of redis-server stopping with exit status 0")
			}
			in2 := startInstance(t, opts)
			in2.waitReady(20 * time.Second)
			checkKeys(t, in2.redis(), "k", 5000)
		})
	}
}

// redis-server killed from outside is started again, the restart counted,
// and what AOF acknowledged is still there.
func TestCrashedRedisIsRestarted(t *testing.T) {
	in := oneInstance(t, "appendonly yes\nappendfsync always")
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 1000)
	pid := in.redisPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "restarts to reach 1 and the instance to be ready again", func() bool {
		st := in.status()
		return st.Restarts == 1 && st.Ready
	})
	if newPID := in.redisPID(); newPID == pid {
		t.Fatalf("redis-server PID %d unchanged after a kill", pid)
	}
	checkKeys(t, in.redis(), "k", 1000)
}

// As PID 1 of its own PID namespace, the manager reaps orphans it never
// started, and SIGTERM still ends everything cleanly.
func TestPID1ReapsOrphansAndStopsCleanly(t *testing.T) {
	redisServer := requireRedis(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("unshare (util-linux) is needed")
	}
	ns := []string{"unshare", "--pid", "--fork", "--kill-child", "--mount-proc"}
	if os.Geteuid() != 0 {
		ns = append(ns[:1], append([]string{"--user", "--map-root-user"}, ns[1:]...)...)
	}
	dir := t.TempDir()
	// The wrapper leaves an orphan behind: a subshell starts sleep and
	// exits, so sleep is re-parented to PID 1, the manager.
	wrapper := filepath.Join(dir, "redis-wrapper")
	writeFile(t, wrapper, fmt.Sprintf("#!/bin/sh\n( sleep 3 & )\nexec %s \"$@\"\n", redisServer))
	os.Chmod(wrapper, 0o755)
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly yes", ""))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, redisServer: wrapper,
		prefix: ns})
	in.waitReady(20 * time.Second)

	// unshare's child is the manager, PID 1 inside.
	var manager int
	eventually(t, 5*time.Second, "the manager to appear under unshare", func() bool {
		manager = childrenOf(in.cmd.Process.Pid, "")[0]
		return manager != 0
	})
	var orphan int
	eventually(t, 3*time.Second, "the orphaned sleep to become the manager's child", func() bool {
		if kids := childrenOf(manager, "sleep"); len(kids) > 0 {
			orphan = kids[0]
		}
		return orphan != 0
	})
	eventually(t, 10*time.Second, fmt.Sprintf("the orphan %d to be reaped (not left a zombie)", orphan), func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", orphan))
		return os.IsNotExist(err)
	})
	if err := in.stopPID1(manager); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if !in.hasLog("Redis is now ready to exit, bye bye...") || in.hasLog("redis-server killed") {
		t.Fatal("redis-server did not shut down gracefully")
	}
}

// childrenOf lists the PIDs whose parent is ppid (and whose command is comm,
// when given), with 0 first when there are none.
func childrenOf(ppid int, comm string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := bytes.LastIndexByte(stat, ')')
		fields := strings.Fields(string(stat[i+2:]))
		name := string(stat[bytes.IndexByte(stat, '(')+1 : i])
		if len(fields) > 1 && fields[1] == strconv.Itoa(ppid) && (comm == "" || name == comm) {
			out = append(out, pid)
		}
	}
	if len(out) == 0 {
		return []int{0}
	}
	return out
}

func TestRedisLogLinesBecomeRecords(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil)).With("logger", "redis")
	emitRedisLine(log, "4624:M 25 Nov 2026 22:17:33.034 # WARNING Memory overcommit must be enabled!")
	emitRedisLine(log, "4630:S 25 Nov 2026 22:17:33.292 * Connecting to MASTER 127.0.0.1:7380")
	emitRedisLine(log, "4630:S 25 Nov 2026 22:17:33.292 - Client closed connection")
	emitRedisLine(log, "not a redis line")
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	want := []map[string]any{
		{"level": "WARN", "msg": "WARNING Memory overcommit must be enabled!", "logger": "redis", "pid": 4624.0, "role": "master", "redisLevel": "warning"},
		{"level": "INFO", "msg": "Connecting to MASTER 127.0.0.1:7380", "logger": "redis", "pid": 4630.0, "role": "replica", "redisLevel": "notice"},
		{"level": "INFO", "msg": "Client closed connection", "logger": "redis", "pid": 4630.0, "role": "replica", "redisLevel": "verbose"},
		{"level": "INFO", "msg": "not a redis line", "logger": "redis"},
	}
	for i := range want {
		for k, v := range want[i] {
			if got[i][k] != v {
				t.Errorf("record %d: %s = %v, want %v (%v)", i, k, got[i][k], v, got[i])
			}
		}
	}
}

func TestBackoffDoublesToThirtySeconds(t *testing.T) {
	b := newBackoff()
	var seen []time.Duration
	for range 12 {
		seen = append(seen, b.next())
	}
	if b.reset(); b.next() != 100*time.Millisecond {
		t.Fatal("a reset backoff does not start anew")
	}
	if seen[0] != 100*time.Millisecond || seen[1] != 200*time.Millisecond || seen[8] != 25600*time.Millisecond || seen[9] != 30*time.Second || seen[11] != 30*time.Second {
		t.Fatalf("backoff sequence %v", seen)
	}
}

// The fault suite (go test -run Fault): each test breaks one thing a pod
// meets in production and says what must hold through it.

// counterWriter INCRs one counter for as long as it runs, across restarts of
// redis-server, the way a client that retries would. Each reply must exceed
// the last one acknowledged: one that does not means an acknowledged write
// was lost. An INCR that got no reply may or may not have been applied, so
// a reply may jump ahead.
type counterWriter struct {
	mu         sync.Mutex
	acked      int64     // the counter as the last reply gave it
	sentAt     time.Time // when the INCR of that reply was sent
	lost       []string
	stop, done chan struct{}
	stopOnce   sync.Once
}

func startCounterWriter(t *testing.T, in *instance) *counterWriter {
	w := &counterWriter{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { w.finish() }) // a test that failed half-way leaves no writer behind
	go func() {
		defer close(w.done)
		var c redis.Conn
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			if c == nil {
				var err error
				if c, err = dialRedisAs("", localAddr(in.port), []string{in.password}, nil, time.Second); err != nil {
					c = nil
					time.Sleep(5 * time.Millisecond) // a retrying client's pause, not a wait for anything
					continue
				}
			}
			sent := time.Now()
			n, err := redis.Int64(c.Do("INCR", "counter"))
			if err != nil {
				if _, isReply := err.(redis.Error); !isReply { // not LOADING: the connection is gone
					c.Close()
					c = nil
				}
				time.Sleep(5 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			if n <= w.acked {
				w.lost = append(w.lost, fmt.Sprintf("INCR answered %d after %d had been acknowledged", n, w.acked))
			}
			w.acked, w.sentAt = n, sent
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *counterWriter) last() (int64, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked, w.sentAt
}

func (w *counterWriter) finish() (acked int64, lost []string) {
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
	return w.acked, w.lost
}

// redis-server is SIGKILLed again and again (an OOM killer, a user with
// kill -9) while a client writes. Must hold: the manager restarts it every
// time, counting each restart; no acknowledged write is lost; each comes
// back after its restart backoff and not much later, nor sooner (a server
// that keeps dying is not restarted in a hot loop); /healthz stays 200
// throughout, for the manager restarts redis-server itself and the kubelet
// must not restart the pod over it; the manager never exits.
//
// appendfsync always, not everysec: with everysec Redis 7.0 postpones even
// the write(2) of its AOF buffer, for up to 2 s, while a background fsync
// is in progress (flushAppendOnlyFile), and replies to the client
// meanwhile; a process killed then loses writes it acknowledged. With
// always, the write and the fsync are done before the reply goes out.
//
// The backoff doubles from 100 ms with each exit and starts again only after
// a run of a healthy minute, so six kills a second or so apart cost about
// 6 s of backoff in all; an eighth would wait 12.8 s on its own, and a
// server that keeps dying settles at one start every 30 s.
func TestFaultRedisKilledInALoop(t *testing.T) {
	in := oneInstance(t, "appendonly yes\nappendfsync always")
	in.waitReady(20 * time.Second)
	w := startCounterWriter(t, in)
	const kills = 6
	retry := newBackoff()
	var downs []time.Duration
	for i := 1; i <= kills; i++ {
		before, _ := w.last()
		eventually(t, 10*time.Second, "the writer to have writes acknowledged", func() bool {
			n, _ := w.last()
			return n >= before+20
		})
		pid := in.redisPID()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killedAt := time.Now()
		// The process is gone once reaped; an INCR sent after that can only
		// be answered by the next one.
		eventually(t, 5*time.Second, fmt.Sprintf("redis-server %d to be reaped", pid), func() bool {
			_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
			return os.IsNotExist(err)
		})
		goneAt := time.Now()
		wait := retry.next()
		var unhealthy []string
		eventually(t, wait+10*time.Second, fmt.Sprintf("kill %d: writes to be acknowledged again", i), func() bool {
			if code, body := in.get("/healthz"); code != http.StatusOK {
				unhealthy = append(unhealthy, fmt.Sprintf("%d %s", code, body))
			}
			_, sent := w.last()
			return sent.After(goneAt)
		})
		_, backAt := w.last()
		down := backAt.Sub(killedAt)
		downs = append(downs, down.Round(time.Millisecond))
		if len(unhealthy) > 0 {
			t.Errorf("kill %d: /healthz failed while the manager restarted redis-server: %v", i, unhealthy)
		}
		if down < wait {
			t.Errorf("kill %d: writes were acknowledged again %s after the kill, before the backoff of %s", i, down, wait)
		}
		if down > wait+3*time.Second {
			t.Errorf("kill %d: writes were acknowledged again only %s after the kill, with a backoff of %s", i, down, wait)
		}
		// The status is what the reconciler last published: it may trail
		// by one look at Redis.
		eventually(t, 5*time.Second, fmt.Sprintf("the status to count %d restarts", i), func() bool {
			return in.status().Restarts == i
		})
		select {
		case <-in.done:
			t.Fatalf("the manager exited after kill %d: %v", i, in.exitErr)
		default:
		}
	}
	t.Logf("time from each kill to the next acknowledged write: %v", downs)
	acked, lost := w.finish()
	if len(lost) > 0 {
		t.Fatalf("acknowledged writes were lost: %v", lost)
	}
	got, err := redis.Int64(in.redis().Do("GET", "counter"))
	if err != nil || got < acked {
		t.Fatalf("counter %d (%v), but %d was acknowledged", got, err, acked)
	}
	if code := in.stop(); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}

// redis-server hangs (SIGSTOP stands in for a wedged process: it holds its
// port and answers nothing). Must hold: /readyz fails within seconds, so
// that clients are sent elsewhere; /healthz fails once it has not answered
// for redisHung, so that the kubelet restarts the pod, and not before, so
// that a stall shorter than that (a long command, a slow disk) does not
// cost a restart and a reload; every probe is answered within the
// kubelet's default timeout of 1 s all along, for they serve what the
// manager last saw and never wait on Redis; the manager does not restart
// redis-server itself. Once it runs again, everything recovers with all its
// data.
func TestFaultRedisHungFailsLiveness(t *testing.T) {
	in := oneInstance(t, "appendonly yes\nappendfsync always")
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 1000)
	pid := in.redisPID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) }) // before the instance's own cleanup stops it

	// The kubelet gives a probe 1 s by default; a handler waiting on the
	// hung Redis would miss every one. One late answer on a loaded test
	// machine is not that, and a kubelet acts on several misses in a row.
	var slowest time.Duration
	var slowestPath string
	late := 0
	probe := func(path string) (int, string) {
		began := time.Now()
		code, body := in.get(path)
		d := time.Since(began)
		if d > slowest {
			slowest, slowestPath = d, path
		}
		if d > time.Second {
			late++
		}
		return code, string(body)
	}
	var notReadyAfter, unhealthyAfter time.Duration
	var reason string
	eventually(t, redisHung+15*time.Second, "/healthz to fail on a hung redis-server", func() bool {
		if code, _ := probe("/readyz"); code == http.StatusServiceUnavailable && notReadyAfter == 0 {
			notReadyAfter = time.Since(stoppedAt)
		}
		probe("/startupz")
		probe("/v1/status")
		code, body := probe("/healthz")
		if code == http.StatusInternalServerError {
			var h struct{ Reason string }
			json.Unmarshal([]byte(body), &h)
			unhealthyAfter, reason = time.Since(stoppedAt), h.Reason
			return true
		}
		return false
	})
	t.Logf("hung redis-server: /readyz failed after %s, /healthz after %s (%q); slowest probe %s (%s)",
		notReadyAfter.Round(time.Millisecond), unhealthyAfter.Round(time.Millisecond), reason, slowest.Round(time.Millisecond), slowestPath)
	if notReadyAfter == 0 || notReadyAfter > 5*time.Second {
		t.Errorf("/readyz failed %s after redis-server hung, want within 5s", notReadyAfter)
	}
	if unhealthyAfter < redisHung-2*time.Second || unhealthyAfter > redisHung+5*time.Second {
		t.Errorf("/healthz failed %s after redis-server hung, want about %s", unhealthyAfter, redisHung)
	}
	if want := fmt.Sprintf("redis-server (pid %d) has not answered for", pid); !strings.Contains(reason, want) {
		t.Errorf("/healthz says %q, want the reason %q", reason, want)
	}
	if late > 1 {
		t.Errorf("%d probes took over 1s while redis-server hung, the slowest %s %s", late, slowestPath, slowest)
	}
	if st := in.status(); st.Restarts != 0 || st.Ready {
		t.Errorf("while hung: restarts %d, ready %v", st.Restarts, st.Ready)
	}

	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "/healthz and /readyz to recover", func() bool {
		hc, _ := in.get("/healthz")
		rc, _ := in.get("/readyz")
		return hc == http.StatusOK && rc == http.StatusOK
	})
	if got := in.redisPID(); got != pid {
		t.Errorf("redis-server is now pid %d, want the one that hung, %d", got, pid)
	}
	c := in.redis()
	checkKeys(t, c, "k", 1000)
	if _, err := c.Do("SET", "after", "the hang"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-in.done:
		t.Fatalf("the manager exited: %v", in.exitErr)
	default:
	}
}

// populate writes n keys of 100 bytes, key:0 to key:n-1, inside Redis
// (DEBUG POPULATE, which the fragment must allow with enable-debug-command
// local): millions of keys written, and read back, a round trip at a time
// would take longer than the faults under test. It returns every 1000th
// key with its value, for sampleHolds to check after.
func populate(t *testing.T, c redis.Conn, n int) map[string]string {
	t.Helper()
	if _, err := c.Do("DEBUG", "POPULATE", n, "key", 100); err != nil {
		t.Fatal(err)
	}
	var keys []any
	for i := 0; i < n; i += 1000 {
		keys = append(keys, fmt.Sprintf("key:%d", i))
	}
	values, err := redis.Strings(c.Do("MGET", keys...))
	if err != nil {
		t.Fatal(err)
	}
	sample := map[string]string{}
	for i, k := range keys {
		sample[k.(string)] = values[i]
	}
	return sample
}

// sampleHolds checks that Redis holds n keys, and the sample populate took.
func sampleHolds(t *testing.T, c redis.Conn, n int, sample map[string]string) {
	t.Helper()
	if got, err := redis.Int64(c.Do("DBSIZE")); err != nil || got != int64(n) {
		t.Fatalf("DBSIZE %d (%v), want %d", got, err, n)
	}
	for k, want := range sample {
		if got, err := redis.String(c.Do("GET", k)); err != nil || got != want {
			t.Fatalf("%s holds %.20q (%v), want %.20q", k, got, err, want)
		}
	}
}

// populatedInstance runs a primary filled with n keys by DEBUG POPULATE,
// whose save points none of these tests lasts long enough to meet: its
// dataset reaches the disk only through the save of a stop. It returns the
// options to start it again with, and a sample of the keys.
func populatedInstance(t *testing.T, n int) (*instance, instanceOpts, map[string]string) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no\nsave 3600 1\nenable-debug-command local", "s3cret-pw"))
	opts := instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: filepath.Join(dir, "data")}
	in := startInstance(t, opts)
	in.waitReady(20 * time.Second)
	return in, opts, populate(t, in.redis(), n)
}

// A kubelet and a user (or two layers of tooling) each send SIGTERM, the
// second while the first stop is under way. Must hold: one graceful stop:
// redis-server saves its dataset on SHUTDOWN and exits 0, it is never sent
// SIGTERM or killed, the manager stops once and exits 0, and every key is
// there after a restart.
func TestFaultTwoSIGTERMs(t *testing.T) {
	// Big enough that the final save takes a while: the second signal
	// lands in it.
	const keys = 1_000_000
	in, opts, sample := populatedInstance(t, keys)
	writeKeys(t, in.redis(), "k", 5000) // and some the way a client writes them

	in.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 10*time.Second, "the manager to begin stopping redis-server", func() bool {
		return in.hasLog("stopping redis-server")
	})
	if in.hasLog("redis-server stopped") {
		t.Fatal("redis-server had stopped before the second SIGTERM: the save was too quick for this test to mean anything")
	}
	in.cmd.Process.Signal(syscall.SIGTERM)
	if code := in.awaitExit(30 * time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	for _, msg := range []string{"stop requested", "stopping redis-server", "stopped",
		"Saving the final RDB snapshot before exiting.", "DB saved on disk"} {
		if n := in.logCount(msg); n != 1 {
			t.Errorf("%d log records %q, want 1", n, msg)
		}
	}
	stopped := 0
	for _, r := range in.logRecords() {
		msg, _ := r["msg"].(string)
		switch {
		case msg == "redis-server stopped":
			stopped++
			if r["status"] != "exit status 0" {
				t.Errorf("redis-server stopped with %v", r["status"])
			}
		// Redis's signal handler logs in a format of its own, which
		// comes through whole: matched as a part.
		case strings.Contains(msg, "Received SIGTERM"), msg == "SHUTDOWN failed; sending SIGTERM",
			msg == "redis-server did not stop within the shutdown budget; killing it", msg == "redis-server killed":
			t.Errorf("not one graceful SHUTDOWN: %s", msg)
		}
	}
	if stopped != 1 {
		t.Errorf("redis-server stopped %d times, want once", stopped)
	}

	in2 := startInstance(t, opts)
	in2.waitReady(30 * time.Second)
	c2 := in2.redis()
	sampleHolds(t, c2, keys+5000, sample)
	checkKeys(t, c2, "k", 5000)
}

// SIGTERM comes while redis-server loads a large dataset (a pod deleted or
// rolled while it starts). A save then would write what was loaded so far
// over the whole dataset. Must hold: the manager exits 0 within its stop
// budget without killing redis-server; no file of the data directory is
// written; and after a restart every key is there, with its value.
//
// Redis 7.0 sees to the first itself: SHUTDOWN while loading is made
// SHUTDOWN NOSAVE (shutdownCommand), as is a SIGTERM then. The manager
// sends the plain SHUTDOWN of any stop, on purpose: see stop.
func TestFaultSIGTERMWhileLoading(t *testing.T) {
	// About 3 s to load here.
	const keys = 2_000_000
	in, opts, sample := populatedInstance(t, keys)
	if code := in.stop(); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	files := dirDigest(t, opts.dataDir)

	const budget = 5 * time.Second
	loading := opts
	loading.extraArgs = []string{"--shutdown-timeout", budget.String()}
	in2 := startInstance(t, loading)
	eventually(t, 20*time.Second, "/startupz to say redis-server is loading", func() bool {
		code, body := in2.get("/startupz")
		var sz struct{ Loading bool }
		json.Unmarshal(body, &sz)
		return code == http.StatusServiceUnavailable && sz.Loading
	})
	sent := time.Now()
	in2.cmd.Process.Signal(syscall.SIGTERM)
	code := in2.awaitExit(budget + 10*time.Second)
	took := time.Since(sent)
	t.Logf("stopped %s after SIGTERM", took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if took > budget {
		t.Errorf("the manager took %s to stop, over its budget of %s", took, budget)
	}
	for _, r := range in2.logRecords() {
		msg, _ := r["msg"].(string)
		switch {
		case strings.HasPrefix(msg, "Done loading RDB"):
			t.Fatal("redis-server had finished loading when it was stopped: the dataset loads too fast for this test to mean anything")
		case msg == "redis-server killed", msg == "SHUTDOWN failed; sending SIGTERM", strings.Contains(msg, "Saving the final RDB snapshot"):
			t.Errorf("stopping a loading redis-server: %s", msg)
		case msg == "redis-server stopped" && r["status"] != "exit status 0":
			t.Errorf("redis-server stopped with %v", r["status"])
		}
	}
	if got := dirDigest(t, opts.dataDir); got != files {
		t.Errorf("the data directory changed in a stop while loading:\nbefore:\n%safter:\n%s", files, got)
	}

	in3 := startInstance(t, opts)
	in3.waitReady(30 * time.Second)
	sampleHolds(t, in3.redis(), keys, sample)
}
