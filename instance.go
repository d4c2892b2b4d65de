package main

// `redis-operator instance`: the manager of one Redis pod, put together.
// It takes what an upgraded-away manager left (handoff.go), makes the parts
// with what each depends on (the reaper, the supervisor, the source of the
// RedisCluster, the observer, the reconciler, the status writer, HTTP),
// runs their loops, and serves until it is told to stop; then redis-server
// stops gracefully before anything else goes.

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
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// manager is one instance's parts, wired.
type manager struct {
	settings  *settings
	log, base *slog.Logger
	inherited *handoff // nil unless this manager replaced another in place
	exe       string   // this binary, which an upgrade replaces
	exeHash   string

	reaper *reaper
	sup    *supervisor
	news   *feed
	source clusterSource
	obs    *observer
	rec    *reconciler
	upd    *updater
	api    *endpoints
	tls    *tlsFiles
	ln     net.Listener
	disc   *discovery   // nil when the discovery port is off
	discLn net.Listener // its listener
	srv    *httpServer
	srvErr chan error

	reaping     sync.WaitGroup // the reaper, which runs until the very end
	stopReaping context.CancelFunc
	loops       sync.WaitGroup
	supDone     chan struct{}
}

// runInstance runs the manager until ctx ends, then stops redis-server
// gracefully and returns.
func runInstance(ctx context.Context, s *settings, stdout io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m, err := newManager(ctx, s, stdout)
	if err != nil {
		return err
	}
	m.start(ctx)
	err = m.serve(ctx, cancel)
	m.stop()
	return err
}

// newManager makes the parts. A manager that adopted a redis-server must
// not just return on an error: as PID 1 its exit would kill redis-server
// with no chance to save. It stops it the way a stop would.
func newManager(ctx context.Context, s *settings, stdout io.Writer) (_ *manager, err error) {
	base := newLogger(s.logFormat, stdout)
	m := &manager{settings: s, base: base, log: base.With("logger", "manager"), srvErr: make(chan error, 1), supDone: make(chan struct{})}
	if m.inherited, err = takeHandoff(); err != nil {
		return nil, err
	}
	clearPrivateDir(s.dataDir)
	removeLegacyHandoff(s.dataDir)
	creds := newCredentials()
	lastTLS := readTLSFiles(s.dataDir, s.confPath())
	if lastTLS != nil {
		creds.setTLS(lastTLS.clientConfig(nil))
	}
	if m.inherited != nil {
		counts.upgrades.Store(m.inherited.Upgrades)
		m.inherited.seedCredentials(creds, s.podName)
	}
	primaryKeys := new(atomic.Int64)
	if err := m.startSupervision(creds, primaryKeys); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.sup.stopAdopted()
			m.stopReaping()
			m.reaping.Wait()
		}
	}()
	if err := m.connect(); err != nil {
		return nil, err
	}
	m.obs = newObserver(m.log, s.redisPort, creds)
	m.rec = newReconciler(s, m.log, reconcilerDeps{sup: m.sup, creds: creds, primaryKeys: primaryKeys, lookNow: m.obs.lookNow,
		exeHash: m.exeHash, inherited: m.inherited, discovery: m.disc, lastTLS: lastTLS,
		checkConfig: func(frag []directive) error { return checkFragment(s.redisServer, s.dataDir, frag, m.reaper.start) },
		restore:     newRestorer(s, m.reaper.start, m.log).run,
	})
	m.upd = newUpdater(ctx, m.exe, m.reaper.start, m.log)
	m.api = newEndpoints(s, m.log, m.rec, m.sup, m.obs, m.source, m.upd)
	return m, nil
}

// startSupervision makes the reaper and the supervisor, which adopts an
// inherited redis-server before the reaper's first sweep, and starts the
// reaper: children are reaped until the very end, after redis-server is
// gone.
func (m *manager) startSupervision(creds *credentials, primaryKeys *atomic.Int64) error {
	m.reaper = newReaper(m.log)
	sup, err := newSupervisor(m.settings, m.log, m.base.With("logger", "redis"), m.reaper, creds,
		emptyPrimaryGuard(m.settings.dataDir, primaryKeys), m.inherited)
	if err != nil {
		return err
	}
	m.sup = sup
	var reapCtx context.Context
	reapCtx, m.stopReaping = context.WithCancel(context.Background())
	m.reaping.Go(func() { m.reaper.run(reapCtx) })
	return nil
}

// connect makes what reaches outside: the source of the cluster, the TLS
// files, the HTTP listener (inherited across an upgrade), and this binary's
// path and hash.
func (m *manager) connect() error {
	s := m.settings
	m.news = newFeed()
	if h := m.inherited; h != nil && h.View != nil {
		m.news.view(clusterView{cluster: h.View.Cluster, fragment: h.View.Fragment, password: h.View.Password})
	}
	var err error
	if m.source, err = newSource(s, m.base, m.news); err != nil {
		return err
	}
	if m.tls, err = m.loadTLS(); err != nil {
		return configError{err}
	}
	if m.inherited != nil {
		f := inheritedFile(m.inherited.Listener, "http-listener")
		m.ln, err = net.FileListener(f)
		f.Close()
	} else {
		m.ln, err = net.Listen("tcp", s.httpAddr)
	}
	if err != nil {
		return configErrorf("http: %w", err)
	}
	if s.sentinelPort != 0 {
		if m.discLn, err = m.listenDiscovery(); err != nil {
			m.ln.Close()
			return configErrorf("the discovery port: %w", err)
		}
		m.disc = newDiscovery(m.log, s)
		if h := m.inherited; h != nil {
			m.disc.adopt(h.DiscoveryConns, h.DiscoveryMaster)
		}
	}
	if m.exe, err = os.Executable(); err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	if m.inherited != nil && m.inherited.NewHash != "" {
		m.exeHash = m.inherited.NewHash // checked on upload; hashing it again would lengthen the handover
	} else if m.exeHash, err = executableHash(m.exe); err != nil {
		m.log.Warn("cannot hash this binary", "error", err)
	}
	return nil
}

// listenDiscovery listens on the discovery port, or takes the listener the
// manager this one replaced left: clients that connect during the exec wait
// in its queue instead of being refused.
func (m *manager) listenDiscovery() (net.Listener, error) {
	if h := m.inherited; h != nil && h.Discovery > 2 {
		f := inheritedFile(h.Discovery, "discovery-listener")
		defer f.Close()
		return net.FileListener(f)
	}
	return net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(m.settings.sentinelPort)))
}

// loadTLS reads the HTTPS files, if any. Across an upgrade, files caught
// mid-renewal get a few seconds.
func (m *manager) loadTLS() (*tlsFiles, error) {
	s := m.settings
	if s.tlsCert == "" {
		return nil, nil
	}
	for try := 0; ; try++ {
		tf, err := loadTLS(s.tlsCert, s.tlsKey, s.tlsCA, m.log)
		if err == nil || m.inherited == nil || try == 50 {
			return tf, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// start runs the loops, which stop when ctx ends, then serves HTTP. The
// supervisor, which owns the slow part (a graceful stop), is waited for
// apart, before HTTP goes away.
func (m *manager) start(ctx context.Context) {
	s := m.settings
	m.log.Info("starting", "version", version, "commit", commit, "pod", s.podName, "cluster", s.cluster,
		"clusterFile", s.clusterFile, "dataDir", s.dataDir, "redisPort", s.redisPort, "announceHost", s.announceHost, "pid", os.Getpid())
	m.loops.Go(func() { m.source.run(ctx, m.news) })
	m.loops.Go(func() { m.obs.run(ctx) })
	m.loops.Go(func() { m.rec.run(ctx, m.news, m.obs.out) })
	m.loops.Go(func() { runStatusWriter(ctx, m.log, m.rec.statuses, m.source.writeStatus) })
	if m.disc != nil {
		m.loops.Go(func() { m.disc.serve(ctx, m.discLn) })
	}
	m.loops.Go(func() { trimFootprint(ctx, m.rec.observed, m.log) })
	go func() { m.sup.run(ctx); close(m.supDone) }()
	if m.inherited != nil {
		// Probes are answered from the first look at the adopted
		// redis-server on: until then they wait in the listen queue.
		select {
		case <-m.rec.observed:
		case <-time.After(2 * time.Second):
		}
	}
	m.serveOn(m.ln)
	if m.inherited != nil {
		answerUpgrade(m.inherited, m.exeHash, m.log)
	}
}

func (m *manager) serveOn(ln net.Listener) {
	m.ln, m.srv = ln, newHTTPServer(m.api.routes(), m.log, m.tls)
	srv := m.srv
	go func() { m.srvErr <- srv.serve(ln) }()
}

// serve waits for a stop, a failure of HTTP, or an upgrade to exec.
func (m *manager) serve(ctx context.Context, cancel context.CancelFunc) error {
	for {
		select {
		case <-ctx.Done():
			m.log.Info("stop requested")
			return nil
		case err := <-m.srvErr:
			if errors.Is(err, errHandingOver) {
				continue // an upgrade that did not take place; it serves again
			}
			m.log.Error("http server failed; stopping", "error", err)
			cancel()
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		case req := <-m.upd.requests:
			if stop, err := m.upgrade(ctx, req); stop {
				cancel()
				return err
			}
		}
	}
}

// upgrade execs the new binary an upload brought; it returns only when the
// exec did not happen, and says whether the manager must stop.
func (m *manager) upgrade(ctx context.Context, req upgradeRequest) (stop bool, err error) {
	next, err := execUpgrade(ctx, req, m.exe, m.settings.dataDir, m.rec, m.sup, m.reaper, m.srv, m.ln, m.disc, m.discLn)
	m.upd.busy.Unlock()
	switch {
	case errors.Is(err, errStopping):
		m.log.Info("stop requested during an upgrade; the new binary runs at the next start")
		return true, nil
	case next == nil:
		m.log.Error("the upgrade did not take place, and the listener is lost; stopping", "error", err)
		return true, err
	}
	m.log.Error("the upgrade did not take place", "error", err)
	if next != m.ln {
		m.serveOn(next)
	}
	return false, nil
}

// stop waits for redis-server to stop and the loops to end, writes the last
// word in the status (this instance is gone, not serving), and closes HTTP.
func (m *manager) stop() {
	<-m.supDone
	m.loops.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if m.rec.haveView {
		if err := m.source.writeStatus(ctx, m.rec.stopped("stopped")); err != nil {
			m.log.Warn("cannot write the final status", "error", err)
		}
	}
	m.srv.Shutdown(ctx)
	m.stopReaping()
	m.reaping.Wait()
	m.log.Info("stopped")
}

func newLogger(format string, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h)
}

// executableHash is the SHA-256 of the binary at path, to tell versions
// apart even when two builds carry the same version string.
func executableHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
