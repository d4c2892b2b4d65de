package main

import (
	"bytes"
	crand "crypto/rand"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

func TestParseFragmentReadsLikeRedis(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []directive
	}{
		{"comments and blanks", "# a comment\n\n   \nmaxmemory 100mb\n  # indented comment\n", []directive{{name: "maxmemory", args: []string{"100mb"}, line: 4}}},
		{"names are case-insensitive", "MaxMemory-Policy allkeys-lru", []directive{{name: "maxmemory-policy", args: []string{"allkeys-lru"}, line: 1}}},
		{"repeated directives all stay", "save 900 1\nsave 300 10\n", []directive{{name: "save", args: []string{"900", "1"}, line: 1}, {name: "save", args: []string{"300", "10"}, line: 2}}},
		{"empty quoted argument", `save ""`, []directive{{name: "save", args: []string{""}, line: 1}}},
		{"double quotes and escapes", `notify-keyspace-events "K\x45\"x\n"`, []directive{{name: "notify-keyspace-events", args: []string{"KE\"x\n"}, line: 1}}},
		{"single quotes take only \\'", `client-output-buffer-limit 'a\'b\n' c`, []directive{{name: "client-output-buffer-limit", args: []string{`a'b\n`, "c"}, line: 1}}},
		{"quotes inside a word join it", `dbfilename dump"-x".rdb`, nil},
		{"CRLF and tabs", "appendonly\tyes\r\n", []directive{{name: "appendonly", args: []string{"yes"}, line: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseFragment(tc.text)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("accepted %q as %v; Redis refuses a closing quote not followed by a space", tc.text, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestParseFragmentRefusesWhatTheManagerOwns(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"maxmemory 1gb\nport 1234", `line 2: "port" is set by the manager`},
		{"REPLICAOF 10.0.0.1 6379", `line 1: "replicaof" is set by the manager`},
		{"slaveof 10.0.0.1 6379", `"slaveof" is set by the manager`},
		{"requirepass hunter2", `"requirepass" is set by the manager`},
		{"include /etc/redis/other.conf", `"include" is set by the manager`},
		{"daemonize yes", `"daemonize" is set by the manager`},
		{"rename-command SHUTDOWN \"\"", "renaming SHUTDOWN is refused: it is one of the manager's commands"},
		{"rename-command acl \"\"", "renaming ACL is refused"},
		// Replication and backups need them: a replica sends REPLCONF and
		// PSYNC, and so does a backup.
		{"rename-command REPLCONF \"\"", "renaming REPLCONF is refused: it is one of replication's and backups' commands"},
		{"rename-command psync psync2", "renaming PSYNC is refused"},
		// With it, a client could CONFIG SET dir and dbfilename.
		{"enable-protected-configs yes", `"enable-protected-configs" is set by the manager`},
		// Redis's data files may not take a name the manager uses in the
		// data directory, nor leave it.
		{"dbfilename .handoff.json\ndbfilename redis.conf", `line 2: dbfilename "redis.conf" is a name the manager uses`},
		{"dbfilename .redis-operator", `dbfilename ".redis-operator" is a name the manager uses`},
		{"appendfilename .redis.conf.tmp-1", `appendfilename ".redis.conf.tmp-1" is a name the manager uses`},
		{"appenddirname .redis-operator-x", `appenddirname ".redis-operator-x" is a name the manager uses`},
		{"appenddirname ..", `appenddirname ".." does not name a directory in the data directory`},
		{"dbfilename ../dump.rdb", `dbfilename "../dump.rdb" is a path`},
		{"dbfilename \"\"", `dbfilename "" does not name a file`},
		{"aclfile /etc/redis/users.acl", `"aclfile" is set by the manager`},
		{"user redis-operator on >x +@all", `"redis-operator" is the manager's own user`},
		{"tls-port 6380", `"tls-port" is set by the manager and may not appear in the fragment: spec.tls serves TLS on --redis-port`},
		{"tls-cert-file /etc/tls/tls.crt", `"tls-cert-file" is set by the manager`},
		{"tls-key-file-pass hunter2", `"tls-key-file-pass" is set by the manager`},
		{"tls-replication yes", `"tls-replication" is set by the manager`},
		{"tls-auth-clients no", `"tls-auth-clients" is set by the manager`},
		{"user default on >hunter2 ~* +@all", "line 1: the default user is declared in spec.users"},
		{"maxmemory \"100mb", "line 1: unbalanced double quotes"},
		{"maxmemory '100mb", "line 1: unbalanced single quotes"},
		{"a\x00b", "NUL byte"},
	} {
		_, err := parseFragment(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one saying %q", tc.text, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error repeats the password: %v", tc.text, err)
		}
	}
	// SYNC only replicas before Redis 2.8 send.
	if _, err := parseFragment("rename-command FLUSHALL \"\"\nrename-command KEYS \"\"\nrename-command SYNC \"\""); err != nil {
		t.Errorf("renaming commands the manager does not use was refused: %v", err)
	}
	// Names the manager once used, or that only look like its own, are
	// Redis's to take.
	if _, err := parseFragment("dbfilename .handoff.json\nappendfilename .restore-1\nappenddirname redis.confs"); err != nil {
		t.Errorf("data file names the manager does not use were refused: %v", err)
	}
}

func TestRenderConfig(t *testing.T) {
	frag, err := parseFragment("maxmemory 100mb\nsave \"\"\nnotify-keyspace-events \"Ex y\"")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		pod    podConfig
		want   []string
		absent []string
	}{
		{"primary without auth", podConfig{dataDir: "/data", port: 6379, announceHost: "10.0.0.5"},
			[]string{"maxmemory 100mb\n", "save \"\"\n", "notify-keyspace-events \"Ex y\"\n", "port 6379\n", "dir /data\n", "daemonize no\n", "logfile \"\"\n", "replica-announce-ip 10.0.0.5\n", "replica-announce-port 6379\n", "protected-mode no\n"},
			[]string{"replicaof", "requirepass", "masterauth"}},
		{"replica with auth", podConfig{dataDir: "/var/lib/redis data", port: 7000, announceHost: "fd00::5", replicaOf: "10.0.0.4:6379", password: "pa ss\"word"},
			[]string{"dir \"/var/lib/redis data\"\n", "replicaof 10.0.0.4 6379\n", "requirepass \"pa ss\\\"word\"\n", "masterauth \"pa ss\\\"word\"\n", "port 7000\n"},
			nil},
		{"replica of an IPv6 primary", podConfig{dataDir: "/data", port: 6379, announceHost: "fd00::5", replicaOf: "[fd00::4]:6379"},
			[]string{"replicaof fd00::4 6379\n"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := renderConfig(frag, tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(conf, w) {
					t.Errorf("missing %q in:\n%s", w, conf)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(conf, a) {
					t.Errorf("unexpected %q in:\n%s", a, conf)
				}
			}
			// What we render must read back as what we meant.
			ds, err := parseConf(conf)
			if err != nil {
				t.Fatalf("rendered config does not parse: %v", err)
			}
			if ds[0].name != "maxmemory" || ds[3].name != "port" {
				t.Fatalf("want the fragment first, then the owned directives: %v", ds)
			}
		})
	}
	if _, err := renderConfig(frag, podConfig{dataDir: "/d", port: 1, announceHost: "h", replicaOf: "no-port"}); err == nil {
		t.Error("a primary address without a port was rendered")
	}
}

// configHash names what runs: the same parameters give the same hash in
// any order, a changed value another.
func TestConfigHashFollowsTheParameters(t *testing.T) {
	hash := func(text string) string {
		frag, err := parseFragment(text)
		if err != nil {
			t.Fatal(err)
		}
		return configHash(valuesOf(frag))
	}
	a := hash("maxmemory 1mb\nsave 900 1\nsave 300 10")
	if b := hash("save 900 1\nmaxmemory  1mb\nsave 300 10"); a != b {
		t.Fatal("configHash changes with the order of different parameters")
	}
	for _, other := range []string{"maxmemory 2mb\nsave 900 1\nsave 300 10", "maxmemory 1mb\nsave 300 10\nsave 900 1", "maxmemory 1mb"} {
		if hash(other) == a {
			t.Fatalf("configHash does not change for %q", other)
		}
	}
}

func TestDiffConfigSplitsLiveFromRestart(t *testing.T) {
	values := func(text string) confValues {
		frag, err := parseFragment(text)
		if err != nil {
			t.Fatal(err)
		}
		return valuesOf(frag)
	}
	running := values("maxmemory 100mb\nsave 900 1\nsave 300 10\nappendonly yes\nrename-command KEYS \"\"\nhz 10\nclient-output-buffer-limit normal 0 0 0")
	wanted := values("maxmemory 200mb\nsave 900 1\nappendonly yes\nio-threads 4\nrename-command KEYS KEYS2\nclient-output-buffer-limit normal 0 0 0\nclient-output-buffer-limit pubsub 32mb 8mb 60")
	d := diffConfig(running, wanted, map[string]bool{"io-threads": true})
	wantSet := []any{"client-output-buffer-limit", "normal 0 0 0 pubsub 32mb 8mb 60", "maxmemory", "200mb", "save", "900 1"}
	if !reflect.DeepEqual(d.set, wantSet) {
		t.Errorf("set = %q, want %q", d.set, wantSet)
	}
	// hz was dropped: its default is unknown to a running server.
	if want := []string{"hz", "io-threads", "rename-command"}; !reflect.DeepEqual(d.restart, want) {
		t.Errorf("restart = %v, want %v", d.restart, want)
	}
	if d := diffConfig(running, running, nil); len(d.set) != 0 || d.restart == nil || len(d.restart) != 0 {
		t.Errorf("the same configuration differs: %+v", d)
	}
	// Values as Redis reads the file: the last line wins, save "" clears
	// the save lines before it, and a dropped client class needs a restart.
	d = diffConfig(running, values("maxmemory 100mb\nmaxmemory 300mb\nsave 900 1\nsave \"\"\nsave 60 5\nappendonly yes\nrename-command KEYS \"\"\nhz 10\nclient-output-buffer-limit replica 1mb 1mb 0"), nil)
	if want := []any{"maxmemory", "300mb", "save", "60 5"}; !reflect.DeepEqual(d.set, want) {
		t.Errorf("set = %q, want %q", d.set, want)
	}
	if want := []string{"client-output-buffer-limit"}; !reflect.DeepEqual(d.restart, want) {
		t.Errorf("restart = %v, want %v", d.restart, want)
	}
	if d = diffConfig(running, values("save 900 1\nsave \"\"\nmaxmemory 100mb\nappendonly yes\nrename-command KEYS \"\"\nhz 10\nclient-output-buffer-limit normal 0 0 0"), nil); !reflect.DeepEqual(d.set, []any{"save", ""}) {
		t.Errorf("save \"\" last: set = %q", d.set)
	}
}

// plainRedis starts a redis-server of its own, for tests of what the manager
// sends it.
func plainRedis(t *testing.T, args ...string) redis.Conn {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(requireRedis(t), append([]string{"--port", fmt.Sprint(port), "--dir", t.TempDir(), "--save", ""}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var c redis.Conn
	eventually(t, 5*time.Second, "redis-server to answer", func() bool {
		var err error
		c, err = dialRedisAs("", localAddr(port), []string{""}, nil, time.Second)
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// Redis names what it cannot change at run time; that is learnt and the
// rest applied in one go. A value it refuses refuses the whole change.
func TestConfigSetLearnsWhatNeedsARestart(t *testing.T) {
	c := plainRedis(t)
	restartOnly := map[string]bool{}
	d := configDiff{set: []any{"maxmemory", "5mb", "io-threads", "2", "hz", "20"}, restart: []string{}}
	if err := configSet(c, &d, restartOnly); err != nil {
		t.Fatal(err)
	}
	if !restartOnly["io-threads"] || !reflect.DeepEqual(d.restart, []string{"io-threads"}) {
		t.Fatalf("io-threads not learnt as restart-only: %v %v", restartOnly, d.restart)
	}
	for name, want := range map[string]string{"maxmemory": "5242880", "hz": "20", "io-threads": "1"} {
		if got, _ := redis.Strings(c.Do("CONFIG", "GET", name)); len(got) != 2 || got[1] != want {
			t.Errorf("%s = %v, want %s", name, got, want)
		}
	}
	d = configDiff{set: []any{"hz", "30", "maxmemory", "banana"}}
	err := configSet(c, &d, restartOnly)
	if err == nil || !strings.Contains(err.Error(), "maxmemory") {
		t.Fatalf("maxmemory banana: %v", err)
	}
	if got, _ := redis.Strings(c.Do("CONFIG", "GET", "hz")); got[1] != "20" {
		t.Fatalf("a refused CONFIG SET changed hz to %s", got[1])
	}
}

// testStart starts a child the way the manager's reaper does, for code that
// takes a startFunc outside the manager.
func testStart(sp func() (*os.Process, error)) (*os.Process, <-chan syscall.WaitStatus, error) {
	p, err := sp()
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	go func() {
		st, _ := p.Wait()
		ch <- st.Sys().(syscall.WaitStatus)
	}()
	return p, ch, nil
}

// redis-server is the judge of a fragment: what it would refuse at start
// is refused, with the fragment's own line number and Redis's reason.
func TestCheckFragmentAsksRedis(t *testing.T) {
	redisServer := requireRedis(t)
	dir := t.TempDir()
	notAModule := filepath.Join(t.TempDir(), "module.so") // it exists, and is executable, but no module
	os.WriteFile(notAModule, []byte("#!/bin/sh\n"), 0o755)
	for _, c := range []struct{ text, want string }{
		{"maxmemory 10mb\nio-threads 4\nsave \"\"\nrename-command KEYS \"\"\nunixsocket " + filepath.Join(dir, "s.sock"), ""},
		{"# a comment\n\nmaxmemory banana", "line 3: redis-server refuses 'maxmemory banana': argument must be a memory value"},
		{"maxmemory 1mb\nfoo bar", "line 2: redis-server refuses 'foo bar': Bad directive or wrong number of arguments"},
		{"io-threads lots", "line 1: redis-server refuses 'io-threads lots'"},
		{"rename-command NOSUCHCOMMAND X", "line 1: redis-server refuses"},
		// What Redis reads only after its configuration: it must start.
		{"loadmodule /no/such/module.so", "redis-server cannot start with the fragment: Module /no/such/module.so failed to load"},
		{"loadmodule " + notAModule, "redis-server cannot start with the fragment: Module " + notAModule + " failed to load"},
		{"user alice on >hunter2 ~* +nosuchcommand", "redis-server cannot start with the fragment: Error loading ACL rule '+nosuchcommand' for the user named 'alice'"},
		{"user alice on >hunter2 ~* #hunter2hunter2", "redis-server refuses user: "},
	} {
		frag, err := parseFragment(c.text)
		if err != nil {
			t.Fatal(err)
		}
		err = checkFragment(redisServer, dir, frag, testStart)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q refused: %v", c.text, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: %v, want %q", c.text, err, c.want)
		case err != nil && strings.Contains(err.Error(), "hunter2"):
			t.Errorf("%q: the error quotes the password", c.text)
		}
	}
	if left, _ := os.ReadDir(privateDir(dir)); len(left) != 0 {
		t.Errorf("the check left %d files behind", len(left))
	}
}

func TestPreviousFragmentIsTheLastGoodOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "redis.conf")
	if _, ok := previousFragment(path); ok {
		t.Fatal("found a fragment with no file")
	}
	frag, _ := parseFragment("maxmemory 5mb\nsave 60 1")
	conf, _ := renderConfig(frag, podConfig{dataDir: "/d", port: 6379, announceHost: "h", replicaOf: "p:1", password: "pw"})
	writeFile(t, path, conf)
	got, ok := previousFragment(path)
	if !ok || len(got) != 2 || got[0].name != "maxmemory" || got[1].name != "save" {
		t.Fatalf("previousFragment = %v, %v", got, ok)
	}
}

func TestWriteFileAtomicIsPrivateAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "redis.conf")
	for _, content := range []string{"one\n", "two\n"} {
		if err := writeFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		if string(b) != content {
			t.Fatalf("content %q, want %q", b, content)
		}
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only redis.conf", len(entries))
	}
	if err := writeFileAtomic(filepath.Join(dir, "no", "such", "dir"), []byte("x"), 0o600); err == nil {
		t.Fatal("writing into a missing directory succeeded")
	}
}

// Redis itself reads what we render the way we meant it: the quoted,
// escaped and repeated arguments arrive intact in CONFIG GET.
func TestRedisReadsTheRenderedConfig(t *testing.T) {
	in := oneInstance(t, "save 900 1\nsave 300 10\nnotify-keyspace-events \"Ex\"\nmaxmemory-policy 'allkeys-lru'\nrename-command FLUSHALL \"\"")
	in.waitReady(20 * time.Second)
	c := in.redis()
	for param, want := range map[string]string{
		"save":                   "900 1 300 10",
		"notify-keyspace-events": "xE",
		"maxmemory-policy":       "allkeys-lru",
		"dir":                    in.dataDir,
		"appendonly":             "no",
	} {
		got, err := redis.Strings(c.Do("CONFIG", "GET", param))
		if err != nil || len(got) != 2 || got[1] != want {
			t.Errorf("CONFIG GET %s = %v, %v; want %q", param, got, err, want)
		}
	}
	if _, err := c.Do("FLUSHALL"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("FLUSHALL was not renamed away: %v", err)
	}
	fi, err := os.Stat(filepath.Join(in.dataDir, "redis.conf"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("redis.conf: %v, mode %v; want 0600 (it holds the password)", err, fi.Mode().Perm())
	}
}

// Whatever the fragment, a parse that succeeds renders to a file that parses
// back to the same directives: what is checked is what Redis reads.
func FuzzParseFragment(f *testing.F) {
	for _, seed := range []string{
		"maxmemory 100mb\nsave 900 1\n",
		`notify-keyspace-events "K\x45\"x\n"`,
		`a 'b\'c' "d e" f"g h"`,
		"# comment\r\n\t save \"\"\n",
		"\"#name\" x",
		"port 6379",
		`x "\xZZ" '\'`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ds, err := parseFragment(text)
		if err != nil {
			return
		}
		conf, err := renderConfig(ds, podConfig{dataDir: "/data", port: 6379, announceHost: "10.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		frag, _, _ := strings.Cut(conf, ownedMarker)
		again, err := parseFragment(frag)
		if err != nil {
			t.Fatalf("rendered fragment does not parse: %v\n%q", err, frag)
		}
		if len(again) != len(ds) {
			t.Fatalf("%d directives became %d:\n%q\n%q", len(ds), len(again), text, frag)
		}
		for i := range ds {
			if again[i].name != ds[i].name || !reflect.DeepEqual(append([]string{}, again[i].args...), append([]string{}, ds[i].args...)) {
				t.Fatalf("directive %d: %q %q became %q %q", i, ds[i].name, ds[i].args, again[i].name, again[i].args)
			}
		}
	})
}

// A change of parameters Redis takes live is judged by the running
// redis-server's atomic CONFIG SET, without the ~20 ms of a redis-server
// run; anything else still has redis-server read the fragment first, and a
// value CONFIG SET refuses is refused with the fragment's line all the same.
func TestLiveChangeJudgedByTheRunningServer(t *testing.T) {
	in := oneInstance(t, "maxmemory 100mb")
	in.waitReady(20 * time.Second)
	pid := in.redisPID()
	applied := func(n int) map[string]any {
		var recs []map[string]any
		for _, r := range in.logRecords() {
			if r["msg"] == "applied configuration live" {
				recs = append(recs, r)
			}
		}
		if len(recs) < n {
			return nil
		}
		return recs[n-1]
	}
	change := func(fragment string, n int) map[string]any {
		t.Helper()
		writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", fragment, "s3cret-pw"))
		var rec map[string]any
		eventually(t, 10*time.Second, "the change to apply live", func() bool { rec = applied(n); return rec != nil })
		return rec
	}
	if rec := change("maxmemory 150mb\nhz 20", 1); rec["judgedBy"] != "CONFIG SET" || fmt.Sprint(rec["parameters"]) != "[hz maxmemory]" {
		t.Errorf("a change of live parameters was applied as %v", rec)
	}
	// io-threads only a restart applies: redis-server reads the fragment.
	if rec := change("maxmemory 160mb\nhz 20\nio-threads 2", 2); rec["judgedBy"] != nil || fmt.Sprint(rec["pendingRestart"]) != "[io-threads]" {
		t.Errorf("a change with a restart-only parameter was applied as %v", rec)
	}
	writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", "maxmemory banana\nhz 20\nio-threads 2", "s3cret-pw"))
	eventually(t, 10*time.Second, "the refusal to name the line", func() bool {
		return strings.Contains(in.status().LastError, "line 1: redis-server refuses 'maxmemory banana'")
	})
	for name, want := range map[string]string{"maxmemory": fmt.Sprint(160 << 20), "hz": "20"} {
		if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", name)); len(got) != 2 || got[1] != want {
			t.Errorf("%s = %v after the refusal, want %s", name, got, want)
		}
	}
	if in.redisPID() != pid {
		t.Error("redis-server restarted")
	}
}

// A bad fragment never reaches redis-server: whether the manager or Redis
// refuses it, the file and the running server stay as they were, lastError
// says what and why, and fixing it clears it.
func TestBadFragmentKeepsTheLastGoodConfig(t *testing.T) {
	in := oneInstance(t, "appendonly no\nmaxmemory 100mb")
	in.waitReady(20 * time.Second)
	confPath := filepath.Join(in.dataDir, "redis.conf")
	before, _ := os.ReadFile(confPath)
	pid := in.redisPID()

	for _, bad := range []struct{ fragment, want string }{
		{"appendonly no\nmaxmemory 100mb\nport 1234", `line 3: "port" is set by the manager`},
		{"appendonly no\nmaxmemory \"100mb", "unbalanced double quotes"},
		{"appendonly no\nmaxmemory 100mb\nmaxmemroy 200mb", "line 3: redis-server refuses 'maxmemroy 200mb': Bad directive"},
		{"appendonly no\nmaxmemory banana", "line 2: redis-server refuses 'maxmemory banana': argument must be a memory value"},
		// Only a restart would read it: a bad value must not wait for one.
		{"appendonly no\nmaxmemory 150mb\nio-threads banana", "line 3: redis-server refuses 'io-threads banana'"},
		// Replication and backups need it.
		{"appendonly no\nmaxmemory 150mb\nrename-command REPLCONF \"\"", "line 3: renaming REPLCONF is refused"},
	} {
		writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", bad.fragment, "s3cret-pw"))
		eventually(t, 10*time.Second, "lastError to say "+bad.want, func() bool {
			return strings.Contains(in.status().LastError, bad.want)
		})
		if after, _ := os.ReadFile(confPath); !bytes.Equal(before, after) {
			t.Fatalf("redis.conf changed after a refused fragment:\n%s", after)
		}
		if in.redisPID() != pid {
			t.Fatal("redis-server was restarted for a refused fragment")
		}
		if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "maxmemory")); got[1] != fmt.Sprint(100<<20) {
			t.Fatalf("running maxmemory %v after a refused fragment", got)
		}
	}
	if !in.hasLog("refusing the new redis.conf fragment; the last good configuration stays") {
		t.Error("the refusal was not logged")
	}

	writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", "appendonly no\nmaxmemory 200mb", "s3cret-pw"))
	eventually(t, 10*time.Second, "lastError to clear", func() bool { return in.status().LastError == "" })
	if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "maxmemory")); got[1] != fmt.Sprint(200<<20) {
		t.Fatalf("maxmemory %v after the fix", got)
	}

	// A file that no longer parses is refused the same way.
	writeFile(t, in.clusterFile, "kind: RedisCluster\nmetadata: [\n")
	eventually(t, 10*time.Second, "lastError to name the cluster file", func() bool {
		return strings.Contains(in.status().LastError, "cluster file")
	})
	if st := in.status(); !st.Ready || in.redisPID() != pid {
		t.Fatalf("a broken cluster file disturbed a running instance: %+v", st)
	}
}

// A fragment that an earlier manager accepted, and that rules grown
// stricter since refuse, stays in force: the refusal is in lastError, and
// Redis starts and runs on it, as it did, until the fragment changes.
func TestStricterRulesKeepTheConfigurationInForce(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o750)
	const old = "appendonly no\nrename-command PSYNC \"\""
	os.WriteFile(filepath.Join(data, confName), []byte(old+"\n"+ownedMarker+"port 1\n"), 0o600)
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", old, "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: data})
	in.waitReady(20 * time.Second)
	if st := in.status(); !strings.Contains(st.LastError, "renaming PSYNC is refused") {
		t.Fatalf("lastError %q", st.LastError)
	}
	if info, _ := redis.Values(in.redis().Do("COMMAND", "INFO", "psync")); len(info) != 1 || info[0] != nil {
		t.Fatalf("PSYNC is there: the configuration in force was not the one Redis ran")
	}
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	eventually(t, 10*time.Second, "the new fragment to be taken, its rename waiting for a restart", func() bool {
		st := in.status()
		return st.LastError == "" && reflect.DeepEqual(st.PendingRestart, []string{"rename-command"})
	})
}

// restart asks for POST /v1/restart with token ("" for none) and returns
// the answer; a graceful stop and a start may take a while.
func (in *instance) restart(token string) (int, string) {
	in.t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/v1/restart", in.httpPort), nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		in.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// What Redis can change at run time is changed there, without a restart;
// the rest waits in pendingRestart for POST /v1/restart, which only the
// operator's token may call, and which keeps the data.
func TestLiveConfigAndRestart(t *testing.T) {
	dir := t.TempDir()
	cf, tokenFile := filepath.Join(dir, "cluster.yaml"), filepath.Join(dir, "token")
	writeFile(t, tokenFile, "op-token-1\n")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "maxmemory 100mb", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw",
		extraArgs: []string{"--operator-token-file", tokenFile}})
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 1000)
	pid, hash := in.redisPID(), in.status().ConfigHash
	confPath := filepath.Join(in.dataDir, "redis.conf")

	writeFile(t, cf, clusterYAML("cache", "cache-0", "maxmemory 200mb", "s3cret-pw"))
	eventually(t, 10*time.Second, "maxmemory to apply live", func() bool {
		got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "maxmemory"))
		return got[1] == fmt.Sprint(200<<20)
	})
	eventually(t, 5*time.Second, "the status to show the new configuration", func() bool {
		st := in.status()
		return st.ConfigHash != hash && st.ConfigHash != "" && len(st.PendingRestart) == 0 && st.LastError == ""
	})
	if in.redisPID() != pid {
		t.Fatal("redis-server was restarted for a live change")
	}
	if b, _ := os.ReadFile(confPath); !bytes.Contains(b, []byte("\nmaxmemory 200mb\n")) {
		t.Fatalf("redis.conf does not hold the live change:\n%s", b)
	}

	writeFile(t, cf, clusterYAML("cache", "cache-0", "maxmemory 200mb\nio-threads 2", "s3cret-pw"))
	eventually(t, 10*time.Second, "io-threads to be pending", func() bool {
		return reflect.DeepEqual(in.status().PendingRestart, []string{"io-threads"})
	})
	if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "io-threads")); got[1] != "1" || in.redisPID() != pid {
		t.Fatalf("io-threads %v, pid %d (was %d): it must wait for a restart", got, in.redisPID(), pid)
	}

	post := in.restart
	for _, token := range []string{"", "op-token-2", "op-token-1x"} {
		if code, body := post(token); code != http.StatusUnauthorized {
			t.Fatalf("restart with token %q: %d %s", token, code, body)
		}
	}
	if in.redisPID() != pid {
		t.Fatal("an unauthorised restart restarted redis-server")
	}
	if code, body := post("op-token-1"); code != http.StatusOK {
		t.Fatalf("restart: %d %s", code, body)
	}
	in.waitReady(20 * time.Second)
	if in.redisPID() == pid {
		t.Fatal("redis-server has the same PID after a restart")
	}
	if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "io-threads")); got[1] != "2" {
		t.Fatalf("io-threads %v after the restart", got)
	}
	checkKeys(t, in.redis(), "k", 1000)
	eventually(t, 5*time.Second, "nothing to be pending", func() bool {
		st := in.status()
		return len(st.PendingRestart) == 0 && st.Restarts == 0
	})

	// The token is read at each request: a rotated one counts at once.
	writeFile(t, tokenFile, "op-token-2")
	if code, _ := post("op-token-1"); code != http.StatusUnauthorized {
		t.Fatal("the old operator token still works")
	}
	// A primary that keeps nothing on disk would come back empty: refused,
	// whatever its configuration was at start.
	writeFile(t, cf, clusterYAML("cache", "cache-0", "maxmemory 200mb\nio-threads 2\nsave \"\"", "s3cret-pw"))
	eventually(t, 10*time.Second, "save to apply live", func() bool {
		got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "save"))
		return got[1] == ""
	})
	pid = in.redisPID()
	if code, body := post("op-token-2"); code != http.StatusConflict || !strings.Contains(body, "would come back empty") {
		t.Fatalf("restart of a primary without persistence: %d %s", code, body)
	}
	if in.redisPID() != pid {
		t.Fatal("a refused restart restarted redis-server")
	}
	// Nor would one that is to load its data from other files.
	writeFile(t, cf, clusterYAML("cache", "cache-0", "maxmemory 200mb\nio-threads 2\ndbfilename other.rdb", "s3cret-pw"))
	eventually(t, 10*time.Second, "dbfilename to be pending", func() bool {
		return reflect.DeepEqual(in.status().PendingRestart, []string{"dbfilename", "save"})
	})
	if code, body := post("op-token-2"); code != http.StatusConflict || !strings.Contains(body, "dbfilename would have it load other files") {
		t.Fatalf("restart of a primary onto other data files: %d %s", code, body)
	}
	if in.redisPID() != pid {
		t.Fatal("a refused restart restarted redis-server")
	}
}

// A password rotation on a primary with two replicas under load: the old
// password works until the window ends, the new one from the moment the
// Secret changes; no replication link drops and no full resync happens;
// afterwards only the new one works, replication included; and neither
// password shows in a log, a status or an HTTP body.
func TestPasswordRotationKeepsLinksUp(t *testing.T) {
	const oldPW, newPW = "s3cret-pw", "n3w-secret-pw"
	cf, nodes := cluster3(t, "appendonly no", "--password-rotation-window", "2s")
	primary := nodes[0]
	fullSyncs := func() int64 {
		text, _ := redis.String(primary.redis().Do("INFO", "stats"))
		return parseInfo(text).int("sync_full")
	}
	syncsBefore := fullSyncs()

	// Links are watched on connections made before the rotation.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var linkDown atomic.Value
	for _, n := range nodes[1:] {
		c := n.redis()
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				info, err := infoReplication(c)
				if err != nil || info["master_link_status"] != "up" {
					linkDown.Store(fmt.Sprintf("%s: link %q, %v", n.pod, info["master_link_status"], err))
				}
			}
		})
	}
	// A client that connects afresh all the time, and moves to the new
	// password a second into the window.
	var switchAt atomic.Int64
	var authFailures, writes atomic.Int64
	var firstFailure atomic.Value
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			pw := oldPW
			if at := switchAt.Load(); at != 0 && time.Now().UnixNano() >= at {
				pw = newPW
			}
			n := nodes[i%3]
			c, err := dialRedisAs("", localAddr(n.port), []string{pw}, nil, time.Second)
			if err != nil {
				authFailures.Add(1)
				firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s with the %s password: %v", n.pod, map[bool]string{true: "new", false: "old"}[pw == newPW], err))
				continue
			}
			if n == primary {
				if _, err := c.Do("INCR", "counter"); err == nil {
					writes.Add(1)
				}
			}
			c.Close()
		}
	})

	time.Sleep(300 * time.Millisecond)
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", newPW))
	switchAt.Store(time.Now().Add(time.Second).UnixNano())
	awaitPasswordRefused(t, nodes, oldPW, 20*time.Second)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := authFailures.Load(); n > 0 {
		t.Errorf("%d connections were refused; the first: %v", n, firstFailure.Load())
	}
	if writes.Load() == 0 {
		t.Error("the client wrote nothing")
	}
	if v := linkDown.Load(); v != nil {
		t.Errorf("a replication link went down: %v", v)
	}
	for _, n := range nodes {
		n.password = newPW
	}
	if got := fullSyncs(); got != syncsBefore {
		t.Errorf("%d full resyncs during the rotation", got-syncsBefore)
	}

	// The replicas authenticate to the primary with the new password now:
	// a link cut after the rotation comes back.
	cutLinkAndAwaitIt(t, nodes[1])
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.pod+" to report no error", func() bool {
			st := n.status()
			return st.Ready && st.LastError == ""
		})
		_, body := n.get("/v1/status")
		status, _ := os.ReadFile(filepath.Join(cf+".status", n.pod+".json"))
		for _, pw := range []string{oldPW, newPW} {
			if strings.Contains(n.out.String(), pw) || bytes.Contains(body, []byte(pw)) || bytes.Contains(status, []byte(pw)) {
				t.Errorf("%s: a password shows in its log, /v1/status or status file", n.pod)
			}
		}
	}
}

// awaitPasswordRefused waits until every node refuses pw.
func awaitPasswordRefused(t *testing.T, nodes []*instance, pw string, timeout time.Duration) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, timeout, n.pod+" to refuse the old password", func() bool {
			c, err := dialRedisAs("", localAddr(n.port), []string{pw}, nil, time.Second)
			if err == nil {
				c.Close()
			}
			return err != nil && strings.Contains(err.Error(), "WRONGPASS")
		})
	}
}

// A client that holds the old password can make itself look like a
// replica (REPLCONF listening-port, then PSYNC), announcing a listener of
// its own. The rotation must neither send the new password there nor wait
// for it: the old password goes when the window ends, while the cluster's
// own replicas, switched first, keep their links.
func TestRotationTrustsOnlyTheClustersInstances(t *testing.T) {
	const oldPW, newPW = "s3cret-pw", "n3w-secret-pw"
	cf, nodes := cluster3(t, "appendonly no", "--password-rotation-window", "2s")
	primary := nodes[0]

	// What would receive the password: a listener that counts its callers.
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	var called atomic.Int64
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			called.Add(1)
			c.Close()
		}
	}()
	fake, err := dialRedisAs("", localAddr(primary.port), []string{oldPW}, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	trapPort := trap.Addr().(*net.TCPAddr).Port
	if _, err := fake.Do("REPLCONF", "listening-port", trapPort); err != nil {
		t.Fatal(err)
	}
	if err := fake.Send("PSYNC", "?", "-1"); err != nil || fake.Flush() != nil {
		t.Fatalf("PSYNC: %v", err)
	}
	eventually(t, 10*time.Second, "the primary to list the fake replica", func() bool {
		info, err := infoReplication(primary.redis())
		return err == nil && strings.Contains(fmt.Sprint(info), fmt.Sprintf("port=%d,", trapPort))
	})

	began := time.Now()
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", newPW))
	awaitPasswordRefused(t, nodes, oldPW, 30*time.Second)
	for _, n := range nodes {
		n.password = newPW
	}
	t.Logf("the old password went %s after the Secret changed (window 2s)", time.Since(began).Round(time.Millisecond))
	if info, _ := infoReplication(primary.redis()); !strings.Contains(fmt.Sprint(info), fmt.Sprintf("port=%d,", trapPort)) {
		t.Error("the fake replica was gone before the old password: the test proves nothing")
	}
	if n := called.Load(); n > 0 {
		t.Fatalf("the announced address was dialled %d times", n)
	}
	cutLinkAndAwaitIt(t, nodes[1])
	cutLinkAndAwaitIt(t, nodes[2])
}

// A configuration redis-server cannot start with is refused before it is
// used where it can be told (a file that is no module: Redis loads modules
// only after its configuration), and the running server stays as it was.
// Where it cannot (a socket's directory that is missing, which the check,
// on a socket of its own, does not use), a restart that fails answers with
// Redis's own reason, and so do lastError and /readyz while it keeps
// failing, until the fragment is put right.
func TestRedisSaysWhyItCannotStart(t *testing.T) {
	dir := t.TempDir()
	cf, tokenFile := filepath.Join(dir, "cluster.yaml"), filepath.Join(dir, "token")
	writeFile(t, tokenFile, "op-token")
	notAModule := filepath.Join(dir, "module.so")
	os.WriteFile(notAModule, []byte("\x7fELF not really"), 0o755)
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw",
		extraArgs: []string{"--operator-token-file", tokenFile}})
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 100)
	pid := in.redisPID()
	restart := func() (int, string) { return in.restart("op-token") }

	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no\nloadmodule "+notAModule, "s3cret-pw"))
	eventually(t, 10*time.Second, "lastError to give Redis's reason for refusing the module", func() bool {
		return strings.Contains(in.status().LastError, "redis-server cannot start with the fragment: Module "+notAModule+" failed to load")
	})
	if code, body := restart(); code != http.StatusOK {
		t.Fatalf("a restart on the last good configuration: %d %s", code, body)
	}
	in.waitReady(20 * time.Second)
	checkKeys(t, in.redis(), "k", 100)
	if b, _ := os.ReadFile(filepath.Join(in.dataDir, confName)); bytes.Contains(b, []byte("loadmodule")) {
		t.Fatal("the refused module is in redis.conf")
	}

	// The socket's directory does not exist: only the start tells.
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no\nunixsocket "+filepath.Join(dir, "no-such-dir", "redis.sock"), "s3cret-pw"))
	eventually(t, 10*time.Second, "unixsocket to wait for a restart", func() bool {
		return reflect.DeepEqual(in.status().PendingRestart, []string{"unixsocket"})
	})
	pid = in.redisPID()
	const why = "Failed opening Unix socket"
	code, body := restart()
	if code != http.StatusInternalServerError || !strings.Contains(body, why) {
		t.Fatalf("a restart that cannot start: %d %s", code, body)
	}
	eventually(t, 10*time.Second, "lastError and /readyz to say "+why, func() bool {
		_, ready := in.get("/readyz")
		return strings.Contains(in.status().LastError, why) && strings.Contains(string(ready), why)
	})
	t.Logf("lastError: %s", in.status().LastError)
	if code, body := in.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d %s", code, body)
	}
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"))
	in.waitReady(30 * time.Second)
	if in.redisPID() == pid {
		t.Fatal("the same redis-server serves")
	}
	checkKeys(t, in.redis(), "k", 100)
	eventually(t, 5*time.Second, "lastError to clear", func() bool { return in.status().LastError == "" })
}

// BenchmarkLiveConfig changes maxmemory in the cluster file b.N times and
// waits for each value to be live in Redis. seen-to-live is the manager's
// own measure, from the new view reaching it (redis-server's check of the
// fragment included) to CONFIG SET done; file-to-live adds local mode's file
// poll (100 ms) and the client's own polling.
func BenchmarkLiveConfig(b *testing.B) {
	dir := b.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(b, cf, clusterYAML("cache", "cache-0", "maxmemory 100mb", "s3cret-pw"))
	in := startInstance(b, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw"})
	in.waitReady(20 * time.Second)
	c := in.redis()
	pid := in.redisPID()
	var fileToLive []time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		mb := 100 + i
		start := time.Now()
		writeFile(b, cf, clusterYAML("cache", "cache-0", fmt.Sprintf("maxmemory %dmb", mb), "s3cret-pw"))
		for {
			got, err := redis.Strings(c.Do("CONFIG", "GET", "maxmemory"))
			if err != nil {
				b.Fatal(err)
			}
			if got[1] == fmt.Sprint(mb<<20) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		fileToLive = append(fileToLive, time.Since(start))
	}
	b.StopTimer()
	if in.redisPID() != pid {
		b.Fatal("redis-server restarted")
	}
	var seenToLive []time.Duration
	for _, r := range in.logRecords() {
		if r["msg"] == "applied configuration live" {
			d, err := time.ParseDuration(r["took"].(string))
			if err != nil {
				b.Fatal(err)
			}
			seenToLive = append(seenToLive, d)
		}
	}
	if len(seenToLive) != b.N {
		b.Fatalf("%d live applications logged for %d changes", len(seenToLive), b.N)
	}
	b.ReportMetric(percentileMS(seenToLive, 0.50), "seen-to-live-p50-ms")
	b.ReportMetric(percentileMS(seenToLive, 0.99), "seen-to-live-p99-ms")
	b.ReportMetric(percentileMS(fileToLive, 0.50), "file-to-live-p50-ms")
	b.ReportMetric(percentileMS(fileToLive, 0.99), "file-to-live-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// Turning authentication on, and off again, on a primary and its replica:
// each is one step (Redis cannot take both at once), and replication keeps
// authenticating with what its primary wants: a link cut after each step
// comes back. The cluster starts with neither a Secret nor a ConfigMap.
func TestTurningAuthenticationOnAndOff(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, "apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata: {name: cache}\nspec: {instances: 2, targetPrimary: cache-0}\n")
	primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	primary.waitReady(20 * time.Second)
	replica := startInstance(t, instanceOpts{pod: "cache-1", clusterFile: cf})
	replica.waitReady(30 * time.Second)
	nodes := []*instance{primary, replica}

	// Nothing is wrong, but it is open to all: the log says so, once.
	const open = "no password from spec.authSecretRef: redis-server takes every client without one, on every interface (protected-mode no); set authSecretRef for anything but a local experiment"
	if n := primary.logCount(open); n != 1 {
		t.Errorf("the warning of a server open to all was logged %d times, want once", n)
	}
	for _, pw := range []string{"now-with-a-pw", ""} {
		writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", pw))
		for _, n := range nodes {
			eventually(t, 10*time.Second, fmt.Sprintf("%s to want password %q", n.pod, pw), func() bool {
				c, err := dialRedisAs("", localAddr(n.port), nil, nil, time.Second)
				if err != nil {
					return false
				}
				defer c.Close()
				if pw == "" {
					_, err = c.Do("PING")
				} else {
					_, err = c.Do("AUTH", pw)
				}
				return err == nil
			})
			n.password = pw
		}
		cutLinkAndAwaitIt(t, replica)
		for _, n := range nodes {
			eventually(t, 10*time.Second, n.pod+" to be ready without an error", func() bool {
				st := n.status()
				return st.Ready && st.LastError == ""
			})
		}
	}
	if n := primary.logCount(open); n != 2 {
		t.Errorf("the warning of a server open to all was logged %d times, want twice: at start and when the password went", n)
	}
}

// cutLinkAndAwaitIt cuts a replica's link to its primary and waits for it to
// come back, which it does only if the replica's masterauth is one the
// primary takes.
func cutLinkAndAwaitIt(t *testing.T, replica *instance) {
	t.Helper()
	c := replica.redis()
	if _, err := c.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the cut link to come back", func() bool {
		info, _ := infoReplication(c)
		return info["master_link_status"] == "up"
	})
}

// A live parameter and the primary role change in one write of the object,
// under writes: the switchover completes with no acknowledged write lost,
// and every instance runs the new value, applied live: no redis-server
// restarts.
func TestFaultConfigChangeDuringSwitchover(t *testing.T) {
	const before = "appendonly no\nrepl-diskless-sync-delay 0\nmaxmemory 100mb\nhz 10"
	const after = "appendonly no\nrepl-diskless-sync-delay 0\nmaxmemory 150mb\nhz 20"
	cf, nodes := cluster3(t, before)
	pids, hash := map[string]int{}, nodes[0].status().ConfigHash
	for _, n := range nodes {
		pids[n.pod] = n.redisPID()
	}
	w := startKeyWriter(t, nodes)
	eventually(t, 5*time.Second, "writes on cache-0", func() bool { return w.ackedOn(nodes[0], time.Now().Add(-100*time.Millisecond)) })
	time.Sleep(300 * time.Millisecond)

	changed := time.Now()
	writeFile(t, cf, clusterYAML("cache", "cache-1", after, "s3cret-pw"))
	eventually(t, 15*time.Second, "writes on cache-1, the new primary", func() bool { return w.ackedOn(nodes[1], changed) })
	t.Logf("cache-1 took writes %s after the change", time.Since(changed).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	acked := w.finish()
	if m := missingKeys(t, nodes[1].redis(), acked); len(m) > 0 {
		t.Fatalf("the new primary lacks %d of %d acknowledged writes, the first w:%d", len(m), len(acked), m[0])
	}
	for _, n := range nodes {
		if n != nodes[1] {
			eventually(t, 10*time.Second, n.pod+" to follow cache-1", func() bool { return masterPort(t, n) == fmt.Sprint(nodes[1].port) })
		}
		c := n.redis()
		eventually(t, 10*time.Second, n.pod+" to hold every acknowledged write", func() bool {
			return len(missingKeys(t, c, acked)) == 0
		})
		for name, want := range map[string]string{"maxmemory": fmt.Sprint(150 << 20), "hz": "20"} {
			if got, _ := redis.Strings(n.redis().Do("CONFIG", "GET", name)); len(got) != 2 || got[1] != want {
				t.Errorf("%s: %s is %v, want %s", n.pod, name, got, want)
			}
		}
		if pid := n.redisPID(); pid != pids[n.pod] {
			t.Errorf("%s: redis-server restarted (pid %d, was %d)", n.pod, pid, pids[n.pod])
		}
		eventually(t, 5*time.Second, n.pod+"'s status to show the new configuration", func() bool {
			st := n.status()
			return st.ConfigHash != hash && st.ConfigHash != "" && len(st.PendingRestart) == 0 && st.LastError == "" && st.Restarts == 0
		})
	}
}

// The data directory fills up under a primary (a 16 MiB tmpfs here) and its
// background save fails. Redis keeps serving reads and refuses writes with
// MISCONF (stop-writes-on-bgsave-error) rather than acknowledge what it
// cannot persist; the manager runs on and says why in /readyz and the
// status; the last good dump.rdb stays whole (Redis writes a temp file and
// renames it only once it is complete). Once space is freed, Redis saves
// again by itself and takes writes, and every acknowledged key is there
// after a restart.
func TestFaultFullDiskDuringSave(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("the test needs a small filesystem, and mounting a tmpfs is not permitted here: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { // after the manager's own cleanup, which stops it
		if out, err := exec.Command("umount", data).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", data, err, out)
		}
	})
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no\nsave 1 1", "s3cret-pw"))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: data})
	in.waitReady(20 * time.Second)
	c := in.redis()
	writeKeys(t, c, "k", 1000)
	if _, err := c.Do("SAVE"); err != nil {
		t.Fatal(err)
	}
	persistence := func() redisInfo {
		text, err := redis.String(c.Do("INFO", "persistence"))
		if err != nil {
			t.Fatal(err)
		}
		return parseInfo(text)
	}

	// 2 MiB left, then 3 MiB of values that do not compress.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(data, &fs); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(data, "filler")
	if err := os.WriteFile(filler, make([]byte, int64(fs.Bavail)*fs.Bsize-2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	acked := map[string][]byte{}
	for i := range 3000 {
		v := make([]byte, 1024)
		crand.Read(v)
		k := fmt.Sprintf("big:%d", i)
		if _, err := c.Do("SET", k, v); err != nil {
			if !strings.HasPrefix(err.Error(), "MISCONF") {
				t.Fatalf("SET %s: %v", k, err)
			}
			break // a save failed already
		}
		acked[k] = v
	}
	eventually(t, 10*time.Second, "a background save to fail for lack of space", func() bool {
		return persistence()["rdb_last_bgsave_status"] == "err"
	})
	rdbPath := filepath.Join(data, "dump.rdb")
	lastGood, err := os.ReadFile(rdbPath)
	if err != nil {
		t.Fatal(err)
	}
	if damage := rdbDamage(rdbPath); damage != "" || rdbFileKeys(rdbPath) < 1000 {
		t.Fatalf("the last good dump.rdb is not whole: %s, %d keys", damage, rdbFileKeys(rdbPath))
	}

	if _, err := c.Do("SET", "refused", "x"); err == nil || !strings.HasPrefix(err.Error(), "MISCONF") {
		t.Fatalf("a write on a full disk: %v, want MISCONF", err)
	}
	if v, err := redis.String(c.Do("GET", "k:5")); err != nil || v != "value-5" {
		t.Fatalf("a read on a full disk: %q, %v", v, err)
	}
	eventually(t, 5*time.Second, "/readyz and the status to say that Redis cannot persist", func() bool {
		code, body := in.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(string(body), "MISCONF") && strings.Contains(in.status().NotReadyReason, "MISCONF")
	})
	if code, body := in.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d %s: the manager is to run on", code, body)
	}
	select {
	case <-in.done:
		t.Fatalf("the manager exited: %v", in.exitErr)
	default:
	}
	if got, _ := os.ReadFile(rdbPath); !bytes.Equal(got, lastGood) {
		t.Error("dump.rdb changed after the failed save")
	}
	// Redis tries the save again every 5 s, and a try in progress has its
	// temp file: what must not stay is one between tries.
	eventually(t, 15*time.Second, "no temp file left between failed saves", func() bool {
		temps, _ := filepath.Glob(filepath.Join(data, "temp-*.rdb"))
		return len(temps) == 0 && persistence()["rdb_bgsave_in_progress"] == "0"
	})
	t.Logf("%d writes acknowledged before the disk filled; %s", len(acked), persistence()["rdb_last_bgsave_status"])

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	eventually(t, 15*time.Second, "writes to be taken again once space is freed", func() bool {
		_, err := c.Do("SET", "after", "freed")
		return err == nil
	})
	t.Logf("writes taken again %s after space was freed", time.Since(freed).Round(time.Millisecond))
	in.waitReady(10 * time.Second)
	if code := in.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	back := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: data, port: in.port})
	back.waitReady(20 * time.Second)
	bc := back.redis()
	checkKeys(t, bc, "k", 1000)
	for k, v := range acked {
		if got, err := redis.Bytes(bc.Do("GET", k)); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("after a restart, the acknowledged %s is %d bytes (%v)", k, len(got), err)
		}
	}
	if v, _ := redis.String(bc.Do("GET", "after")); v != "freed" {
		t.Fatalf("after a restart, the write taken once space was freed is %q", v)
	}
}

// A primary whose dump.rdb is damaged (cut short, bytes changed, empty)
// must hold on to it: redis-server is not started over it, let alone empty,
// the file stays byte for byte, the manager runs on and says what is wrong
// in lastError and /readyz, and nothing restarts again and again. A good
// file put in its place is then loaded.
func TestFaultCorruptRDBAtStart(t *testing.T) {
	var want map[string]string
	good := rdbFixture(t, func(c redis.Conn) {
		fillTypes(t, c, "k", 300)
		want = dataset(t, c)
	})
	cut := len(good) * 2 / 3
	for good[cut-9] == 0xFF { // where the end mark would be: not a cut that looks whole
		cut--
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0xFF
	for _, tc := range []struct {
		name string
		rdb  []byte
		says string
	}{
		{"truncated", good[:cut], "dump.rdb is truncated"},
		{"bytes flipped", flipped, "dump.rdb is damaged: its CRC64 is"},
		{"empty", []byte{}, "dump.rdb is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			os.MkdirAll(data, 0o750)
			rdbPath := filepath.Join(data, "dump.rdb")
			if err := os.WriteFile(rdbPath, tc.rdb, 0o600); err != nil {
				t.Fatal(err)
			}
			cf := filepath.Join(dir, "cluster.yaml")
			yaml := clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw")
			writeFile(t, cf, yaml)
			in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: data})
			eventually(t, 10*time.Second, "lastError to say "+tc.says, func() bool {
				return strings.Contains(in.status().LastError, tc.says)
			})
			t.Logf("lastError: %s", in.status().LastError)
			if code, body := in.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), tc.says) {
				t.Errorf("/readyz %d %s", code, body)
			}
			// Long enough for a restart loop to show: its first retries come
			// after 100, 200 and 400 ms.
			time.Sleep(1500 * time.Millisecond)
			if code, body := in.get("/healthz"); code != http.StatusOK {
				t.Errorf("/healthz %d %s: the manager is to run on, waiting for a good file", code, body)
			}
			starts := in.logCount("redis-server started")
			if st := in.status(); starts != 0 || st.Restarts > 0 {
				t.Errorf("redis-server was started %d times (restarts %d) over a file it cannot load", starts, st.Restarts)
			}
			if c, err := net.Dial("tcp", localAddr(in.port)); err == nil {
				c.Close()
				t.Error("redis-server runs beside a dump.rdb it cannot load")
			}
			if got, _ := os.ReadFile(rdbPath); !bytes.Equal(got, tc.rdb) {
				t.Fatal("dump.rdb changed")
			}
			select {
			case <-in.done:
				t.Fatalf("the manager exited: %v", in.exitErr)
			default:
			}

			// A good copy put in its place is loaded without anything else
			// changing: the manager looks at a refused start again.
			if err := os.WriteFile(rdbPath, good, 0o600); err != nil {
				t.Fatal(err)
			}
			in.waitReady(20 * time.Second)
			if got := dataset(t, in.redis()); !maps.Equal(got, want) {
				t.Fatalf("after the good file: %d keys, want %d", len(got), len(want))
			}
			if st := in.status(); st.LastError != "" {
				t.Errorf("lastError stays: %s", st.LastError)
			}
		})
	}
}
