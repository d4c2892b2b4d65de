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
	"os"
	"sync"
	"time"
)

// `redis-operator instance`: the manager of one Redis pod, put together.
// It inherits what an upgraded-away manager left, wires the parts (the
// reaper, the supervisor, the source of the RedisCluster, the observer, the
// reconciler, the status writer, HTTP), runs their loops, and on the way
// out stops redis-server gracefully before anything else goes.

// runInstance runs the manager until ctx ends, then stops redis-server
// gracefully and returns.
func runInstance(ctx context.Context, s *settings, stdout io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	base := newLogger(s.logFormat, stdout)
	log := base.With("logger", "manager")
	// A manager that replaced another in place inherits its redis-server,
	// its listener and its log pipe.
	inherited, err := takeHandoff()
	if err != nil {
		return err
	}
	if inherited != nil {
		counts.upgrades.Store(inherited.Upgrades)
	}
	clearPrivateDir(s.dataDir)
	removeLegacyHandoff(s.dataDir)
	// Until its loops run, a manager that adopted a redis-server must not
	// just return on an error: as PID 1 its exit would kill redis-server
	// with no chance to save. It stops it the way a stop would.
	looping := false
	if inherited != nil && inherited.RedisPID > 0 {
		defer func() {
			if !looping {
				stopAdopted(inherited, s.redisPort, s.shutdownTimeout, log)
			}
		}()
	}

	news := newFeed()
	if inherited != nil && inherited.View != nil {
		v := inherited.View
		news.view(clusterView{cluster: v.Cluster, fragment: v.Fragment, password: v.Password})
	}
	source, err := newSource(s, base, news)
	if err != nil {
		return err
	}
	var tf *tlsFiles
	if s.tlsCert != "" {
		// Across an upgrade, files caught mid-renewal get a few seconds.
		for try := 0; ; try++ {
			if tf, err = loadTLS(s.tlsCert, s.tlsKey, s.tlsCA, log); err == nil || inherited == nil || try == 50 {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			return configError{err}
		}
	}
	var ln net.Listener
	if inherited != nil {
		f := inheritedFile(inherited.Listener, "http-listener")
		ln, err = net.FileListener(f)
		f.Close()
	} else {
		ln, err = net.Listen("tcp", s.httpAddr)
	}
	if err != nil {
		return configErrorf("http: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	exeHash, err := "", error(nil)
	if inherited != nil && inherited.NewHash != "" {
		exeHash = inherited.NewHash // checked on upload; hashing it again would lengthen the handover
	} else if exeHash, err = executableHash(); err != nil {
		log.Warn("cannot hash this binary", "error", err)
	}

	// Children are reaped until the very end, after redis-server is gone.
	reapCtx, stopReaping := context.WithCancel(context.Background())
	defer stopReaping()
	reaper := newReaper(log)
	sup := &supervisor{}
	if inherited != nil {
		sup.logR, sup.logW = inheritedFile(inherited.LogR, "redis-log"), inheritedFile(inherited.LogW, "redis-log-w")
		sup.adopt(inherited, reaper) // before the reaper's first sweep
	}
	go reaper.run(reapCtx)

	rec := newReconciler(&reconciler{log: log, settings: s, exeHash: exeHash,
		checkConfig: func(frag []directive) error { return checkFragment(s.redisServer, s.dataDir, frag, reaper.start) },
		restorer:    &restorer{dir: s.dataDir, redisServer: s.redisServer, start: reaper.start, stall: s.restoreStall, forbidden: ownFiles(s), log: log},
	})
	sup.log, sup.redisLog, sup.reaper, sup.redisServer, sup.confPath = log, base.With("logger", "redis"), reaper, s.redisServer, s.confPath()
	sup.dataDir, sup.port, sup.shutdown, sup.credentials = s.dataDir, s.redisPort, s.shutdownTimeout, rec.credentials
	// A primary that comes back empty after a crash (persistence off, or
	// its files lost) would have its replicas copy the loss.
	sup.restartGuard = func(conf string) string {
		held := rec.primaryKeys.Load()
		if held == 0 {
			return ""
		}
		frag, _ := parseConf(conf)
		if datasetKeys(s.dataDir, frag) > 0 {
			return ""
		}
		return fmt.Sprintf("refusing to restart redis-server as the primary with an empty dataset: it held %d keys, and its replicas would copy the loss; move targetPrimary to a replica", held)
	}
	if _, err := newSupervisor(sup); err != nil {
		return err
	}
	rec.sup = sup
	if inherited != nil {
		inherited.seed(rec)
	}
	obsCh := make(chan *observation, 1)
	rec.poke = make(chan struct{}, 1)
	obs := &observer{log: log, port: s.redisPort, passwords: rec.credentials, isPeer: rec.isPeer, out: obsCh, poke: rec.poke}
	obs.beat.Store(time.Now().UnixNano())

	log.Info("starting", "version", version, "commit", commit, "pod", s.podName, "cluster", s.cluster,
		"clusterFile", s.clusterFile, "dataDir", s.dataDir, "redisPort", s.redisPort, "announceHost", s.announceHost, "pid", os.Getpid())

	// The loops stop when ctx ends; the supervisor, which owns the slow
	// part (a graceful stop), is waited for before HTTP goes away.
	looping = true
	var loops sync.WaitGroup
	loops.Go(func() { source.run(ctx, news) })
	loops.Go(func() { obs.run(ctx) })
	loops.Go(func() { rec.run(ctx, news, obsCh) })
	loops.Go(func() { runStatusWriter(ctx, log, rec.statuses, source.writeStatus) })
	supDone := make(chan struct{})
	go func() { sup.run(ctx); close(supDone) }()

	upd := &updater{exe: exe, start: reaper.start, ctx: ctx, log: log, requests: make(chan upgradeRequest)}
	hl := &health{rec: rec, sup: sup, obs: obs, source: source.heartbeat}
	var srv *httpServer
	srvErr := make(chan error, 1)
	serve := func(ln net.Listener) {
		srv = newHTTPServer(s, log, hl, tf, upd)
		go func() { srvErr <- srv.serve(ln) }()
	}
	if inherited != nil {
		// Probes are answered from the first look at the adopted
		// redis-server on: until then they wait in the listen queue.
		select {
		case <-rec.observed:
		case <-time.After(2 * time.Second):
		}
	}
	serve(ln)
	if inherited != nil {
		answerUpgrade(inherited, exeHash, log)
	}

	err = nil
wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("stop requested")
			break wait
		case err = <-srvErr:
			if errors.Is(err, errHandingOver) {
				continue // an upgrade that did not take place; it serves again
			}
			log.Error("http server failed; stopping", "error", err)
			cancel()
			break wait
		case req := <-upd.requests:
			// Returns only when the exec did not happen.
			next, uerr := execUpgrade(ctx, req, exe, s.dataDir, rec, sup, reaper, srv, ln)
			upd.busy.Unlock()
			if errors.Is(uerr, errStopping) {
				log.Info("stop requested during an upgrade; the new binary runs at the next start")
				break wait
			}
			log.Error("the upgrade did not take place", "error", uerr)
			if next == nil {
				cancel() // no listener left to serve on
				err = uerr
				break wait
			}
			if next != ln {
				ln = next
				serve(ln)
			}
		}
	}
	<-supDone
	loops.Wait()
	// The last word in the status: this instance is gone, not serving.
	finalCtx, cancelFinal := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelFinal()
	if rec.haveView {
		if err := source.writeStatus(finalCtx, rec.stopped("stopped")); err != nil {
			log.Warn("cannot write the final status", "error", err)
		}
	}
	srv.Shutdown(finalCtx)
	log.Info("stopped")
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func newLogger(format string, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h)
}

// executableHash is the SHA-256 of the running binary, to tell versions apart
// even when two builds carry the same version string.
func executableHash() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	f, err := os.Open(self)
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
