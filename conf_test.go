package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
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
		{"rename-command SHUTDOWN \"\"", "renaming SHUTDOWN would stop the manager"},
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
	if _, err := parseFragment("rename-command FLUSHALL \"\"\nrename-command KEYS \"\""); err != nil {
		t.Errorf("renaming commands the manager does not use was refused: %v", err)
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

// configHash is published; it must not change with the password alone, or
// it would let anyone check guesses of the password against it.
func TestConfigHashLeavesOutCredentials(t *testing.T) {
	frag, _ := parseFragment("maxmemory 1mb")
	pod := podConfig{dataDir: "/d", port: 6379, announceHost: "h", password: "one"}
	a, _ := renderConfig(frag, pod)
	pod.password = "two"
	b, _ := renderConfig(frag, pod)
	if configHash(a) != configHash(b) {
		t.Fatal("configHash changes with the password")
	}
	if confPassword(b) != "two" {
		t.Fatalf("confPassword = %q", confPassword(b))
	}
	pod.port = 6380
	c, _ := renderConfig(frag, pod)
	if configHash(a) == configHash(c) {
		t.Fatal("configHash does not change with the port")
	}
}

func TestPendingRestartNamesChangedDirectives(t *testing.T) {
	running := "maxmemory 100mb\nsave 900 1\nsave 300 10\nreplicaof 10.0.0.1 6379\nappendonly yes\n"
	wanted := "maxmemory 200mb\nsave 900 1\nreplicaof 10.0.0.2 6379\nappendonly yes\nio-threads 4\n"
	got := pendingRestart(running, wanted)
	if want := []string{"io-threads", "maxmemory", "save"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pendingRestart = %v, want %v", got, want)
	}
	if got := pendingRestart(running, running); got == nil || len(got) != 0 {
		t.Fatalf("pendingRestart of the same config = %#v, want an empty list", got)
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
