package main

import (
	"bytes"
	"fmt"
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
	primary := nodes[0]
	pid, redisPID := primary.cmd.Process.Pid, primary.redisPID()
	time.Sleep(10 * time.Second) // past the start's own work

	const window = time.Minute
	var managerTicks, redisTicks int64
	b.ResetTimer()
	for range b.N {
		m0, r0 := cpuTicks(pid), cpuTicks(redisPID)
		time.Sleep(window)
		managerTicks += cpuTicks(pid) - m0
		redisTicks += cpuTicks(redisPID) - r0
	}
	b.StopTimer()
	seconds := window.Seconds() * float64(b.N)
	b.ReportMetric(procMiB(pid, "VmRSS"), "rss-MiB")
	b.ReportMetric(procMiB(pid, "VmHWM"), "peak-rss-MiB")
	b.ReportMetric(procMiB(pid, "RssAnon"), "rss-anon-MiB")
	b.ReportMetric(float64(managerTicks)/seconds, "cpu-%-of-a-core") // ticks of 10 ms per second = percent
	b.ReportMetric(float64(redisTicks)/seconds, "redis-cpu-%-of-a-core")
	b.ReportMetric(0, "ns/op")
}

// cpuTicks is a process's user and system time, in clock ticks (10 ms).
func cpuTicks(pid int) int64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
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
