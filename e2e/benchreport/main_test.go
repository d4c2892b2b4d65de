package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// go test prints a benchmark's name, then what the benchmark logged while it
// set up (an API server's start here), then the figures: each figure must
// land under its own benchmark, sub-benchmarks included.
func TestParseReadsFiguresPastInterleavedLogs(t *testing.T) {
	out := "goos: linux\n" +
		"BenchmarkSwitchoverManager-2   \t      30\t     62271 acked-writes\t         0 lost-writes\t        98.77 p50-ms\n" +
		"BenchmarkFence-2   \tI1126 04:59:40.629168    1513 serving.go:405] Generated self-signed cert\n" +
		"E1126 05:00:13.167004    2148 options.go:205] The manifest file is empty, ignoring.\n" +
		"      10\t        28.22 serve-again-p50-ms\t         9.126 stop-p50-ms\n" +
		"--- BENCH: BenchmarkFence-2\n    e2e_test.go:12: 3 clusters\n" +
		"BenchmarkFleet/managers=51-2 \t1\t  51.00 managers\t 700.5 all-reflected-ms\n" +
		"PASS\n"
	got := parse([]byte(out))
	want := []string{
		"BenchmarkSwitchoverManager-2\t30\t62271 acked-writes\t0 lost-writes\t98.77 p50-ms",
		"BenchmarkFence-2\t10\t28.22 serve-again-p50-ms\t9.126 stop-p50-ms",
		"BenchmarkFleet/managers=51-2\t1\t51 managers\t700.5 all-reflected-ms",
	}
	if len(got) != len(want) {
		t.Fatalf("parsed %d results, want %d: %v", len(got), len(want), got)
	}
	for i, r := range got {
		if r.line() != want[i] {
			t.Errorf("result %d:\n got %q\nwant %q", i, r.line(), want[i])
		}
	}
	if got[2].Name != "BenchmarkFleet/managers=51" || got[2].metrics["managers"] != 51 {
		t.Errorf("sub-benchmark parsed as %q %v", got[2].Name, got[2].metrics)
	}
}

// The report is written from the template and the kept results; a figure
// the template names and no run measured is an error, not an empty cell.
func TestRenderFailsOnAMissingFigure(t *testing.T) {
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "t.md")
	out := filepath.Join(dir, "out.md")
	rep := &report{Machine: "test", results: map[string][]result{"fence": parse([]byte("BenchmarkFence-2\t10\t9.126 stop-p50-ms\n"))}}
	os.WriteFile(tmpl, []byte(`stop {{f (m "fence" "Fence" "stop-p50-ms")}} ms on {{.Machine}}`), 0o644)
	if err := rep.render(tmpl, out); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "stop 9.13 ms on test" {
		t.Fatalf("rendered %q", b)
	}
	os.WriteFile(tmpl, []byte(`{{f (m "fence" "Fence" "serve-p50-ms")}}`), 0o644)
	if err := rep.render(tmpl, out); err == nil || !strings.Contains(err.Error(), "serve-p50-ms") {
		t.Fatalf("a missing figure gave %v", err)
	}
}
