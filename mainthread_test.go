package main

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A manager killed outright (kill -9, as the OOM killer does) takes its
// redis-server with it: the parent-death signal stops Redis gracefully,
// so it does not go on taking writes with no manager. Started again, the
// manager serves every write that was acknowledged, with one redis-server
// of its own.
func TestKilledManagerTakesItsRedisServerWithIt(t *testing.T) {
	in := oneInstance(t, "appendonly yes\nappendfsync always")
	in.waitReady(30 * time.Second)
	redisPID := in.redisPID()
	t.Cleanup(func() {
		if alive(redisPID) { // the test failed: it must not outlive it
			syscall.Kill(redisPID, syscall.SIGKILL)
		}
	})

	var acked atomic.Int64
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		c, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, err := redis.Int64(c.Do("INCR", "counter")); err != nil {
				return // the server went: the last write was not acknowledged
			}
			acked.Add(1)
		}
	}()
	eventually(t, 10*time.Second, "writes", func() bool { return acked.Load() > 1000 })
	killed := time.Now()
	in.cmd.Process.Kill()
	in.awaitExit(10 * time.Second)
	eventually(t, 10*time.Second, "redis-server to stop once its manager is killed", func() bool { return !alive(redisPID) })
	t.Logf("redis-server stopped %v after its manager was killed", time.Since(killed).Round(time.Millisecond))
	<-writing

	again := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: in.clusterFile, dataDir: in.dataDir, port: in.port, password: in.password})
	again.waitReady(30 * time.Second)
	n, err := redis.Int64(again.redis().Do("GET", "counter"))
	if err != nil || n < acked.Load() {
		t.Fatalf("counter %d (%v) after the restart; %d increments were acknowledged", n, err, acked.Load())
	}
	h, held := findPortHolder(again.port)
	if !held || h.pid != again.redisPID() || parentOf(h.pid) != again.cmd.Process.Pid {
		t.Fatalf("the Redis port is held by %+v; want the new manager's (pid %d) child, pid %d", h, again.cmd.Process.Pid, again.redisPID())
	}
	if again.hasLog("redis-server exited unexpectedly; restarting") {
		t.Fatal("the restarted manager's redis-server crashed")
	}
}

// parentOf is a process's parent PID.
func parentOf(pid int) int {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			var ppid int
			fmt.Sscan(strings.TrimSpace(v), &ppid)
			return ppid
		}
	}
	return 0
}
