package main

// Probes for the kubelet, the instance's status for the operator and for
// curl, and the operator's commands. Probes never talk to Redis: they serve
// what the reconciler last published, so a hung Redis cannot pile up probe
// connections, and read the loops' heartbeats, so a hung manager fails its
// liveness probe.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Liveness: a loop that has not beaten for loopStale is stuck; a running
// redis-server that has not answered for redisHung is hung. Both are far
// above the loops' own periods and timeouts.
const (
	loopStale   = 15 * time.Second
	sourceStale = 2 * time.Minute
	redisHung   = 30 * time.Second
)

// errBusy refuses an operator command while another holds the instance:
// a backup, a restart and an upgrade each need it to themselves.
const errBusy = "a backup, a restart or an upgrade is in progress"

// defaultHTTPAddr is where the manager serves unless told otherwise, and
// where the status command looks.
const defaultHTTPAddr = ":8000"

type health struct {
	rec    *reconciler
	sup    *supervisor
	obs    *observer
	source func() time.Time
}

// problem says why the manager is not alive, or "" when it is.
func (h *health) problem() string {
	now := time.Now()
	sup := h.sup.snapshot()
	for _, l := range []struct {
		name  string
		beat  time.Time
		stale time.Duration
	}{
		{"reconciler", time.Unix(0, h.rec.beat.Load()), loopStale},
		{"observer", time.Unix(0, h.obs.beat.Load()), loopStale},
		{"supervisor", sup.beat, loopStale},
		// Waits on the API server, and backs off up to 30 s when it is away.
		{"source", h.source(), sourceStale},
	} {
		if now.Sub(l.beat) > l.stale {
			return fmt.Sprintf("the %s loop has not run for %s", l.name, now.Sub(l.beat).Round(time.Second))
		}
	}
	ps := h.rec.published.Load()
	switch {
	case !sup.wanted, !sup.running: // stopped on purpose, or restarting
		return ""
	case now.Sub(sup.startedAt) > redisHung && now.Sub(ps.lastAnswer) > redisHung:
		return fmt.Sprintf("redis-server (pid %d) has not answered for %s", sup.pid, now.Sub(ps.lastAnswer).Round(time.Second))
	}
	return ""
}

type httpServer struct {
	*http.Server
	tls *tlsFiles // nil for plain HTTP

	// For an upgrade, which must stop taking connections without closing
	// any it took: see quiesce.
	stopAccepting atomic.Bool
	tcp           *net.TCPListener
	served        chan struct{}
	mu            sync.Mutex
	busy          map[net.Conn]time.Time // connections in StateNew or StateActive, since when
}

func newHTTPServer(s *settings, log *slog.Logger, h *health, tf *tlsFiles, upd *updater) *httpServer {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if p := h.problem(); p != "" {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"healthy": false, "reason": p})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"healthy": true})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ps := h.rec.published.Load()
		if !ps.ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": ps.reason})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true, "role": ps.status.Role})
	})
	mux.HandleFunc("GET /startupz", func(w http.ResponseWriter, r *http.Request) {
		ps := h.rec.published.Load()
		if !ps.started {
			body := map[string]any{"started": false, "reason": ps.startupReason}
			if ps.startupReason == "redis-server is loading its dataset" {
				body["loading"], body["loadedPercent"], body["etaSeconds"] = true, ps.loadedPercent, ps.etaSeconds
			}
			writeJSON(w, http.StatusServiceUnavailable, body)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"started": true})
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, h.rec.published.Load().status)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(renderMetrics(h.rec.published.Load(), time.Now()))
	})
	op := &operator{tokenFile: s.operatorTokenFile, clientCA: s.tlsCA != "", log: log}
	mux.HandleFunc("PUT /v1/update", op.authorize(upd.handle))
	mux.HandleFunc("POST /v1/restart", op.authorize(func(w http.ResponseWriter, r *http.Request) {
		if !upd.busy.TryLock() {
			writeJSON(w, http.StatusConflict, map[string]any{"error": errBusy})
			return
		}
		defer upd.busy.Unlock()
		if why := h.restartLoses(); why != "" {
			writeJSON(w, http.StatusConflict, map[string]any{"error": why})
			return
		}
		// A graceful stop may take the whole shutdown budget.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.shutdownTimeout + 2*time.Minute))
		if err := h.restartStarts(); err != nil {
			log.Error("refusing to restart redis-server: the new configuration cannot start", "error", err)
			writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": "refusing to restart redis-server, which keeps running as it is: " + err.Error()})
			return
		}
		log.Info("restarting redis-server, as the operator asked", "remote", r.RemoteAddr)
		before := h.sup.snapshot().pid
		err := h.sup.restart(r.Context())
		switch {
		case errors.Is(err, errNotRunning):
			writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error()})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
		default:
			// Done is when it answers again (loading its data counts): a
			// caller must be able to go on at once.
			pid := h.sup.snapshot().pid
			answered, exited := h.awaitAnswer(r.Context(), pid)
			if exited != "" {
				writeJSON(w, http.StatusInternalServerError, map[string]any{"error": "redis-server did not come back: " + exited, "oldPid": before, "pid": pid})
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"restarted": true, "oldPid": before, "pid": pid, "answering": answered})
		}
	}))
	mux.HandleFunc("GET /v1/backup", op.authorize(func(w http.ResponseWriter, r *http.Request) {
		// One at a time, and not under a restart or an upgrade, which would
		// cut it: each backup costs Redis a fork.
		if !upd.busy.TryLock() {
			writeJSON(w, http.StatusConflict, map[string]any{"error": errBusy})
			return
		}
		defer upd.busy.Unlock()
		// HTTP/1.0 ends a body by closing the connection, so a backup cut
		// short would look whole; chunked encoding tells them apart.
		if !r.ProtoAtLeast(1, 1) {
			writeJSON(w, http.StatusHTTPVersionNotSupported, map[string]any{"error": "a backup needs HTTP/1.1 or later"})
			return
		}
		if sup := h.sup.snapshot(); !sup.running {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "redis-server is not running"})
			return
		}
		h.backup(w, r, log)
	}))
	srv := &http.Server{
		// Only an upload has a body worth the name; the update handler
		// sets its own, larger limit.
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/update" {
				r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			}
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	hs := &httpServer{Server: srv, tls: tf, served: make(chan struct{}), busy: map[net.Conn]time.Time{}}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		hs.mu.Lock()
		defer hs.mu.Unlock()
		if st == http.StateNew || st == http.StateActive {
			hs.busy[c] = time.Now()
		} else {
			delete(hs.busy, c)
		}
	}
	return hs
}

// restartStarts has redis-server check, as it would start, the
// configuration a restart would start it on: the fragment in redis.conf
// was checked when it came, but what Redis reads at start (a module's
// file, say) may have changed since. A check that could not be made does
// not refuse the restart.
func (h *health) restartStarts() error {
	frag, ok := previousFragment(h.rec.settings.confPath())
	if !ok || h.rec.checkConfig == nil {
		return nil
	}
	if err := h.rec.checkConfig(frag); errors.As(err, new(refusal)) {
		return err
	}
	return nil
}

// awaitAnswer waits, within a minute, for the redis-server of pid to answer
// PING, with PONG or with LOADING; exited says why it stopped instead.
func (h *health) awaitAnswer(ctx context.Context, pid int) (answered bool, exited string) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if sup := h.sup.snapshot(); !sup.running || sup.pid != pid {
			return false, sup.lastExit
		}
		err := withRedis(localAddr(h.rec.settings.redisPort), h.rec.credentials(), redisTimeout, func(c redis.Conn) error {
			_, err := c.Do("PING")
			if _, isReply := err.(redis.Error); isReply && strings.HasPrefix(err.Error(), "LOADING") {
				return nil
			}
			return err
		})
		if err == nil {
			return true, ""
		}
		select {
		case <-ctx.Done():
			return false, ""
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// backup streams a snapshot of this instance's dataset. Its length and
// SHA-256 come as trailers, known only once it has all gone by: Redis
// streams a diskless snapshot without announcing its length. A snapshot
// cut short ends the response without its last chunk, so that no client
// takes a part for the whole.
func (h *health) backup(w http.ResponseWriter, r *http.Request, log *slog.Logger) {
	began := time.Now()
	rc := http.NewResponseController(w)
	started := false
	res, err := streamSnapshot(r.Context(), localAddr(h.rec.settings.redisPort), h.rec.credentials(), func(m snapshotMeta) io.Writer {
		started = true
		hd := w.Header()
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", fmt.Sprintf("%s-%s.rdb", h.rec.settings.podName, began.UTC().Format("20060102T150405Z"))))
		hd.Set("X-Redis-Replication-Id", m.replID)
		hd.Set("X-Redis-Replication-Offset", strconv.FormatInt(m.offset, 10))
		if m.size >= 0 {
			hd.Set("X-Backup-Length", strconv.FormatInt(m.size, 10))
		}
		hd.Set("Trailer", "X-Backup-Sha256, X-Backup-Length")
		w.WriteHeader(http.StatusOK)
		return deadlineWriter{w, rc}
	})
	switch {
	case err != nil && r.Context().Err() != nil:
		log.Info("backup abandoned by the client", "bytes", res.size, "remote", r.RemoteAddr)
	case err != nil && !started:
		log.Warn("backup refused", "error", err, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
	case err != nil:
		log.Error("backup cut short", "error", err, "bytes", res.size, "remote", r.RemoteAddr)
		panic(http.ErrAbortHandler)
	default:
		w.Header().Set("X-Backup-Sha256", res.sha256)
		w.Header().Set("X-Backup-Length", strconv.FormatInt(res.size, 10))
		log.Info("backup streamed", "bytes", res.size, "sha256", res.sha256, "seconds", time.Since(began).Seconds(), "remote", r.RemoteAddr)
	}
}

// deadlineWriter gives each write a minute: a backup may take long, but a
// client that stops reading must not hold Redis's fork for ever.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.rc.SetWriteDeadline(time.Now().Add(time.Minute))
	return d.w.Write(p)
}

// restartLoses says why a restart of the primary would lose its dataset,
// or "": with no save point and no AOF it would come back empty, and with a
// pending change of its data files' names it would load other files; its
// replicas would copy the loss. Redis is asked, for its persistence may have
// changed live since it started; a primary that cannot be asked is not
// restarted.
func (h *health) restartLoses() string {
	keys := h.rec.primaryKeys.Load()
	if keys == 0 {
		return ""
	}
	for _, name := range h.rec.published.Load().status.PendingRestart {
		if name == "dbfilename" || name == "appendfilename" || name == "appenddirname" {
			return fmt.Sprintf("refusing to restart the primary: it holds %d keys and the pending %s would have it load other files; switch over first", keys, name)
		}
	}
	var save, aof []string
	err := withRedis(localAddr(h.rec.settings.redisPort), h.rec.credentials(), redisTimeout, func(c redis.Conn) error {
		var err error
		if save, err = redis.Strings(c.Do("CONFIG", "GET", "save")); err != nil {
			return err
		}
		aof, err = redis.Strings(c.Do("CONFIG", "GET", "appendonly"))
		return err
	})
	switch {
	case err != nil || len(save) != 2 || len(aof) != 2:
		return fmt.Sprintf("refusing to restart the primary: cannot ask redis-server whether it persists its %d keys: %v", keys, err)
	case !persistent(confValues{"save": {{save[1]}}, "appendonly": {{aof[1]}}}):
		return fmt.Sprintf("refusing to restart the primary: it holds %d keys and persists none (no save point, no AOF), so it would come back empty; switch over first", keys)
	}
	return ""
}

// operator guards the commands that change an instance. They need a client
// certificate verified against --tls-client-ca-file, or the bearer token in
// --operator-token-file, read at each request so that a rotated token (a
// re-mounted Secret) counts at once. With neither configured they are
// refused outright, for an open restart endpoint on every Redis pod would
// be an outage waiting for a caller.
type operator struct {
	tokenFile string
	clientCA  bool
	log       *slog.Logger
	refusals  logLimit // of the lines about requests refused for their credentials
	noToken   logLimit // of those about a token that cannot be read
}

func (o *operator) authorize(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case o.clientCA && r.TLS != nil && len(r.TLS.VerifiedChains) > 0:
			// Verified against the CA, and meant for a client: a server
			// certificate of the same CA (a pod's own) does not pass.
			leaf := r.TLS.VerifiedChains[0][0]
			if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
				o.refuse(w, r)
				return
			}
			o.log.Info("operator command", "path", r.URL.Path, "clientCertificate", leaf.Subject.String())
			next(w, r)
			return
		case o.tokenFile == "" && !o.clientCA:
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "operator commands are disabled: neither --operator-token-file nor --tls-client-ca-file is configured"})
			return
		case o.tokenFile == "":
			o.refuse(w, r)
			return
		}
		data, err := os.ReadFile(o.tokenFile)
		token := strings.TrimSpace(string(data))
		if err != nil || token == "" {
			if dropped, ok := o.noToken.allow(); ok {
				o.log.Error("cannot read the operator token; refusing operator commands", "file", o.tokenFile, "error", err, "refusalsNotLogged", dropped)
			}
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "operator commands are disabled: the operator token cannot be read"})
			return
		}
		given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		// Compared as digests, in constant time: neither the token nor its
		// length shows in the timing.
		a, b := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			o.refuse(w, r)
			return
		}
		next(w, r)
	}
}

func (o *operator) refuse(w http.ResponseWriter, r *http.Request) {
	if dropped, ok := o.refusals.allow(); ok {
		o.log.Warn("refused an operator command without valid credentials", "path", r.URL.Path, "remote", r.RemoteAddr, "refusalsNotLogged", dropped)
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="redis-operator"`)
	writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "a valid bearer token or client certificate is required"})
}

// logLimit lets one line of a kind through every logLimitEvery, and counts
// those it holds back into the next: callers who need no credentials to be
// refused must not be able to flood the log.
type logLimit struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

const logLimitEvery = 10 * time.Second

// allow says whether to log now, and how many lines were held back since
// the last one logged.
func (l *logLimit) allow() (dropped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && time.Since(l.last) < logLimitEvery {
		l.dropped++
		return 0, false
	}
	dropped, l.dropped, l.last = l.dropped, 0, time.Now()
	return dropped, true
}

func (s *httpServer) serve(ln net.Listener) error {
	defer close(s.served)
	s.tcp, _ = ln.(*net.TCPListener)
	ln = acceptUntil{ln, s}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls.config())
	}
	return s.Serve(ln)
}

// errHandingOver ends Serve for an upgrade.
var errHandingOver = errors.New("handing the listener over")

// acceptUntil accepts until the server stops accepting for an upgrade.
type acceptUntil struct {
	net.Listener
	s *httpServer
}

func (a acceptUntil) Accept() (net.Conn, error) {
	c, err := a.Listener.Accept()
	if a.s.stopAccepting.Load() {
		if err == nil {
			return c, nil // taken: it is served
		}
		return nil, errHandingOver
	}
	return c, err
}

// quiesce stops taking connections, leaving new ones in the listen queue
// for the next manager, and waits for the requests it took to be answered.
// Unlike Shutdown, it never closes a connection whose request it has not
// answered: Shutdown drops a request that arrives on a new connection once
// it has begun.
func (s *httpServer) quiesce(timeout time.Duration) {
	s.SetKeepAlivesEnabled(false) // each answer now ends its connection
	s.stopAccepting.Store(true)
	if s.tcp != nil {
		s.tcp.SetDeadline(time.Now()) // wakes a pending Accept
	}
	deadline := time.After(timeout)
	select {
	case <-s.served:
	case <-deadline:
		return
	}
	for {
		// A connection that has sent nothing for a while (a TCP probe, an
		// idle client) is not waited for: the exec closes it.
		n := 0
		s.mu.Lock()
		for _, since := range s.busy {
			if time.Since(since) < 200*time.Millisecond {
				n++
			}
		}
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-deadline:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// tlsFiles serves the certificate, and verifies client certificates, as
// the files are now: a renewed certificate (cert-manager rewriting the
// Secret behind a volume) is used from the next handshake on, without a
// restart. Files that cannot be read keep the last good ones in use.
type tlsFiles struct {
	certFile, keyFile, caFile string
	log                       *slog.Logger

	mu                 sync.Mutex
	cert               *tls.Certificate
	pool               *x509.CertPool
	certStamp, caStamp string
	checked            time.Time
}

// loadTLS reads the files once, at start: a mistake there is a start error.
func loadTLS(certFile, keyFile, caFile string, log *slog.Logger) (*tlsFiles, error) {
	t := &tlsFiles{certFile: certFile, keyFile: keyFile, caFile: caFile, log: log}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// fileStamp changes when any of the files does.
func fileStamp(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d.%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return b.String()
}

// reload reads what changed; it is asked at most once a second.
func (t *tlsFiles) reload() error {
	if stamp := fileStamp(t.certFile, t.keyFile); stamp != t.certStamp {
		cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		if t.cert != nil {
			t.log.Info("serving a renewed TLS certificate", "file", t.certFile)
		}
		t.cert, t.certStamp = &cert, stamp
	}
	if stamp := fileStamp(t.caFile); t.caFile != "" && stamp != t.caStamp {
		pem, err := os.ReadFile(t.caFile)
		if err != nil {
			return fmt.Errorf("TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("TLS client CA %s holds no PEM certificate", t.caFile)
		}
		if t.pool != nil {
			t.log.Info("verifying client certificates against a renewed CA", "file", t.caFile)
		}
		t.pool, t.caStamp = pool, stamp
	}
	return nil
}

func (t *tlsFiles) current() (*tls.Certificate, *x509.CertPool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.checked) >= time.Second {
		t.checked = time.Now()
		if err := t.reload(); err != nil {
			t.log.Error("cannot read the renewed TLS files; serving with the last good ones", "error", err)
		}
	}
	return t.cert, t.pool
}

func (t *tlsFiles) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := t.current()
			c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}}
			if pool != nil {
				// Probes carry no certificate: asked for, not required.
				c.ClientAuth, c.ClientCAs = tls.VerifyClientCertIfGiven, pool
			}
			return c, nil
		},
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Metrics. /metrics is read from what the reconciler last published: the
// observer's INFO of each second and the manager's own counters. A scrape
// never waits on Redis, however slow it is, and costs it nothing: the
// INFO it shows was taken anyway.

// counts are the manager's counters; each is added to by the one goroutine
// that does what it counts.
var counts struct {
	statusPatches, statusPatchErrors atomic.Int64 // the status writer
	watchRestarts                    atomic.Int64 // the Kubernetes source
	configErrors                     atomic.Int64 // the reconciler
	upgrades                         atomic.Int64 // set from the handoff at start
}

// redisStale: an INFO older than this says redis-server is not answering.
const redisStale = 5 * time.Second

// metricsWriter writes the Prometheus text format, each family once.
type metricsWriter struct{ b strings.Builder }

func (m *metricsWriter) family(name, kind, help string) {
	fmt.Fprintf(&m.b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func (m *metricsWriter) sample(name string, v float64, labels ...string) {
	m.b.WriteString(name)
	if len(labels) > 0 {
		m.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				m.b.WriteByte(',')
			}
			fmt.Fprintf(&m.b, `%s="%s"`, labels[i], labelEscaper.Replace(labels[i+1]))
		}
		m.b.WriteByte('}')
	}
	m.b.WriteByte(' ')
	m.b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	m.b.WriteByte('\n')
}

func (m *metricsWriter) one(name, kind, help string, v float64, labels ...string) {
	m.family(name, kind, help)
	m.sample(name, v, labels...)
}

// labelEscaper escapes what the text format asks a label value to.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func flag01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func renderMetrics(ps *probeState, now time.Time) []byte {
	st := ps.status
	m := &metricsWriter{}
	m.one("redis_operator_build_info", "gauge", "The manager's build; always 1.", 1,
		"version", version, "commit", commit, "goversion", runtime.Version(), "executable_hash", st.ExecutableHash)
	m.family("redis_operator_role", "gauge", "1 for the role this instance runs as (none while stopped or fenced), 0 for the others.")
	for _, role := range []string{"master", "replica", "none"} {
		m.sample("redis_operator_role", flag01(st.Role == role), "role", role)
	}
	m.one("redis_operator_ready", "gauge", "1 while /readyz answers 200.", flag01(ps.ready))
	m.one("redis_operator_fenced", "gauge", "1 while the fence annotation names this instance.", flag01(st.Fenced))
	m.one("redis_operator_error", "gauge", "1 while the status entry carries a lastError.", flag01(st.LastError != ""))
	m.one("redis_operator_redis_restarts_total", "counter", "Unexpected exits of redis-server followed by a restart.", float64(st.Restarts))
	m.one("redis_operator_config_errors_total", "counter", "redis.conf fragments refused and live changes Redis refused.", float64(counts.configErrors.Load()))
	m.one("redis_operator_pending_restart_parameters", "gauge", "Parameters changed that apply only at redis-server's next restart.", float64(len(st.PendingRestart)))
	m.one("redis_operator_status_patches_total", "counter", "Status entries written.", float64(counts.statusPatches.Load()))
	m.one("redis_operator_status_patch_errors_total", "counter", "Status writes that failed (each is retried).", float64(counts.statusPatchErrors.Load()))
	m.one("redis_operator_watch_restarts_total", "counter", "Watches of the RedisCluster that ended and were listed again.", float64(counts.watchRestarts.Load()))
	m.one("redis_operator_upgrades_total", "counter", "In-place upgrades of this pod's manager.", float64(counts.upgrades.Load()))

	i := ps.info
	up := i != nil && now.Sub(ps.infoAt) < redisStale
	m.one("redis_up", "gauge", "1 when redis-server answered the manager's last INFO (one a second).", flag01(up))
	if !up {
		return []byte(m.b.String()) // no figure rather than an old one
	}
	num := func(key string) float64 { v, _ := strconv.ParseFloat(i[key], 64); return v }
	m.one("redis_loading", "gauge", "1 while redis-server loads its dataset.", flag01(i["loading"] == "1"))
	m.one("redis_uptime_seconds", "gauge", "Seconds since redis-server started.", num("uptime_in_seconds"))
	m.one("redis_used_memory_bytes", "gauge", "Memory Redis has allocated (used_memory).", num("used_memory"))
	m.one("redis_maxmemory_bytes", "gauge", "The maxmemory limit; 0 for none.", num("maxmemory"))
	m.one("redis_connected_clients", "gauge", "Client connections, replicas not included.", num("connected_clients"))
	m.one("redis_commands_processed_total", "counter", "Commands processed.", num("total_commands_processed"))
	m.one("redis_keyspace_hits_total", "counter", "Lookups that found their key.", num("keyspace_hits"))
	m.one("redis_keyspace_misses_total", "counter", "Lookups that did not find their key.", num("keyspace_misses"))
	m.one("redis_evicted_keys_total", "counter", "Keys evicted for maxmemory.", num("evicted_keys"))
	m.one("redis_expired_keys_total", "counter", "Keys expired.", num("expired_keys"))
	m.one("redis_db_keys", "gauge", "Keys in all databases.", float64(i.keys()))
	m.one("redis_replication_offset_bytes", "gauge", "This instance's replication offset (master_repl_offset).", num("master_repl_offset"))
	m.one("redis_connected_replicas", "gauge", "Replicas connected to this instance.", num("connected_slaves"))
	if i.role() == "slave" {
		m.one("redis_master_link_up", "gauge", "1 while this replica's link to its primary is up.", flag01(i["master_link_status"] == "up"))
		m.one("redis_replication_lag_bytes", "gauge", "How far this replica is behind its primary, in bytes of the replication stream.", float64(st.LagBytes))
	}
	m.one("redis_rdb_last_save_ok", "gauge", "1 when the last RDB save succeeded.", flag01(i["rdb_last_bgsave_status"] == "ok"))
	m.one("redis_rdb_last_save_timestamp_seconds", "gauge", "When the last RDB save succeeded, Unix time.", num("rdb_last_save_time"))
	m.one("redis_aof_enabled", "gauge", "1 when appendonly is on.", flag01(i["aof_enabled"] == "1"))
	m.one("redis_aof_last_write_ok", "gauge", "1 when the last write to the AOF succeeded.", flag01(i["aof_last_write_status"] == "ok"))
	return []byte(m.b.String())
}

// statusCommand prints an instance's /v1/status as a table, for a human at
// `kubectl exec`: by default this pod's own, at the address its manager
// listens on (HTTP_ADDR, as the instance reads it).
func statusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", cmp.Or(os.Getenv("HTTP_ADDR"), defaultHTTPAddr), "the manager's HTTP address: host:port, or a URL (https://...)")
	caFile := fs.String("ca-file", "", "over HTTPS, trust this CA (default: the system's)")
	if err := fs.Parse(args); err != nil {
		return configErrorf("%v", err)
	}
	if fs.NArg() > 0 {
		return configErrorf("usage: redis-operator status [--addr host:port|URL] [--ca-file FILE]")
	}
	base := *addr
	if !strings.Contains(base, "://") {
		host, port, err := net.SplitHostPort(base)
		if err != nil {
			return configErrorf("--addr %q: %v", base, err)
		}
		base = "http://" + net.JoinHostPort(cmp.Or(host, "127.0.0.1"), port)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return configErrorf("--ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return configErrorf("--ca-file %s: no certificate in it", *caFile)
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/v1/status", nil)
	if err != nil {
		return configErrorf("--addr %q: %v", *addr, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s answered %s", req.URL, resp.Status)
	}
	var st instanceStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("status: %s: %w", req.URL, err)
	}
	printStatus(stdout, st, time.Now())
	return nil
}

func printStatus(out io.Writer, st instanceStatus, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	ready := "ready"
	if !st.Ready {
		ready = "not ready: " + st.NotReadyReason
	}
	row("address", "%s", st.Address)
	row("role", "%s, %s", st.Role, ready)
	row("fenced", "%s", yesNo(st.Fenced))
	switch st.Role {
	case "replica":
		row("replication", "link %s, %d bytes behind, offset %d", st.MasterLinkStatus, st.LagBytes, st.ReplicationOffset)
	case "master":
		row("replication", "%d replicas connected, offset %d", st.ConnectedReplicas, st.ReplicationOffset)
	}
	row("keys", "%d", st.Keys)
	row("memory", "%s used", byteSize(st.UsedMemoryBytes))
	row("redis", "%s, restarted %d times", cmp.Or(st.RedisVersion, "-"), st.Restarts)
	hash := st.ExecutableHash
	if len(hash) > 12 {
		hash = hash[:12]
	}
	row("manager", "%s (sha256 %s)", st.ManagerVersion, hash)
	pending := "none"
	if len(st.PendingRestart) > 0 {
		pending = strings.Join(st.PendingRestart, ", ")
	}
	row("config", "hash %s, waiting for a restart: %s", cmp.Or(st.ConfigHash, "-"), pending)
	row("last error", "%s", cmp.Or(st.LastError, "-"))
	row("updated", "%s (%s ago)", st.UpdatedAt.Format(time.RFC3339), now.Sub(st.UpdatedAt).Round(time.Second))
	tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
