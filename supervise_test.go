package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	var d time.Duration
	var seen []time.Duration
	for range 12 {
		d = nextBackoff(d)
		seen = append(seen, d)
	}
	if seen[0] != 100*time.Millisecond || seen[1] != 200*time.Millisecond || seen[8] != 25600*time.Millisecond || seen[9] != 30*time.Second || seen[11] != 30*time.Second {
		t.Fatalf("backoff sequence %v", seen)
	}
}
