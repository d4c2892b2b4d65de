package main

// A new cluster's primary may start from a backup (spec.bootstrap.restore),
// and only into a data directory that holds no dataset. The backup is
// fetched into a temp file in the manager's private directory, on the same
// volume as the dataset, checked against the SHA-256 the spec gives and by
// redis-check-rdb, and only then linked into place, so that no name of the
// dataset ever holds a partial or unchecked file, and linking, unlike
// renaming, cannot replace a file that appeared meanwhile. Until it is in
// place redis-server does not start: a primary that started empty would
// have its replicas copy the emptiness. What the open status says of a
// failure is the step, never what the source holds: see restoreError.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// restoreState is the reconciler's part of restoring: the job under way,
// and how the last ones went.
type restoreState struct {
	restores      chan restoreResult
	restoreJob    *restoreJob // the restore under way, or abandoned and not yet ended
	restoreDone   restoreSpec // the backup restored, or found not needed
	restoreErr    string      // why the last attempt failed
	restoreFailed restoreSpec // the backup it failed for
	restoreFails  int
	restoreRetry  time.Time // when to try it again
	restoreWait   backoff
}

// restoreFunc fetches, checks and places a job's backup, and says how many
// keys it holds: restorer.run.
type restoreFunc func(ctx context.Context, job *restoreJob) (int64, error)

// bootstrap restores spec.bootstrap.restore for the primary when its data
// directory holds no dataset, and says whether redis-server must wait for
// it. Replicas copy the primary instead. It is called only while
// redis-server does not run, after startGuard: a cluster whose status shows
// data gets no old backup in its place.
func (r *reconciler) bootstrap() bool {
	spec := r.view.cluster.Spec.Bootstrap.Restore
	if job := r.restoreJob; job != nil && (spec == nil || *spec != job.spec || !r.role.leads() || dataFilesOf(r.fragment) != job.files) {
		r.abandonRestore("the spec, the role or the names of the data files changed")
	}
	if spec == nil || !r.role.leads() || *spec == r.restoreDone {
		r.restoreErr, r.restoreRetry = "", time.Time{}
		return false
	}
	if r.restoreJob != nil {
		return true
	}
	if found := datasetFound(r.settings.dataDir, r.fragment); found != "" {
		r.log.Info("not restoring from backup: the data directory holds a dataset, which is kept as it is",
			"found", found, "url", redactURL(spec.URL))
		r.restoreDone, r.restoreErr, r.restoreRetry = *spec, "", time.Time{}
		return false
	}
	if *spec != r.restoreFailed {
		r.restoreFails, r.restoreRetry = 0, time.Time{} // a new backup is tried at once
		r.restoreWait.reset()
	}
	if err := spec.check(); err != nil {
		if err.Error() != r.restoreErr {
			r.log.Error("cannot restore from backup; redis-server stays stopped", "error", err)
		}
		r.restoreErr, r.restoreFailed, r.restoreRetry = err.Error(), *spec, time.Time{}
		return true
	}
	if r.fenced || time.Now().Before(r.restoreRetry) {
		return true
	}
	ctx, cancel := context.WithCancel(context.Background())
	job := &restoreJob{spec: *spec, files: dataFilesOf(r.fragment), cancel: cancel, began: time.Now()}
	job.total.Store(-1)
	r.restoreJob = job
	r.log.Info("restoring the dataset from backup", "url", redactURL(spec.URL), "sha256", spec.SHA256)
	r.jobs.Go(func() {
		defer cancel()
		keys, err := r.restore(ctx, job)
		select {
		case r.restores <- restoreResult{job: job, keys: keys, err: err}:
		case <-ctx.Done(): // abandoned, or the manager stops: no one waits for it
		}
	})
	return true
}

// abandonRestore lets the restore under way go, at once: it can place
// nothing after this, and what it leaves, the next attempt or the next
// start removes.
func (r *reconciler) abandonRestore(why string) {
	if job := r.restoreJob; job != nil {
		r.log.Info("abandoning the restore: "+why, "url", redactURL(job.spec.URL))
		if job.abandon() {
			r.log.Warn("the abandoned restore had put its backup in place already: it is the dataset now", "url", redactURL(job.spec.URL))
		}
		r.restoreJob = nil
	}
}

// restoreEnded takes a restore's outcome: the dataset is in place and
// redis-server may start, or the attempt is retried with backoff. An
// abandoned job's outcome comes late, if ever, and counts for nothing.
func (r *reconciler) restoreEnded(res restoreResult) {
	if res.job != r.restoreJob {
		return
	}
	r.restoreJob = nil
	switch {
	case res.err == nil:
		r.restoreDone, r.restoreErr, r.restoreFails, r.restoreRetry = res.job.spec, "", 0, time.Time{}
		r.restoreWait.reset()
		r.log.Info("restored the dataset from backup", "url", redactURL(res.job.spec.URL), "bytes", res.job.got.Load(),
			"keys", res.keys, "seconds", time.Since(res.job.began).Seconds())
	default:
		r.restoreFails++
		wait := r.restoreWait.next()
		r.restoreFailed, r.restoreRetry = res.job.spec, time.Now().Add(wait)
		r.restoreErr = fmt.Sprintf("restoring from backup failed (attempt %d; the next in %s): %v", r.restoreFails, wait, res.err)
		attrs := []any{"url", redactURL(res.job.spec.URL), "error", res.err, "attempt", r.restoreFails, "retryIn", wait.String()}
		if re := (*restoreError)(nil); errors.As(res.err, &re) && re.detail != nil {
			attrs = append(attrs, "detail", re.detail.Error())
		}
		r.log.Error("restoring from backup failed; redis-server stays stopped", attrs...)
	}
	r.applyView(r.view)
}

// retryRestore tries a failed restore again once its backoff is over.
func (r *reconciler) retryRestore() {
	if r.restoreJob == nil && !r.fenced && !r.restoreRetry.IsZero() && time.Now().After(r.restoreRetry) {
		r.applyView(r.view)
	}
}

// restoreBackoff is the wait after a first failed restore, doubled after
// each further one, up to five minutes.
const restoreBackoff = 5 * time.Second

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
// runs it writes only the progress counters. An abandoned job is let go at
// once: its goroutine may still be blocked in a read, but it can no longer
// put anything in place, so nothing waits for it to end.
type restoreJob struct {
	spec    restoreSpec
	files   dataFiles // the names it restores to
	cancel  context.CancelFunc
	placing sync.Mutex // held while the backup is put in place, and to abandon the job
	placed  bool       // under placing
	began   time.Time
	got     atomic.Int64
	total   atomic.Int64 // -1 while unknown, and until the source shows it is an RDB
}

// abandon cancels the job and returns once it cannot place anything: if it
// is putting its backup in place just then, once that is done, and says
// whether it did. Place checks the cancellation under the lock, so past it
// no placing is under way or to come.
func (j *restoreJob) abandon() (placed bool) {
	j.cancel()
	j.placing.Lock()
	defer j.placing.Unlock()
	return j.placed
}

func (j *restoreJob) progress() string {
	got, total := j.got.Load(), j.total.Load()
	if total < 0 {
		return byteSize(got) + " so far"
	}
	return fmt.Sprintf("%s of %s (%.0f%%)", byteSize(got), byteSize(total), 100*float64(got)/float64(max(total, 1)))
}

// restoreResult reports how a job ended.
type restoreResult struct {
	job  *restoreJob
	keys int64
	err  error
}

// restoreError is how an attempt failed, told twice. What the status and
// the open endpoints say is the step that failed, and, only of a source that
// showed itself an RDB file, how: of any other source, a spec author could
// otherwise read there what the pod can open or reach, how large a file is,
// or its hash. The log has the detail.
type restoreError struct {
	public string
	detail error // for the log; nil when public says it all
}

func (e *restoreError) Error() string { return e.public }

// errDownload is every failure to open or read a source not yet shown to
// be an RDB file: that it failed, not why.
func errDownload(detail error) error {
	return &restoreError{public: "the download failed (the manager's log says why)", detail: detail}
}

// restorer fetches, checks and places backups in the data directory.
type restorer struct {
	dir, redisServer string
	start            startFunc
	stall            time.Duration // a download that receives nothing for this long is abandoned
	forbidden        []string      // files no backup may be read from: see openFile
	log              *slog.Logger
}

func newRestorer(s *settings, start startFunc, log *slog.Logger) *restorer {
	return &restorer{dir: s.dataDir, redisServer: s.redisServer, start: start, stall: s.restoreStall, forbidden: ownFiles(s), log: log}
}

// restoreTempPrefix starts the names of a restore's temp directories in
// the private directory.
const restoreTempPrefix = "restore-"

// run restores job's backup. On any error it leaves nothing behind; a job
// abandoned while blocked in a read leaves its temp directory until it
// ends, or until the manager's next start.
func (rs *restorer) run(ctx context.Context, job *restoreJob) (int64, error) {
	src, total, err := rs.open(ctx, job)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	// Nothing more is read, counted or shown of a source that is no RDB.
	head := make([]byte, rdbHeaderLen)
	if _, err := io.ReadFull(src, head); err != nil {
		return 0, errDownload(err)
	}
	if _, ok := rdbVersion(head); !ok {
		return 0, &restoreError{public: "the source is not an RDB file"}
	}
	job.total.Store(total)
	room := &roomWriter{dir: rs.dir}
	if total > 0 && !room.fits(total) {
		return 0, &restoreError{public: fmt.Sprintf("the backup would leave the data directory with less than %s free", byteSize(room.reserve))}
	}
	work, err := privateTemp(rs.dir, restoreTempPrefix)
	if err != nil {
		return 0, &restoreError{public: "cannot write the backup into the data directory", detail: err}
	}
	defer os.RemoveAll(work) // once linked into place, these names go
	tmp, err := os.OpenFile(filepath.Join(work, "backup.rdb"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, &restoreError{public: "cannot write the backup into the data directory", detail: err}
	}
	room.f = tmp
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(room, h), io.MultiReader(bytes.NewReader(head), src))
	src.Close()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	var stalled *stallError
	switch {
	case errors.Is(err, errNoRoom):
		return 0, &restoreError{public: fmt.Sprintf("the download stopped: it would have left the data directory with less than %s free", byteSize(room.reserve))}
	case errors.As(err, &stalled):
		return 0, &restoreError{public: stalled.Error()}
	case errors.Is(err, io.ErrUnexpectedEOF), err == nil && total >= 0 && job.got.Load() != total:
		return 0, &restoreError{public: "the download is truncated: the source ended before its announced length", detail: err}
	case err != nil:
		return 0, &restoreError{public: "the download failed after it began (the manager's log says why)", detail: err}
	}
	if hex.EncodeToString(h.Sum(nil)) != job.spec.SHA256 {
		return 0, &restoreError{public: "the backup does not match spec.bootstrap.restore.sha256: refusing it"}
	}
	if err := rs.checkRDB(ctx, tmp.Name()); err != nil {
		return 0, err
	}
	placed, err := rs.place(ctx, job, work, tmp.Name())
	if err != nil {
		return 0, err
	}
	return rdbFileKeys(placed), nil
}

// open starts reading the backup, and returns its size when the source
// tells it (-1 when not). Reads are counted into job.got, and report
// progress every 10 s.
func (rs *restorer) open(ctx context.Context, job *restoreJob) (io.ReadCloser, int64, error) {
	u, _ := url.Parse(job.spec.URL) // checked
	if u.Scheme == "file" {
		f, size, err := rs.openFile(u.Path)
		if err != nil {
			return nil, 0, errDownload(err)
		}
		return &progressReader{ReadCloser: f, ctx: ctx, job: job, log: rs.log}, size, nil
	}
	// The connection is the backup's alone, and closed with it.
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			DisableKeepAlives:   true,
			DisableCompression:  true, // the checksum is of the file, not of an encoding of it
		},
		CheckRedirect: checkRestoreRedirect,
	}
	// Each wait, for the answer and then for each read, ends after the
	// stall time: the timer cancels the request.
	reqCtx, cancel := context.WithCancel(ctx)
	stalled := &atomic.Bool{}
	timer := time.AfterFunc(rs.stall, func() { stalled.Store(true); cancel() })
	stop := func() { timer.Stop(); cancel() }
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, job.spec.URL, nil)
	if err != nil {
		stop()
		return nil, 0, errDownload(errors.New("not a URL"))
	}
	resp, err := client.Do(req)
	switch {
	case err != nil && stalled.Load():
		stop()
		return nil, 0, errDownload(fmt.Errorf("no answer for %s", rs.stall))
	case err != nil:
		stop()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // it quotes the whole URL
		}
		return nil, 0, errDownload(err)
	case resp.StatusCode != http.StatusOK:
		stop()
		resp.Body.Close()
		return nil, 0, errDownload(fmt.Errorf("the server answered %s", resp.Status))
	}
	body := &stallReader{ReadCloser: resp.Body, timer: timer, stall: rs.stall, stalled: stalled, stop: stop}
	return &progressReader{ReadCloser: body, ctx: ctx, job: job, log: rs.log}, resp.ContentLength, nil
}

// maxRestoreRedirects bounds the redirects a download follows.
const maxRestoreRedirects = 3

// checkRestoreRedirect follows a few redirects, and only within the scheme
// of the URL the spec gives: no https source sends the download to plain
// http, nor any to another kind of address than the spec author chose.
func checkRestoreRedirect(req *http.Request, via []*http.Request) error {
	switch {
	case len(via) > maxRestoreRedirects:
		return fmt.Errorf("more than %d redirects", maxRestoreRedirects)
	case req.URL.Scheme != via[0].URL.Scheme:
		return fmt.Errorf("a redirect from %s to %s", via[0].URL.Scheme, req.URL.Scheme)
	}
	return nil
}

// Kernel file systems, whose files look regular but are no backup, and
// which describe the pod and its processes (/proc/self/environ).
const (
	procSuperMagic = 0x9fa0
	sysfsMagic     = 0x62656572
)

// openFile opens a file:// backup: a regular file that is none of the
// manager's own (its credentials, its redis.conf, what its private
// directory holds) nor a kernel file. It is opened without blocking, for
// a FIFO or a device would hang the open, or never end.
func (rs *restorer) openFile(path string) (*os.File, int64, error) {
	real, err := filepath.EvalSymlinks(path)
	private, perr := filepath.EvalSymlinks(privateDir(rs.dir))
	if err == nil && perr == nil && strings.HasPrefix(real, private+string(filepath.Separator)) {
		return nil, 0, errors.New("it is in the manager's private directory")
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, 0, errors.Unwrap(err) // the path is the URL's
	}
	fi, err := f.Stat()
	var fs syscall.Statfs_t
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("it is not a regular file but a %s", fi.Mode().Type())
	case syscall.Fstatfs(int(f.Fd()), &fs) == nil && (fs.Type == procSuperMagic || fs.Type == sysfsMagic):
		err = errors.New("it is a kernel file (/proc, /sys)")
	case slices.ContainsFunc(rs.forbidden, func(p string) bool { st, err := os.Stat(p); return err == nil && os.SameFile(st, fi) }):
		err = errors.New("it is one of the manager's own files, which are never a backup")
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// serviceAccountToken is where Kubernetes mounts the pod's token.
const serviceAccountToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// ownFiles are the files the manager reads its credentials and
// configuration from: no backup is ever read from one of them, or from a
// link to one.
func ownFiles(s *settings) []string {
	files := []string{serviceAccountToken, s.confPath()}
	for _, p := range []string{s.kubeconfig, s.clusterFile, s.operatorTokenFile, s.tlsKey} {
		if p != "" {
			files = append(files, p)
		}
	}
	return files
}

// roomWriter writes a download into the data directory while that leaves
// it room: a source of unknown length (chunked HTTP, a file that grows)
// must not fill the volume Redis saves to. The free space is measured
// again only when what was written since would take it below the reserve.
type roomWriter struct {
	f       *os.File
	dir     string
	reserve int64
	free    int64 // as last measured, less what was written since
	known   bool
}

var errNoRoom = errors.New("the data directory is almost full")

// fits measures the free space and says whether n more bytes leave the
// reserve: a twentieth of the volume, at most 256 MiB, for what Redis
// writes right after the restore. Without a measure, it does not refuse.
func (w *roomWriter) fits(n int64) bool {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(w.dir, &fs); err != nil {
		w.free, w.reserve = math.MaxInt64, 0
	} else {
		w.free, w.reserve = int64(fs.Bavail)*fs.Bsize, min(int64(fs.Blocks)*fs.Bsize/20, 256<<20)
	}
	w.known = true
	return w.free-n >= w.reserve
}

func (w *roomWriter) Write(p []byte) (int, error) {
	if n := int64(len(p)); !w.known || w.free-n < w.reserve {
		if !w.fits(n) {
			return 0, errNoRoom
		}
	}
	n, err := w.f.Write(p)
	w.free -= int64(n)
	return n, err
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

// stallError: the source stopped sending.
type stallError struct{ stall time.Duration }

func (e *stallError) Error() string {
	return fmt.Sprintf("the download stalled: no data for %s", e.stall)
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if n > 0 {
		s.timer.Reset(s.stall)
	}
	if err != nil && err != io.EOF && s.stalled.Load() {
		err = &stallError{s.stall}
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.stop()
	return s.ReadCloser.Close()
}

// progressReader counts what is read and logs progress every 10 s. An
// abandoned job reads no further.
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
	return n, err
}

// checkRDB has redis-check-rdb read the whole backup when it is installed:
// the one beside redis-server first, for it is of the same build. The
// backup began as an RDB file, and matches its checksum, so what the tool
// says of it tells the spec author nothing new.
func (rs *restorer) checkRDB(ctx context.Context, path string) error {
	tool := filepath.Join(filepath.Dir(rs.redisServer), "redis-check-rdb")
	if st, err := os.Stat(tool); err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		var err error
		if tool, err = exec.LookPath("redis-check-rdb"); err != nil {
			rs.log.Info("redis-check-rdb is not installed; the backup is checked by its checksum only")
			return nil
		}
	}
	out, ws, err := runChild(ctx, rs.start, []string{tool, path}, rs.dir, time.Hour, "")
	switch {
	case err != nil:
		return &restoreError{public: "cannot run redis-check-rdb", detail: err}
	case !ws.Exited() || ws.ExitStatus() != 0:
		return &restoreError{public: "redis-check-rdb refuses the backup: " + rdbCheckError(out)}
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
// a new AOF directory, built aside in work and renamed into place whole.
// It returns the path of the RDB placed. An abandoned job places nothing:
// it is cancelled before it is abandoned, and placing holds the lock.
func (rs *restorer) place(ctx context.Context, job *restoreJob, work, tmp string) (string, error) {
	job.placing.Lock()
	defer job.placing.Unlock()
	df := job.files
	if !df.aof {
		dest := filepath.Join(rs.dir, df.rdb)
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := os.Link(tmp, dest); err != nil {
			return "", &restoreError{public: "cannot put the backup in place as " + df.rdb, detail: err}
		}
		job.placed = true
		return dest, rs.durable()
	}
	aside := filepath.Join(work, "aof")
	base := df.aofName + ".1.base.rdb"
	err := os.Mkdir(aside, 0o700)
	if err == nil {
		err = os.Link(tmp, filepath.Join(aside, base))
	}
	if err == nil {
		err = writeFileAtomic(filepath.Join(aside, df.aofName+".manifest"), []byte("file "+quoteArg(base)+" seq 1 type b\n"), 0o600)
	}
	if err == nil {
		err = os.Chmod(aside, 0o750)
	}
	if err != nil {
		return "", &restoreError{public: "cannot write the backup into the data directory", detail: err}
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	// A rename takes the place of an empty directory, never of a full one.
	dest := filepath.Join(rs.dir, df.aofDir)
	if err := os.Rename(aside, dest); err != nil {
		return "", &restoreError{public: "cannot put the backup in place as " + df.aofDir, detail: err}
	}
	job.placed = true
	return filepath.Join(dest, base), rs.durable()
}

// durable makes the backup's place in the data directory survive a crash
// of the node. It is in place either way: a restore that fails here finds
// it at its next attempt, and keeps it.
func (rs *restorer) durable() error {
	if err := syncDir(rs.dir); err != nil {
		return &restoreError{public: "cannot make the backup's place in the data directory durable", detail: err}
	}
	return nil
}
