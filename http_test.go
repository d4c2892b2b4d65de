package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// fillRedis writes n keys of size bytes through a pipeline of MSETs, the way
// a bulk loader would, so that the RDB takes a while to load.
func fillRedis(t *testing.T, in *instance, n, size int) {
	t.Helper()
	c := in.redis()
	value := strings.Repeat("v", size)
	const perMSET, perFlush = 100, 100
	sent := 0
	for i := 0; i < n; {
		for range perFlush {
			if i >= n {
				break
			}
			args := make([]any, 0, 2*perMSET)
			for j := i; j < min(i+perMSET, n); j++ {
				args = append(args, fmt.Sprintf("key:%09d", j), value)
			}
			i += len(args) / 2
			c.Send("MSET", args...)
			sent++
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		for ; sent > 0; sent-- {
			if _, err := c.Receive(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// While a large dataset loads, /startupz says how far it got, /readyz is
// 503, and /healthz 200 (the kubelet must not kill a loading Redis); then
// all three turn 200.
func TestProbesFollowLoading(t *testing.T) {
	in := oneInstance(t, "appendonly no\nsave 3600 1")
	in.waitReady(20 * time.Second)
	const keys = 2_500_000
	start := time.Now()
	fillRedis(t, in, keys, 100)
	t.Logf("wrote %d keys in %s", keys, time.Since(start).Round(time.Millisecond))
	if code := in.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	in2 := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: in.clusterFile, dataDir: in.dataDir, password: in.password})
	var (
		progress          []float64
		notReadyOnLoading bool
		unhealthy         []string
		startedAt         time.Time
	)
	deadline := time.Now().Add(60 * time.Second)
	for startedAt.IsZero() && time.Now().Before(deadline) {
		code, body := in2.get("/startupz")
		var sz struct {
			Loading       bool    `json:"loading"`
			LoadedPercent float64 `json:"loadedPercent"`
		}
		json.Unmarshal(body, &sz)
		switch {
		case code == 200:
			startedAt = time.Now()
		case code == 503 && sz.Loading:
			progress = append(progress, sz.LoadedPercent)
			if rc, rb := in2.get("/readyz"); rc == 503 && strings.Contains(string(rb), "loading") {
				notReadyOnLoading = true
			}
			if hc, hb := in2.get("/healthz"); hc != 200 {
				unhealthy = append(unhealthy, string(hb))
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if startedAt.IsZero() {
		t.Fatal("/startupz never turned 200")
	}
	steps := slices.Compact(slices.Clone(progress))
	t.Logf("loading progress seen by /startupz in %d polls: %v", len(progress), steps)
	if len(steps) < 2 || !slices.IsSorted(steps) {
		t.Fatalf("/startupz did not report a load moving forward: %v", steps)
	}
	if steps[0] < 0 || steps[len(steps)-1] >= 100 {
		t.Errorf("loadedPercent %v is not a percentage of a load under way", steps)
	}
	if !notReadyOnLoading {
		t.Error("/readyz did not say the instance was loading")
	}
	if len(unhealthy) > 0 {
		t.Errorf("/healthz failed while loading: %v", unhealthy)
	}
	in2.waitReady(10 * time.Second)
	if n, err := in2.redis().Do("DBSIZE"); err != nil || n.(int64) != keys {
		t.Fatalf("DBSIZE %v, %v; want %d", n, err, keys)
	}
}

// The probes and the status never reveal the password.
func TestEndpointsCarryNoSecret(t *testing.T) {
	in := oneInstance(t, "appendonly no")
	in.waitReady(20 * time.Second)
	for _, path := range []string{"/healthz", "/readyz", "/startupz", "/v1/status"} {
		code, body := in.get(path)
		if code != 200 {
			t.Errorf("%s: %d %s", path, code, body)
		}
		if strings.Contains(string(body), in.password) {
			t.Errorf("%s shows the password", path)
		}
	}
	if code, _ := in.get("/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	// With no operator token configured, operator commands are closed.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/v1/restart", in.httpPort), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /v1/restart without a configured token: %d, want 403", resp.StatusCode)
	}
	st := in.status()
	if st.Role != "master" || st.RedisVersion == "" || st.ManagerVersion != "test" || len(st.ExecutableHash) != 64 || st.ConfigHash == "" || st.Address != fmt.Sprintf("127.0.0.1:%d", in.port) {
		t.Errorf("status %+v", st)
	}
}
