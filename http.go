package main

// The manager's HTTP endpoints, all in one route table: the kubelet's
// probes (probes.go), the instance's status and metrics for the operator
// and for curl (status.go, metrics.go), and the operator's commands
// (restart.go, backup.go, upgrade.go), which need credentials
// (operator.go). One server serves them, over HTTPS when configured
// (tls.go), and hands its listener over across an in-place upgrade.

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// defaultHTTPAddr is where the manager serves unless told otherwise, and
// where the status command looks.
const defaultHTTPAddr = ":8000"

// errBusy refuses an operator command while another holds the instance:
// a backup, a restart and an upgrade each need it to themselves.
const errBusy = "a backup, a restart or an upgrade is in progress"

// endpoints are the HTTP handlers and what they read and drive.
type endpoints struct {
	settings *settings
	log      *slog.Logger
	rec      *reconciler
	sup      *supervisor
	obs      *observer
	source   func() time.Time // the source's heartbeat
	upd      *updater
	op       *operator
}

func newEndpoints(s *settings, log *slog.Logger, rec *reconciler, sup *supervisor, obs *observer, source clusterSource, upd *updater) *endpoints {
	return &endpoints{settings: s, log: log, rec: rec, sup: sup, obs: obs, source: source.heartbeat, upd: upd,
		op: &operator{tokenFile: s.operatorTokenFile, clientCA: s.tlsCA != "", log: log}}
}

// routes is the route table.
func (h *endpoints) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("GET /startupz", h.startupz)
	mux.HandleFunc("GET /v1/status", h.status)
	mux.HandleFunc("GET /metrics", h.metrics)
	mux.HandleFunc("PUT /v1/update", h.op.authorize(h.upd.handle))
	mux.HandleFunc("POST /v1/restart", h.op.authorize(h.exclusive(h.restart)))
	mux.HandleFunc("GET /v1/backup", h.op.authorize(h.exclusive(h.backup)))
	// Only an upload has a body worth the name; the update handler sets
	// its own, larger limit.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/update" {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		}
		mux.ServeHTTP(w, r)
	})
}

// exclusive runs an operator command that needs the instance to itself:
// a backup, a restart and an upgrade (updater.handle) each refuse while
// another runs.
func (h *endpoints) exclusive(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.upd.busy.TryLock() {
			writeJSON(w, http.StatusConflict, map[string]any{"error": errBusy})
			return
		}
		defer h.upd.busy.Unlock()
		next(w, r)
	}
}

// status serves this instance's status entry, as the reconciler last
// published it.
func (h *endpoints) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.rec.published.Load().status)
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

func newHTTPServer(handler http.Handler, log *slog.Logger, tf *tlsFiles) *httpServer {
	srv := &http.Server{
		Handler:           handler,
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
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
