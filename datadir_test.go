package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Redis's data files may be named anything in the data directory but what
// the manager uses there. Names the manager used before, and names that
// merely look like its own, are Redis's, and a manager's start deletes
// nothing of them; a name the manager uses is refused, redis.conf and the
// data stay as they were.
func TestDataFilesNeverMeetTheManagersOwn(t *testing.T) {
	for _, name := range []string{".handoff.json", ".restore-x.rdb", ".confcheck-1"} {
		t.Run(name, func(t *testing.T) {
			in := oneInstance(t, "appendonly no\ndbfilename "+name)
			in.waitReady(20 * time.Second)
			writeKeys(t, in.redis(), "k", 50)
			if _, err := in.redis().Do("SAVE"); err != nil {
				t.Fatal(err)
			}
			if code := in.stop(); code != 0 {
				t.Fatalf("exit %d", code)
			}
			again := startInstance(t, instanceOpts{pod: in.pod, clusterFile: in.clusterFile, dataDir: in.dataDir, port: in.port, password: in.password})
			again.waitReady(20 * time.Second)
			checkKeys(t, again.redis(), "k", 50)
		})
	}

	in := oneInstance(t, "appendonly no")
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 50)
	confPath := filepath.Join(in.dataDir, confName)
	before, _ := os.ReadFile(confPath)
	pid := in.redisPID()
	for _, tc := range []struct{ frag, says string }{
		{"dbfilename redis.conf", `dbfilename "redis.conf" is a name the manager uses in the data directory`},
		{"appendonly yes\nappendfilename redis.conf", `line 2: appendfilename "redis.conf" is a name the manager uses`},
		{"appenddirname .redis-operator", `appenddirname ".redis-operator" is a name the manager uses`},
		{"appenddirname ..", `appenddirname ".." does not name a directory in the data directory`},
		{"dbfilename .redis.conf.tmp-1", `dbfilename ".redis.conf.tmp-1" is a name the manager uses`},
	} {
		frag := tc.frag
		writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", frag, "s3cret-pw"))
		eventually(t, 10*time.Second, frag+": lastError to say "+tc.says, func() bool {
			return strings.Contains(in.status().LastError, tc.says)
		})
		if after, _ := os.ReadFile(confPath); string(after) != string(before) {
			t.Fatalf("%s: redis.conf changed:\n%s", frag, after)
		}
		for _, d := range []string{"dbfilename", "appendfilename", "appenddirname"} {
			if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", d)); strings.Contains(got[1], "redis") || got[1] == ".." {
				t.Fatalf("%s: running %s is %q", frag, d, got[1])
			}
		}
	}
	if in.redisPID() != pid {
		t.Fatal("redis-server was restarted for a refused fragment")
	}
	checkKeys(t, in.redis(), "k", 50)
}
