package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The data directory: a new cluster's primary may start from a backup
// (spec.bootstrap.restore), and only into a data directory that holds no
// dataset. The backup is fetched into a temp file beside the dataset,
// checked against the SHA-256 the spec gives and by redis-check-rdb, and
// only then linked into place, so that no name of the dataset ever holds a
// partial or unchecked file, and linking, unlike renaming, cannot replace a
// file that appeared meanwhile. Until it is in place redis-server does not
// start: a primary that started empty would have its replicas copy the
// emptiness.

// restoreSpec is spec.bootstrap.restore.
type restoreSpec struct {
	URL    string `json:"url"`
	SHA256 string `json:"sha256"`
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// check says what is wrong with a spec, quoting nothing of the URL: even
// what url.Parse takes for a scheme may be a user name.
func (s restoreSpec) check() error {
	u, err := url.Parse(s.URL)
	switch {
	case s.URL == "":
		return errors.New("spec.bootstrap.restore.url is required")
	case err != nil:
		return errors.New("spec.bootstrap.restore.url is not a URL")
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file":
		return errors.New("spec.bootstrap.restore.url: the scheme is not https, http or file")
	case u.Scheme != "file" && u.Host == "":
		return errors.New("spec.bootstrap.restore.url has no host")
	case u.Scheme == "file" && (u.Path == "" || u.Host != "" && u.Host != "localhost"):
		return errors.New("spec.bootstrap.restore.url: a file URL is file:///absolute/path")
	case s.SHA256 == "":
		return errors.New("spec.bootstrap.restore.sha256 is required: the hex SHA-256 of the backup, as GET /v1/backup reports it")
	case !sha256Hex.MatchString(s.SHA256):
		return errors.New("spec.bootstrap.restore.sha256 is not 64 lowercase hex digits")
	}
	return nil
}

// redactURL is a URL fit for a log line: without user info, and without a
// query, where a presigned URL keeps its signature.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(not a URL)"
	}
	v := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	if u.RawQuery != "" {
		return v.String() + "?…"
	}
	return v.String()
}

// restoreJob is one attempt. The reconciler owns it; the goroutine that
// runs it writes only the progress counters.
type restoreJob struct {
	spec      restoreSpec
	files     dataFiles // the names it restores to
	cancel    context.CancelFunc
	abandoned bool
	began     time.Time
	got       atomic.Int64
	total     atomic.Int64 // -1 while unknown
}

func (j *restoreJob) progress() string {
	got, total := j.got.Load(), j.total.Load()
	if total < 0 {
		return byteSize(got) + " so far"
	}
	return fmt.Sprintf("%s of %s (%.0f%%)", byteSize(got), byteSize(total), 100*float64(got)/float64(max(total, 1)))
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// restoreResult reports how a job ended.
type restoreResult struct {
	job  *restoreJob
	keys int64
	err  error
}

// restorer fetches, checks and places backups in the data directory.
type restorer struct {
	dir, redisServer string
	start            startFunc
	stall            time.Duration // a download that receives nothing for this long is abandoned
	log              *slog.Logger
}

const restoreTemp = ".restore-"

// removeStaleRestores removes what an attempt cut short by a crash or an
// upgrade left: a temp file may be a full copy of the backup.
func removeStaleRestores(dir string) {
	stale, _ := filepath.Glob(filepath.Join(dir, restoreTemp+"*"))
	for _, p := range stale {
		os.RemoveAll(p)
	}
}

// run restores job's backup. On any error it leaves nothing behind.
func (rs *restorer) run(ctx context.Context, job *restoreJob) (int64, error) {
	removeStaleRestores(rs.dir)
	where := redactURL(job.spec.URL)
	src, err := rs.open(ctx, job)
	if err != nil {
		return 0, fmt.Errorf("the backup at %s: %w", where, err)
	}
	defer src.Close()
	if total := job.total.Load(); total > 0 {
		var fs syscall.Statfs_t
		if syscall.Statfs(rs.dir, &fs) == nil {
			if free := int64(fs.Bavail) * fs.Bsize; free < total {
				return 0, fmt.Errorf("the backup at %s is %s and the data directory has %s free", where, byteSize(total), byteSize(free))
			}
		}
	}
	tmp, err := os.CreateTemp(rs.dir, restoreTemp+"*")
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	defer os.Remove(tmp.Name()) // once linked into place, this name goes
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), src)
	src.Close()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	got, total := job.got.Load(), job.total.Load()
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF), err == nil && total >= 0 && got != total:
		of := ""
		if total >= 0 {
			of = " of " + byteSize(total)
		}
		return 0, fmt.Errorf("the backup at %s is truncated: the source ended after %s%s", where, byteSize(got), of)
	case err != nil:
		return 0, err // a read error names the backup, a write error the temp file
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != job.spec.SHA256 {
		return 0, fmt.Errorf("the backup at %s (%s) has SHA-256 %s, and spec.bootstrap.restore.sha256 is %s: refusing it", where, byteSize(got), sum, job.spec.SHA256)
	}
	if err := rs.checkRDB(ctx, tmp.Name()); err != nil {
		return 0, fmt.Errorf("the backup at %s: %w", where, err)
	}
	placed, err := rs.place(ctx, tmp.Name(), job.files)
	if err != nil {
		return 0, err
	}
	return rdbFileKeys(placed), nil
}

// open starts reading the backup, learning its size when the source tells
// it. Reads are counted into job.got, and report progress every 10 s.
func (rs *restorer) open(ctx context.Context, job *restoreJob) (io.ReadCloser, error) {
	u, _ := url.Parse(job.spec.URL) // checked
	if u.Scheme == "file" {
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, errors.Unwrap(err) // the path is the URL's
		}
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			job.total.Store(st.Size())
		}
		return &progressReader{ReadCloser: f, ctx: ctx, job: job, log: rs.log}, nil
	}
	// The connection is the backup's alone, and closed with it.
	client := &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		DisableKeepAlives:   true,
		DisableCompression:  true, // the checksum is of the file, not of an encoding of it
	}}
	// Each wait, for the answer and then for each read, ends after the
	// stall time: the timer cancels the request.
	reqCtx, cancel := context.WithCancel(ctx)
	stalled := &atomic.Bool{}
	timer := time.AfterFunc(rs.stall, func() { stalled.Store(true); cancel() })
	stop := func() { timer.Stop(); cancel() }
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, job.spec.URL, nil)
	if err != nil {
		stop()
		return nil, errors.New("not a URL")
	}
	resp, err := client.Do(req)
	switch {
	case err != nil && stalled.Load():
		stop()
		return nil, fmt.Errorf("no answer for %s", rs.stall)
	case err != nil:
		stop()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // it quotes the whole URL
		}
		return nil, err
	case resp.StatusCode != http.StatusOK:
		stop()
		resp.Body.Close()
		return nil, fmt.Errorf("the server answered %s", resp.Status)
	}
	job.total.Store(resp.ContentLength)
	body := &stallReader{ReadCloser: resp.Body, timer: timer, stall: rs.stall, stalled: stalled, stop: stop}
	return &progressReader{ReadCloser: body, ctx: ctx, job: job, log: rs.log}, nil
}

// stallReader keeps a download's stall timer from firing while data comes,
// and says so when it did.
type stallReader struct {
	io.ReadCloser
	timer   *time.Timer
	stall   time.Duration
	stalled *atomic.Bool
	stop    func()
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if n > 0 {
		s.timer.Reset(s.stall)
	}
	if err != nil && err != io.EOF && s.stalled.Load() {
		err = fmt.Errorf("no data for %s: the download stalled", s.stall)
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.stop()
	return s.ReadCloser.Close()
}

// progressReader counts what is read and logs progress every 10 s. A read
// error names the backup; an abandoned job reads no further.
type progressReader struct {
	io.ReadCloser
	ctx    context.Context
	job    *restoreJob
	log    *slog.Logger
	logged time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.ReadCloser.Read(b)
	got := p.job.got.Add(int64(n))
	if time.Since(p.logged) >= 10*time.Second {
		if !p.logged.IsZero() {
			p.log.Info("restoring from backup", "progress", p.job.progress(), "bytesPerSecond", int64(float64(got)/time.Since(p.job.began).Seconds()))
		}
		p.logged = time.Now()
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("the backup at %s: %w", redactURL(p.job.spec.URL), err)
	}
	return n, err
}

// checkRDB checks that the file is an RDB, and has redis-check-rdb read it
// all when it is installed: the one beside redis-server first, for it is of
// the same build.
func (rs *restorer) checkRDB(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	magic := make([]byte, 9)
	_, err = io.ReadFull(f, magic)
	f.Close()
	if err != nil || string(magic[:5]) != "REDIS" {
		return errors.New("it is not an RDB file")
	}
	tool := filepath.Join(filepath.Dir(rs.redisServer), "redis-check-rdb")
	if st, err := os.Stat(tool); err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		if tool, err = exec.LookPath("redis-check-rdb"); err != nil {
			rs.log.Info("redis-check-rdb is not installed; the backup is checked by its checksum only")
			return nil
		}
	}
	out, ws, err := runChild(ctx, rs.start, []string{tool, path}, rs.dir, time.Hour)
	switch {
	case err != nil:
		return fmt.Errorf("cannot run redis-check-rdb: %w", err)
	case !ws.Exited() || ws.ExitStatus() != 0:
		return fmt.Errorf("redis-check-rdb refuses it: %s", rdbCheckError(out))
	}
	return nil
}

// rdbCheckError is the line of redis-check-rdb's report that says what is
// wrong.
func rdbCheckError(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i, l := range lines {
		if strings.Contains(l, "RDB ERROR DETECTED") && i+1 < len(lines) {
			return strings.TrimSpace(lines[i+1])
		}
	}
	return lastLine(out)
}

// place links the checked file in as the dataset Redis will load: the RDB
// file, or, with appendonly on (when Redis reads no RDB file), the base of
// a new AOF directory, built aside and renamed into place whole. It
// returns the path of the RDB placed. An abandoned job places nothing.
func (rs *restorer) place(ctx context.Context, tmp string, df dataFiles) (string, error) {
	if !df.aof {
		dest := filepath.Join(rs.dir, df.rdb)
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := os.Link(tmp, dest); err != nil {
			return "", fmt.Errorf("cannot put the backup in place as %s: %w", df.rdb, err)
		}
		syncDir(rs.dir)
		return dest, nil
	}
	aside, err := os.MkdirTemp(rs.dir, restoreTemp+"aof-*")
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	defer os.RemoveAll(aside) // a no-op once renamed
	base := df.aofName + ".1.base.rdb"
	if err := os.Link(tmp, filepath.Join(aside, base)); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(aside, df.aofName+".manifest"), []byte("file "+quoteArg(base)+" seq 1 type b\n"), 0o600); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	if err := os.Chmod(aside, 0o750); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	// A rename takes the place of an empty directory, never of a full one.
	dest := filepath.Join(rs.dir, df.aofDir)
	if err := os.Rename(aside, dest); err != nil {
		return "", fmt.Errorf("cannot put the backup in place as %s: %w", df.aofDir, err)
	}
	syncDir(rs.dir)
	return filepath.Join(dest, base), nil
}
