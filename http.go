package main

// Probes for the kubelet, the instance's status for the operator and for
// curl, and the operator's commands. Probes never talk to Redis: they serve
// what the reconciler last published, so a hung Redis cannot pile up probe
// connections, and read the loops' heartbeats, so a hung manager fails its
// liveness probe.

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
