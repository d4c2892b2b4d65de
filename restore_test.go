package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// withRestore adds spec.bootstrap.restore to a cluster file.
func withRestore(clusterFile, url, sum string) string {
	return strings.Replace(clusterFile, "spec:\n", fmt.Sprintf("spec:\n  bootstrap:\n    restore: {url: %q, sha256: %q}\n", url, sum), 1)
}

func sha256Of(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// leftovers are the restore's temp files in a data directory.
func leftovers(t testing.TB, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(privateDir(dir), restoreTempPrefix+"*"))
	return m
}

// A new primary starts from a backup served over HTTP or from a file: the
// keys of the source are there, the URL's password and signature are in no
// log line, and nothing is left beside the dataset. With appendonly on,
// the backup becomes the base of the AOF Redis reads.
func TestRestoreFromBackup(t *testing.T) {
	var want map[string]string
	rdb := rdbFixture(t, func(c redis.Conn) {
		fillTypes(t, c, "src", 200)
		want = dataset(t, c)
	})
	sum := sha256Of(rdb)
	var gotAuth atomic.Value
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if _, pw, ok := r.BasicAuth(); ok {
			gotAuth.Store(pw)
		}
		http.ServeContent(w, r, "dump.rdb", time.Time{}, bytes.NewReader(rdb))
	}))
	defer srv.Close()
	tlsSrv := httptest.NewTLSServer(srv.Config.Handler)
	defer tlsSrv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o600)
	fileSrc := filepath.Join(t.TempDir(), "backup.rdb")
	os.WriteFile(fileSrc, rdb, 0o600)
	httpURL := strings.Replace(srv.URL, "http://", "http://backup:hunter2-pw@", 1) + "/b/dump.rdb?X-Amz-Signature=sig-hunter3"

	for _, tc := range []struct{ name, url, fragment string }{
		{"http", httpURL, "appendonly no"},
		{"https", tlsSrv.URL + "/dump.rdb", "appendonly no"}, // trusting the CA of SSL_CERT_FILE
		{"file", "file://" + fileSrc, "appendonly no"},
		{"file into an AOF", "file://" + fileSrc, "appendonly yes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cf := filepath.Join(dir, "cluster.yaml")
			writeFile(t, cf, withRestore(clusterYAML("cache", "cache-0", tc.fragment, "s3cret-pw"), tc.url, sum))
			in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", env: []string{"SSL_CERT_FILE=" + caFile}})
			in.waitReady(30 * time.Second)
			if got := dataset(t, in.redis()); !maps.Equal(got, want) {
				t.Fatalf("after the restore: %d keys, want the source's %d", len(got), len(want))
			}
			if !in.hasLog("restored the dataset from backup") {
				t.Error("no log of the restore")
			}
			if l := leftovers(t, in.dataDir); len(l) > 0 {
				t.Errorf("left behind: %v", l)
			}
			if strings.Contains(tc.fragment, "appendonly yes") {
				if _, err := os.Stat(filepath.Join(in.dataDir, "dump.rdb")); err == nil {
					t.Error("with appendonly on, the backup went to dump.rdb, which Redis does not read")
				}
			}
			if tc.name == "http" {
				if gotAuth.Load() != "hunter2-pw" {
					t.Errorf("the URL's user info was not sent as basic auth")
				}
				if out := in.out.String(); strings.Contains(out, "hunter2") || strings.Contains(out, "sig-hunter3") {
					t.Error("the URL's password or signature is in the log")
				}
			}
		})
	}

	// Only the primary fetches the backup; a replica copies the primary.
	t.Run("a replica", func(t *testing.T) {
		fetches.Store(0)
		dir := t.TempDir()
		cf := filepath.Join(dir, "cluster.yaml")
		writeFile(t, cf, withRestore(clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw"), httpURL, sum))
		replica := startInstance(t, instanceOpts{pod: "cache-1", clusterFile: cf, password: "s3cret-pw"})
		primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw"})
		primary.waitReady(30 * time.Second)
		replica.waitReady(30 * time.Second)
		if got := dataset(t, replica.redis()); !maps.Equal(got, want) {
			t.Fatalf("the replica holds %d keys, want the backup's %d", len(got), len(want))
		}
		if n := fetches.Load(); n != 1 {
			t.Errorf("the backup was fetched %d times, want once, by the primary", n)
		}
	})
}

// A backup that is wrong in any way is refused with a message saying why,
// leaves nothing behind, and redis-server does not start: an empty primary
// would have its replicas copy the emptiness. A good backup then starts it.
func TestRestoreRefusesBadBackups(t *testing.T) {
	var want map[string]string
	rdb := rdbFixture(t, func(c redis.Conn) {
		fillTypes(t, c, "src", 100)
		want = dataset(t, c)
	})
	corrupt := slices.Clone(rdb)
	corrupt[len(corrupt)/2] ^= 0xff
	stop := make(chan struct{})
	defer close(stop)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good", "/wrongsum":
			w.Write(rdb)
		case "/corrupt":
			w.Write(corrupt)
		case "/truncated": // says how long it is, sends half, and hangs up
			w.Header().Set("Content-Length", fmt.Sprint(len(rdb)))
			w.Write(rdb[:len(rdb)/2])
			w.(http.Flusher).Flush()
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		case "/stall": // sends a little, then nothing
			w.Header().Set("Content-Length", fmt.Sprint(len(rdb)))
			w.Write(rdb[:100])
			w.(http.Flusher).Flush()
			select {
			case <-stop:
			case <-r.Context().Done():
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	defer srv.CloseClientConnections()

	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	base := clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw")
	// Every URL carries a password and a signature, which no error may show.
	secretURL := func(path string) string {
		return strings.Replace(srv.URL, "http://", "http://backup:hunter2-pw@", 1) + path + "?X-Amz-Signature=sig-hunter3"
	}
	writeFile(t, cf, withRestore(base, secretURL("/good"), ""))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw",
		extraArgs: []string{"--restore-stall-timeout", "1s"}})

	cases := []struct{ path, sum, says string }{
		{"/good", "", "sha256 is required"},
		{"/wrongsum", strings.Repeat("ab", 32), "the backup does not match spec.bootstrap.restore.sha256"},
		{"/truncated", sha256Of(rdb), "truncated"},
		{"/missing", sha256Of(rdb), "the download failed"},
		{"/stall", sha256Of(rdb), "stalled"},
	}
	if _, err := exec.LookPath("redis-check-rdb"); err == nil {
		cases = append(cases, struct{ path, sum, says string }{"/corrupt", sha256Of(corrupt), "redis-check-rdb refuses the backup"})
	} else {
		t.Log("redis-check-rdb is not installed: the corrupt backup whose checksum matches is not tried")
	}
	for _, tc := range cases {
		writeFile(t, cf, withRestore(base, secretURL(tc.path), tc.sum))
		eventually(t, 20*time.Second, tc.path+": lastError saying "+tc.says, func() bool {
			return strings.Contains(in.status().LastError, tc.says)
		})
		if code, body := in.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), tc.says) {
			t.Errorf("%s: /readyz %d %s", tc.path, code, body)
		}
		if c, err := net.Dial("tcp", localAddr(in.port)); err == nil {
			c.Close()
			t.Fatalf("%s: redis-server started without its dataset", tc.path)
		}
		if l := leftovers(t, in.dataDir); len(l) > 0 {
			t.Errorf("%s: left behind: %v", tc.path, l)
		}
		if _, err := os.Stat(filepath.Join(in.dataDir, "dump.rdb")); err == nil {
			t.Fatalf("%s: a refused backup is in place", tc.path)
		}
		_, ready := in.get("/readyz")
		if seen := in.out.String() + in.status().LastError + string(ready); strings.Contains(seen, "hunter") {
			t.Fatalf("%s: the URL's password or signature is in the log, the status or /readyz", tc.path)
		}
	}
	writeFile(t, cf, withRestore(base, secretURL("/good"), sha256Of(rdb)))
	in.waitReady(30 * time.Second)
	if got := dataset(t, in.redis()); !maps.Equal(got, want) {
		t.Fatalf("after the good backup: %d keys, want %d", len(got), len(want))
	}
	if st := in.status(); st.LastError != "" {
		t.Errorf("lastError stays: %s", st.LastError)
	}
}

// A data directory that holds a dataset is never touched by a restore: the
// backup is not even fetched, and the files stay byte for byte.
func TestRestoreNeverTouchesADataset(t *testing.T) {
	mine := rdbFixture(t, func(c redis.Conn) { c.Do("SET", "mine", "kept") })
	other := rdbFixture(t, func(c redis.Conn) { fillTypes(t, c, "other", 10) })
	var fetched atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		w.Write(other)
	}))
	defer srv.Close()
	for _, fragment := range []string{"appendonly no", "appendonly yes"} {
		t.Run(fragment, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			os.MkdirAll(data, 0o750)
			os.WriteFile(filepath.Join(data, "dump.rdb"), mine, 0o600)
			cf := filepath.Join(dir, "cluster.yaml")
			writeFile(t, cf, withRestore(clusterYAML("cache", "cache-0", fragment, "s3cret-pw"), srv.URL+"/dump.rdb", sha256Of(other)))
			in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: data})
			if fragment == "appendonly yes" {
				// Redis would not read dump.rdb, and would save an empty
				// dataset over it: it is not started.
				eventually(t, 20*time.Second, "a refusal to start beside an RDB Redis would not read", func() bool {
					return strings.Contains(in.status().LastError, "appendonly is on and appendonlydir/ holds no AOF")
				})
				if c, err := net.Dial("tcp", localAddr(in.port)); err == nil {
					c.Close()
					t.Fatal("redis-server started, empty, beside dump.rdb")
				}
			} else {
				in.waitReady(20 * time.Second)
			}
			if got, _ := os.ReadFile(filepath.Join(data, "dump.rdb")); !bytes.Equal(got, mine) {
				t.Error("dump.rdb changed")
			}
			if n := fetched.Load(); n > 0 {
				t.Errorf("the backup was fetched %d times", n)
			}
			if fragment == "appendonly no" && !in.hasLog("not restoring from backup: the data directory holds a dataset, which is kept as it is") {
				t.Error("no log saying why the restore was skipped")
			}
			if fragment == "appendonly no" {
				if v, _ := redis.String(in.redis().Do("GET", "mine")); v != "kept" {
					t.Errorf("GET mine = %q", v)
				}
			}
		})
	}
}

// A restore source tells the open status only that it failed and at which
// step: of a source that is no RDB file, not its hash, its size or its
// content, and of one that cannot be opened or reached, not why, so that
// a spec author cannot map the pod's files or network from /v1/status.
// The manager's own credentials are never read, even when they would pass
// for the backup.
func TestRestoreSourceIsNoOracle(t *testing.T) {
	rdb := rdbFixture(t, func(c redis.Conn) { fillTypes(t, c, "src", 20) })
	dir := t.TempDir()
	secret := filepath.Join(dir, "shadow")
	secretText := strings.Repeat("root:$6$not-a-backup:19000:0:99999:7:::\n", 300)
	os.WriteFile(secret, []byte(secretText), 0o600)
	// An operator token that happens to be a valid RDB file, and a link to it.
	token := filepath.Join(dir, "token")
	os.WriteFile(token, rdb, 0o600)
	link := filepath.Join(dir, "link.rdb")
	os.Symlink(token, link)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	closed := freePort(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/to-https":
			http.Redirect(w, r, "https://"+r.Host+"/b.rdb", http.StatusFound)
		case "/text":
			w.Write([]byte(secretText))
		}
	}))
	defer srv.Close()

	cf := filepath.Join(dir, "cluster.yaml")
	base := clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw")
	writeFile(t, cf, base)
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw",
		extraArgs: []string{"--operator-token-file", token}})

	const failed = "the download failed (the manager's log says why)"
	realSum, size := sha256Of([]byte(secretText)), len(secretText)
	for _, tc := range []struct{ name, url, sum, says, logs string }{
		{"a file that is no backup", "file://" + secret, strings.Repeat("ab", 32), "the source is not an RDB file", ""},
		{"an HTTP body that is no backup", srv.URL + "/text", strings.Repeat("ab", 32), "the source is not an RDB file", ""},
		{"no such file", "file://" + filepath.Join(dir, "nothing"), sha256Of(rdb), failed, "no such file or directory"},
		{"a directory", "file://" + dir, sha256Of(rdb), failed, "not a regular file"},
		{"a FIFO", "file://" + fifo, sha256Of(rdb), failed, "not a regular file"},
		{"a kernel file", "file:///proc/self/environ", sha256Of(rdb), failed, "kernel file"},
		{"the operator token", "file://" + token, sha256Of(rdb), failed, "one of the manager's own files"},
		{"a link to the operator token", "file://" + link, sha256Of(rdb), failed, "one of the manager's own files"},
		{"a closed port", fmt.Sprintf("http://127.0.0.1:%d/b.rdb", closed), sha256Of(rdb), failed, "connection refused"},
		{"a redirect loop", srv.URL + "/loop", sha256Of(rdb), failed, "more than 3 redirects"},
		{"a redirect to another scheme", srv.URL + "/to-https", sha256Of(rdb), failed, "a redirect from http to https"},
	} {
		const failure = "restoring from backup failed; redis-server stays stopped"
		before := in.logCount(failure)
		writeFile(t, cf, withRestore(base, tc.url, tc.sum))
		eventually(t, 10*time.Second, tc.name+": the attempt to fail", func() bool { return in.logCount(failure) > before })
		var logged map[string]any
		for _, r := range in.logRecords() {
			if r["msg"] == failure {
				logged = r
			}
		}
		lastError := in.status().LastError
		if !strings.HasSuffix(lastError, "): "+tc.says) || logged["error"] != tc.says {
			t.Errorf("%s: lastError %q, logged %q; want both to say %q", tc.name, lastError, logged["error"], tc.says)
		}
		if detail, _ := logged["detail"].(string); !strings.Contains(detail, tc.logs) {
			t.Errorf("%s: the log's detail is %q, want it to say %q", tc.name, detail, tc.logs)
		}
		_, ready := in.get("/readyz")
		_, status := in.get("/v1/status")
		_, metrics := in.get("/metrics")
		for _, leak := range []string{realSum, fmt.Sprint(size), byteSize(int64(size)), "root:", tc.logs} {
			if seen := string(ready) + string(status) + string(metrics); leak != "" && strings.Contains(seen, leak) {
				t.Errorf("%s: the open endpoints show %q: %s", tc.name, leak, lastError)
			}
		}
		if _, err := os.Stat(filepath.Join(in.dataDir, "dump.rdb")); err == nil {
			t.Fatalf("%s: something was restored", tc.name)
		}
	}
	// The fixture is a good backup, where no credential holds it.
	good := filepath.Join(dir, "good.rdb")
	os.WriteFile(good, rdb, 0o600)
	writeFile(t, cf, withRestore(base, "file://"+good, sha256Of(rdb)))
	in.waitReady(20 * time.Second)
}

// Every step of a restore can be left: a source that never delivers (a
// FIFO, which would block in its open, or a server that stops sending)
// holds nothing up once the spec no longer asks for it, and the instance
// starts as the new spec says.
func TestRestoreThatNeverDeliversIsLeft(t *testing.T) {
	rdb := rdbFixture(t, func(c redis.Conn) { fillTypes(t, c, "src", 20) })
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	hang := make(chan struct{})
	defer close(hang)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(rdb[:100])
		w.(http.Flusher).Flush()
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer srv.CloseClientConnections()

	for _, tc := range []struct{ name, url, while string }{
		{"a FIFO", "file://" + fifo, "the download failed"},
		{"a server that stops sending", srv.URL + "/b.rdb", "restoring the dataset from backup: 100 B so far"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cf := filepath.Join(t.TempDir(), "cluster.yaml")
			base := clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw")
			writeFile(t, cf, withRestore(base, tc.url, sha256Of(rdb)))
			in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw"})
			eventually(t, 10*time.Second, "/readyz to say "+tc.while, func() bool {
				_, body := in.get("/readyz")
				return strings.Contains(string(body), tc.while)
			})
			writeFile(t, cf, base)
			in.waitReady(10 * time.Second)
		})
	}
}

// A download of unknown length (chunked HTTP) stops before it would leave
// the data directory's volume without room, and so does one whose length
// is known at once: the volume Redis saves to is never filled.
func TestRestoreLeavesTheVolumeRoom(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o750)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m,mode=0750", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("the test needs a small filesystem, and mounting a tmpfs is not permitted here: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", data).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", data, err, out)
		}
	})
	head := rdbFixture(t, func(c redis.Conn) {})[:9]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", fmt.Sprint(64<<20))
		}
		w.Write(head)
		chunk := make([]byte, 64<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	defer srv.CloseClientConnections()

	cf := filepath.Join(dir, "cluster.yaml")
	base := clusterYAML("cache", "cache-0", "appendonly no", "s3cret-pw")
	writeFile(t, cf, withRestore(base, srv.URL+"/endless", strings.Repeat("ab", 32)))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, password: "s3cret-pw", dataDir: data})
	for _, tc := range []struct{ path, says string }{
		{"/endless", "the download stopped: it would have left the data directory with less than 1.6 MiB free"},
		{"/big", "the backup would leave the data directory with less than 1.6 MiB free"},
	} {
		writeFile(t, cf, withRestore(base, srv.URL+tc.path, strings.Repeat("ab", 32)))
		eventually(t, 20*time.Second, tc.path+": lastError saying "+tc.says, func() bool {
			return strings.Contains(in.status().LastError, tc.says)
		})
		t.Logf("%s: %s", tc.path, in.status().LastError)
		var fs syscall.Statfs_t
		if err := syscall.Statfs(data, &fs); err != nil {
			t.Fatal(err)
		}
		if free := int64(fs.Bavail) * fs.Bsize; free < 30<<20 {
			t.Errorf("%s: %s free after the refusal: the download was left behind", tc.path, byteSize(free))
		}
	}
}
