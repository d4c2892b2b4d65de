package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A redis-server of this pod's data directory that outlived its manager
// (here started by hand on the manager's redis.conf, as one started by an
// older manager would be found, and caught in the middle of a BGSAVE) is
// stopped gracefully by the next manager, which then serves every write it
// acknowledged from a redis-server of its own: no restart loop beside it.
// And when the pod is fenced meanwhile, it is stopped and nothing starts.
func TestManagerStopsTheRedisServerItsPredecessorLeft(t *testing.T) {
	in := oneInstance(t, "appendonly yes\nappendfsync always")
	in.waitReady(30 * time.Second)
	if code := in.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	conf := filepath.Join(in.dataDir, confName)
	strayPID, strayDone := startStray(t, in, conf)
	c, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if _, err := c.Do("SET", fmt.Sprintf("k%d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	// A slow BGSAVE (a millisecond a key), under way when the manager comes.
	c.Do("CONFIG", "SET", "rdb-key-save-delay", "1000")
	if _, err := c.Do("BGSAVE"); err != nil {
		t.Fatal(err)
	}
	text, _ := redis.String(c.Do("INFO", "persistence"))
	if parseInfo(text)["rdb_bgsave_in_progress"] != "1" {
		t.Fatal("no BGSAVE under way")
	}
	c.Close()

	again := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: in.clusterFile, dataDir: in.dataDir, port: in.port, password: in.password})
	again.waitReady(60 * time.Second)
	select {
	case err := <-strayDone:
		if err != nil {
			t.Fatalf("the stray redis-server did not stop cleanly: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stray redis-server still runs")
	}
	if !again.hasLog("this pod's redis-server runs without its manager; stopping it gracefully (SHUTDOWN, which saves) before going on") {
		t.Fatal("no word of the stray redis-server in the log")
	}
	if again.hasLog("redis-server exited unexpectedly; restarting") {
		t.Fatal("the manager's redis-server crashed beside the stray one")
	}
	if pid := again.redisPID(); pid == strayPID || parentOf(pid) != again.cmd.Process.Pid {
		t.Fatalf("redis-server pid %d (parent %d) serves; want a child of the manager (pid %d)", pid, parentOf(pid), again.cmd.Process.Pid)
	}
	r := again.redis()
	for i := range 1000 {
		if v, err := redis.Int(r.Do("GET", fmt.Sprintf("k%d", i))); err != nil || v != i {
			t.Fatalf("k%d = %d, %v: an acknowledged write was lost", i, v, err)
		}
	}

	// Fenced while no manager ran: the stray stops, and nothing starts.
	if code := again.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	_, strayDone = startStray(t, in, conf)
	y, _ := os.ReadFile(in.clusterFile)
	writeFile(t, in.clusterFile, strings.Replace(string(y), "metadata:\n  name: cache\n", "metadata:\n  name: cache\n  annotations: {redisoperator.io/fencedInstances: '[\"cache-0\"]'}\n", 1))
	fenced := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: in.clusterFile, dataDir: in.dataDir, port: in.port, password: in.password})
	select {
	case <-strayDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the stray redis-server still runs, with the pod fenced")
	}
	eventually(t, 10*time.Second, "/readyz to say fenced", func() bool {
		code, body := fenced.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(string(body), "fenced")
	})
	if _, held := findPortHolder(in.port); held || fenced.hasLog("redis-server started") {
		t.Fatal("a redis-server was started while fenced")
	}
}

// startStray runs redis-server on the manager's redis.conf, as a manager
// that died would have left it: not a child of the next manager.
func startStray(t *testing.T, in *instance, conf string) (int, <-chan error) {
	t.Helper()
	cmd := exec.Command(requireRedis(t), conf)
	cmd.Dir, cmd.SysProcAttr = in.dataDir, &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	eventually(t, 10*time.Second, "the stray redis-server to serve", func() bool {
		c, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return cmd.Process.Pid, done
}

// Another program on the Redis port is named, in /readyz, the status and
// the log, and left alone; redis-server starts once the port is free, not
// before, and not in a loop of failed starts.
func TestAnotherProgramOnTheRedisPortIsNamedAndLeftAlone(t *testing.T) {
	port := freePort(t)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly yes", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, port: port, password: "s3cret-pw"})

	comm, _ := os.ReadFile("/proc/self/comm") // this test's own process holds it
	want := fmt.Sprintf("port %d is held by pid %d (%s), not by this pod's redis-server", port, os.Getpid(), strings.TrimSpace(string(comm)))
	eventually(t, 20*time.Second, "/readyz to name what holds the port", func() bool {
		code, body := in.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(string(body), want)
	})
	if st := in.status(); !strings.Contains(st.LastError, want) && !strings.Contains(st.NotReadyReason, want) {
		t.Fatalf("the status does not say what holds the port: %+v", st)
	}
	time.Sleep(2 * time.Second)
	if in.hasLog("redis-server started") || in.logCount("not starting redis-server again") != 1 {
		t.Fatalf("want the reason logged once and no redis-server started; log:\n%s", in.out.String())
	}
	if !strings.Contains(in.out.String(), want) {
		t.Fatal("the log does not name what holds the port")
	}
	// Untouched: it still takes connections.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("the other program's port: %v", err)
	}
	c.Close()

	ln.Close()
	in.waitReady(45 * time.Second)
}
