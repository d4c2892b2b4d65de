package main

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkIdleFootprintLocal is e2e's BenchmarkIdleFootprint in local
// mode: the binary as shipped (static, stripped) managing the primary of a
// cluster of three from a cluster file, through quiet minutes after the
// start's own work. Its resident memory and CPU, beside redis-server's.
func BenchmarkIdleFootprintLocal(b *testing.B) {
	shipped := filepath.Join(b.TempDir(), "redis-operator")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=bench", "-o", shipped, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	built := binary
	binary = shipped
	defer func() { binary = built }()
	_, nodes := cluster3(b, "appendonly no")
	primary, replica := nodes[0], nodes[1]
	pid, replicaPID, redisPID := primary.cmd.Process.Pid, replica.cmd.Process.Pid, primary.redisPID()
	time.Sleep(10 * time.Second) // past the start's own work, and its trim (footprint.go)

	const window = time.Minute
	var manager, replicaManager, redis time.Duration
	b.ResetTimer()
	for range b.N {
		m0, p0, r0 := cpuTime(pid), cpuTime(replicaPID), cpuTime(redisPID)
		time.Sleep(window)
		manager += cpuTime(pid) - m0
		replicaManager += cpuTime(replicaPID) - p0
		redis += cpuTime(redisPID) - r0
	}
	b.StopTimer()
	percent := func(d time.Duration) float64 { return 100 * d.Seconds() / (window.Seconds() * float64(b.N)) }
	b.ReportMetric(procMiB(pid, "VmRSS"), "rss-MiB")
	b.ReportMetric(procMiB(pid, "VmHWM"), "peak-rss-MiB")
	b.ReportMetric(procMiB(pid, "RssAnon"), "rss-anon-MiB") // the rest is the binary's pages, shared with the page cache
	b.ReportMetric(procMiB(replicaPID, "VmRSS"), "replica-rss-MiB")
	b.ReportMetric(percent(manager), "cpu-%-of-a-core")
	b.ReportMetric(percent(replicaManager), "replica-cpu-%-of-a-core") // a replica also asks its primary's offset
	b.ReportMetric(percent(redis), "redis-cpu-%-of-a-core")
	b.ReportMetric(0, "ns/op")
}

// cpuTime is the CPU a process's threads have run, from the scheduler's
// own nanosecond count (/proc/<pid>/task/*/schedstat): clock ticks (10 ms)
// are too coarse for an idle manager's millisecond a second. A thread that
// ended would take its time with it; Go's and Redis's threads stay.
func cpuTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		total += time.Duration(ns)
	}
	return total
}

// procMiB reads one of /proc/<pid>/status's memory lines, in MiB.
func procMiB(pid int, key string) float64 {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// After the start, the manager gives back the binary's pages the start
// touched: its resident set drops by megabytes, and what runs next is
// mapped back from the page cache. Done here to this test's own binary,
// which then goes on running code it had not run since (YAML, SHA-256).
func TestTrimGivesBackTheBinarysPages(t *testing.T) {
	before := procMiB(os.Getpid(), "RssFile")
	if err := unmapReadOnlyImage(); err != nil {
		t.Fatal(err)
	}
	after := procMiB(os.Getpid(), "RssFile")
	if after > before/2 {
		t.Fatalf("the binary's resident pages went from %.1f to %.1f MiB; want at least half given back", before, after)
	}
	// Still runs, and its constant data reads back the same.
	s := newLocalSource("x", "cache", "default", "cache-0", slog.New(slog.DiscardHandler))
	file, err := s.parse([]byte("apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata: {name: cache}\nspec: {instances: 3}\n"))
	if err != nil || file.cluster == nil || file.cluster.Spec.Instances != 3 {
		t.Fatalf("parse after the trim: %+v, %v", file.cluster, err)
	}
	if h := fmt.Sprintf("%x", sha256.Sum256([]byte("abc"))); h != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("sha256 after the trim: %s", h)
	}
	t.Logf("the binary's resident pages: %.1f MiB before, %.1f after", before, after)
}

// Only the binary's read-only mappings are unmapped: its writable data,
// the heap and other files' mappings hold what the program wrote.
func TestTrimTouchesOnlyTheBinarysReadOnlyMappings(t *testing.T) {
	const exe = "/controller/redis operator" // a path with a space stays one
	for line, want := range map[string]bool{
		"00400000-009bc000 r-xp 00000000 fd:01 1234 " + exe:                                true,
		"009bc000-00fac000 r--p 005bc000 fd:01 1234 " + exe:                                true,
		"00fac000-01021000 rw-p 00bac000 fd:01 1234 " + exe:                                false,
		"01021000-03066000 rw-p 00000000 00:00 0":                                          false,
		"7f75f8360000-7f75f8600000 r--p 00000000 fd:01 99 /usr/lib/locale/C.utf8/LC_CTYPE": false,
		"00400000-009bc000 r-xp 00000000 fd:01 1234 /controller/redis":                     false,
	} {
		if _, _, ok := readOnlyMappingOf(line, exe); ok != want {
			t.Errorf("%q: unmapped %v, want %v", line, ok, want)
		}
	}
}

// Beats of periods that divide one another fall together: an idle
// manager's loops wake it once, not each on its own.
func TestBeatsFallTogether(t *testing.T) {
	short, long := newBeat(50*time.Millisecond), newBeat(100*time.Millisecond)
	defer short.stop()
	defer long.stop()
	var shortAt []time.Duration
	for len(shortAt) < 4 {
		at := <-short.C
		short.next()
		shortAt = append(shortAt, at.Sub(beatOrigin))
	}
	longAt := (<-long.C).Sub(beatOrigin)
	for _, at := range append(shortAt, longAt) {
		if off := at % (50 * time.Millisecond); off > 15*time.Millisecond {
			t.Errorf("a beat %v after a multiple of its period", off)
		}
	}
	// A period that ends a millisecond from now: that beat is skipped.
	period := time.Since(beatOrigin) + time.Millisecond
	if left := untilBeat(period); left < period {
		t.Errorf("a beat due in under a tenth of its period is not skipped: next in %v, period %v", left, period)
	}
}
