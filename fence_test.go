package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIsFenced(t *testing.T) {
	for _, tc := range []struct {
		value  string
		fenced bool
		bad    bool
	}{
		{"", false, false},
		{`[]`, false, false},
		{`["cache-1"]`, true, false},
		{`["cache-2", "cache-1"]`, true, false},
		{`["*"]`, true, false},
		{`["cache-10"]`, false, false},
		{`cache-1`, false, true},
		{`{"cache-1": true}`, false, true},
		{`[1]`, false, true},
	} {
		ann := map[string]string{}
		if tc.value != "" {
			ann[fencedAnnotation] = tc.value
		}
		fenced, err := isFenced(ann, "cache-1")
		if fenced != tc.fenced || (err != nil) != tc.bad {
			t.Errorf("%q: fenced %v, error %v", tc.value, fenced, err)
		}
	}
}

// withFence adds the fence annotation to a cluster file made by clusterYAML.
func withFence(yaml, value string) string {
	return strings.Replace(yaml, "metadata:\n  name: cache\n", fmt.Sprintf("metadata:\n  name: cache\n  annotations:\n    %s: '%s'\n", fencedAnnotation, value), 1)
}

// Fencing stops redis-server at once and keeps it stopped, with its data;
// the manager stays alive and says so; unfencing brings it all back.
func TestFencingStopsRedisAndUnfencingRestoresIt(t *testing.T) {
	const fragment = "appendonly yes\nsave \"\""
	in := oneInstance(t, fragment)
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 1000)
	pid := in.redisPID()

	plain := clusterYAML("cache", "cache-0", fragment, in.password)
	start := time.Now()
	writeFile(t, in.clusterFile, withFence(plain, `["cache-0"]`))
	eventually(t, 5*time.Second, "redis-server to stop when fenced", func() bool {
		_, err := dialRedis(localAddr(in.port), []string{in.password}, 100*time.Millisecond)
		return err != nil
	})
	t.Logf("fenced: redis-server stopped %s after the file changed", time.Since(start).Round(time.Millisecond))
	eventually(t, 5*time.Second, "the status to say fenced", func() bool {
		st := in.status()
		return st.Fenced && st.Role == "none" && !st.Ready
	})
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 503, "/startupz": 200} {
		if code, body := in.get(path); code != want {
			t.Errorf("fenced %s: %d %s, want %d", path, code, body, want)
		}
	}
	// Still fenced a while later: nothing restarts it.
	time.Sleep(time.Second)
	if _, err := dialRedis(localAddr(in.port), []string{in.password}, 100*time.Millisecond); err == nil {
		t.Fatal("redis-server came back while fenced")
	}
	if st := in.status(); st.Restarts != 0 {
		t.Fatalf("a fence counted as a crash: restarts %d", st.Restarts)
	}

	// A malformed annotation changes nothing, and says why.
	writeFile(t, in.clusterFile, withFence(plain, `cache-0`))
	eventually(t, 5*time.Second, "lastError to explain the malformed annotation", func() bool {
		return strings.Contains(in.status().LastError, "must be a JSON array")
	})
	if st := in.status(); !st.Fenced {
		t.Fatal("a malformed annotation lifted the fence")
	}

	writeFile(t, in.clusterFile, plain)
	in.waitReady(20 * time.Second)
	if st := in.status(); st.Fenced || st.LastError != "" {
		t.Fatalf("after unfencing: %+v", st)
	}
	if in.redisPID() == pid {
		t.Fatal("redis-server was never stopped")
	}
	checkKeys(t, in.redis(), "k", 1000)
}

// A manager that starts while the annotation is malformed cannot know
// whether the pod is meant to be fenced: it starts nothing until it can.
func TestMalformedFenceAtStartStartsNothing(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	plain := clusterYAML("cache", "cache-0", "appendonly no", "")
	writeFile(t, cf, withFence(plain, `cache-0`))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	eventually(t, 5*time.Second, "the malformed annotation in lastError", func() bool {
		st := in.status()
		return st.Fenced && strings.Contains(st.LastError, "must be a JSON array")
	})
	if _, err := dialRedis(localAddr(in.port), []string{""}, 200*time.Millisecond); err == nil {
		t.Fatal("redis-server started under a malformed fence annotation")
	}
	writeFile(t, cf, withFence(plain, `[]`))
	in.waitReady(20 * time.Second)
}

// "*" fences every instance of the cluster.
func TestFenceAllStopsEveryInstance(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	plain := clusterYAML("cache", "cache-0", "appendonly no", "")
	writeFile(t, cf, plain)
	primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	replica := startInstance(t, instanceOpts{pod: "cache-1", clusterFile: cf})
	primary.waitReady(20 * time.Second)
	replica.waitReady(30 * time.Second)
	writeFile(t, cf, withFence(plain, `["*"]`))
	for _, in := range []*instance{primary, replica} {
		eventually(t, 5*time.Second, in.pod+" to be fenced", func() bool {
			code, _ := in.get("/readyz")
			return code == http.StatusServiceUnavailable && in.status().Fenced
		})
	}
}
