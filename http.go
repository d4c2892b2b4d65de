package main

// Probes for the kubelet and the instance's status for the operator and for
// curl. Handlers never talk to Redis: they serve what the reconciler last
// published, so a hung Redis cannot pile up probe connections, and read the
// loops' heartbeats, so a hung manager fails its liveness probe.

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Liveness: a loop that has not beaten for loopStale is stuck; a running
// redis-server that has not answered for redisHung is hung. Both are far
// above the loops' own periods and timeouts.
const (
	loopStale   = 15 * time.Second
	sourceStale = 2 * time.Minute
	redisHung   = 30 * time.Second
)

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
	tls bool
}

func newHTTPServer(s *settings, log *slog.Logger, h *health) *httpServer {
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
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if s.tlsCert != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &httpServer{Server: srv, tls: s.tlsCert != ""}
}

func (s *httpServer) serve(ln net.Listener, certFile, keyFile string) error {
	if s.tls {
		return s.ServeTLS(ln, certFile, keyFile)
	}
	return s.Serve(ln)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
