// GOMAXPROCS still follows the container's CPU limit at start; re-reading
// the cgroup every second for a limit that seldom changes would be a large
// part of what an idle manager costs.
//
//go:debug updatemaxprocs=0

// Command redis-operator is the instance manager of a Redis pod: it runs as
// PID 1, supervises redis-server, and follows the pod's RedisCluster.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	// Before anything else, so that a SIGTERM at any moment is a clean stop.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// configError is a mistake in how the manager was started: exit 2, one line.
type configError struct{ err error }

// errHelp ends a run that only printed its usage, as asked.
var errHelp = errors.New("help requested")

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

func configErrorf(format string, args ...any) error {
	return configError{fmt.Errorf(format, args...)}
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "redis-operator: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	if errors.As(err, new(configError)) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return configErrorf("usage: redis-operator instance|status|install DEST|version")
	}
	switch args[0] {
	case "version":
		fmt.Fprintf(stdout, "redis-operator %s (commit %s, %s, %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "install":
		switch {
		case len(args) == 2:
			return install(args[1], false)
		case len(args) == 3 && args[1] == "--keep-existing":
			return install(args[2], true)
		}
		return configErrorf("usage: redis-operator install [--keep-existing] DEST")
	case "instance":
		s, err := parseSettings(args[1:], stderr)
		if err != nil || s.checkOnly {
			return err
		}
		return runInstance(ctx, s, stdout)
	case "status":
		return statusCommand(ctx, args[1:], stdout, stderr)
	}
	return configErrorf("unknown command %q: want instance, status, install or version", args[0])
}

// install copies this binary to dest so that a reader of dest never sees a
// partial file, as an init container does into a volume shared with Redis.
// With keep, a binary already at dest stays: an init container that runs
// again in the same pod (its sandbox recreated after a node restart) must
// not put back the image's binary over one an in-place upgrade installed.
// Only a vetted binary is ever at dest, for both write it whole.
func install(dest string, keep bool) error {
	if _, err := os.Stat(dest); keep && err == nil {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("install: find this binary: %w", err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := writeFileAtomic(dest, data, 0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// settings is how this instance was started.
type settings struct {
	cluster, podName, namespace string
	clusterFile, kubeconfig     string
	dataDir, redisServer        string
	redisPort                   int
	announceHost, httpAddr      string
	operatorTokenFile           string
	tlsCert, tlsKey, tlsCA      string
	shutdownTimeout             time.Duration
	failoverTimeout             time.Duration
	rotationWindow              time.Duration
	restoreStall                time.Duration
	checkOnly                   bool
	logFormat                   string
}

func (s *settings) confPath() string { return filepath.Join(s.dataDir, confName) }

func parseSettings(args []string, stderr io.Writer) (*settings, error) {
	s := &settings{}
	fs := flag.NewFlagSet("redis-operator instance", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // a mistake is reported in one line, by exitCode
	env := map[string]string{}
	str := func(p *string, name, envName, def, usage string) {
		if envName != "" {
			env[name] = envName
			usage += " (env " + envName + ")"
		}
		fs.StringVar(p, name, def, usage)
	}
	str(&s.cluster, "cluster", "CLUSTER_NAME", "", "name of the RedisCluster object (required)")
	str(&s.podName, "pod-name", "POD_NAME", "", "this instance's name, its key in status.instancesStatus (default: hostname)")
	str(&s.namespace, "namespace", "POD_NAMESPACE", "", "namespace of the RedisCluster (default: the in-cluster namespace, else default)")
	str(&s.clusterFile, "cluster-file", "CLUSTER_FILE", "", "local mode: read the RedisCluster, ConfigMap and Secret from this YAML file")
	str(&s.kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig for the Kubernetes API (default: in-cluster config)")
	str(&s.dataDir, "data-dir", "REDIS_DATA_DIR", "/data", "Redis working directory; redis.conf is generated here")
	str(&s.redisServer, "redis-server", "REDIS_SERVER", "redis-server", "redis-server binary, a path or a name on PATH")
	str(&s.announceHost, "announce-host", "POD_IP", "", "host other instances use to reach this one (default: first non-loopback address)")
	str(&s.httpAddr, "http-addr", "HTTP_ADDR", defaultHTTPAddr, "address for probes and operator commands")
	str(&s.operatorTokenFile, "operator-token-file", "OPERATOR_TOKEN_FILE", "", "bearer token operator commands must present; re-read on change")
	str(&s.tlsCert, "tls-cert-file", "", "", "serve HTTPS with this certificate")
	str(&s.tlsKey, "tls-key-file", "", "", "the key of --tls-cert-file")
	str(&s.tlsCA, "tls-client-ca-file", "", "", "a client certificate verified against this CA also authorises operator commands")
	str(&s.logFormat, "log-format", "LOG_FORMAT", "json", "json or text")
	fs.IntVar(&s.redisPort, "redis-port", 6379, "Redis port (env REDIS_PORT)")
	env["redis-port"] = "REDIS_PORT"
	fs.DurationVar(&s.shutdownTimeout, "shutdown-timeout", 30*time.Second, "budget for a graceful stop on SIGTERM (env SHUTDOWN_TIMEOUT)")
	env["shutdown-timeout"] = "SHUTDOWN_TIMEOUT"
	fs.DurationVar(&s.failoverTimeout, "failover-timeout", 2*time.Second, "how long the target waits for an unreachable old primary before promoting itself (env FAILOVER_TIMEOUT)")
	env["failover-timeout"] = "FAILOVER_TIMEOUT"
	fs.DurationVar(&s.rotationWindow, "password-rotation-window", 5*time.Minute, "how long the old password keeps working after the Secret changes, for clients to move to the new one (env PASSWORD_ROTATION_WINDOW)")
	env["password-rotation-window"] = "PASSWORD_ROTATION_WINDOW"
	fs.DurationVar(&s.restoreStall, "restore-stall-timeout", time.Minute, "a backup download that receives nothing for this long is abandoned and tried again (env RESTORE_STALL_TIMEOUT)")
	env["restore-stall-timeout"] = "RESTORE_STALL_TIMEOUT"
	fs.BoolVar(&s.checkOnly, "check-settings", false, "check the flags and environment, then exit: how a new binary is vetted before an in-place upgrade")

	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stderr)
		fmt.Fprintln(stderr, "usage: redis-operator instance [flags]")
		fs.PrintDefaults()
		return nil, errHelp
	} else if err != nil {
		return nil, configError{err}
	}
	if fs.NArg() > 0 {
		return nil, configErrorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, envName := range env {
		v := os.Getenv(envName)
		// Kubernetes' service links set REDIS_PORT=tcp://host:port for a
		// Service named redis; that is not this setting.
		if name == "redis-port" && strings.Contains(v, "://") {
			continue
		}
		if v != "" && !set[name] {
			if err := fs.Set(name, v); err != nil {
				return nil, configErrorf("%s=%q: %w", envName, v, err)
			}
		}
	}
	return s, s.complete()
}

// complete fills in defaults that depend on the machine and checks what can
// be checked before anything starts.
func (s *settings) complete() error {
	if s.cluster == "" {
		return configErrorf("--cluster (or CLUSTER_NAME) is required")
	}
	if s.podName == "" {
		h, err := os.Hostname()
		if err != nil {
			return configErrorf("--pod-name not given and no hostname: %w", err)
		}
		s.podName = h
	}
	if s.namespace == "" {
		s.namespace = "default"
		if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
			s.namespace = strings.TrimSpace(string(b))
		}
	}
	if s.redisPort <= 0 || s.redisPort > 65535 {
		return configErrorf("--redis-port %d is not a port", s.redisPort)
	}
	if s.shutdownTimeout <= 0 || s.failoverTimeout <= 0 {
		return configErrorf("--shutdown-timeout and --failover-timeout must be positive")
	}
	if s.restoreStall <= 0 {
		return configErrorf("--restore-stall-timeout must be positive")
	}
	if s.rotationWindow < 0 {
		return configErrorf("--password-rotation-window must not be negative")
	}
	if s.logFormat != "json" && s.logFormat != "text" {
		return configErrorf("--log-format %q: want json or text", s.logFormat)
	}
	if (s.tlsCert == "") != (s.tlsKey == "") {
		return configErrorf("--tls-cert-file and --tls-key-file go together")
	}
	if s.tlsCA != "" && s.tlsCert == "" {
		return configErrorf("--tls-client-ca-file needs --tls-cert-file: client certificates come with HTTPS")
	}
	// redis-server runs in the data dir; relative paths would move with it.
	for _, p := range []*string{&s.dataDir, &s.clusterFile} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return configErrorf("%s: %w", *p, err)
		}
		*p = abs
	}
	path, err := exec.LookPath(s.redisServer)
	if err != nil {
		return configErrorf("redis-server: %w", err)
	}
	s.redisServer = path
	if err := checkDataDir(s.dataDir); err != nil {
		return configError{err}
	}
	if s.announceHost == "" {
		s.announceHost = firstAddress()
	}
	return nil
}

// firstAddress is the first non-loopback address of this host, IPv4 first;
// loopback when there is none, which suits one machine and nothing else.
func firstAddress() string {
	addrs, _ := net.InterfaceAddrs()
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	if v6 != "" {
		return v6
	}
	return "127.0.0.1"
}

func newLogger(format string, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h)
}

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

// clusterSource is where the RedisCluster comes from and its status goes.
type clusterSource interface {
	run(ctx context.Context, f *feed)
	writeStatus(ctx context.Context, u statusUpdate) error
	heartbeat() time.Time
}

// newSource connects to the cluster file or the Kubernetes API. A local
// file that does not make a view is a start error; the API may be away for
// a while, and the manager waits for it.
func newSource(s *settings, log *slog.Logger, f *feed) (clusterSource, error) {
	if s.clusterFile != "" {
		src := newLocalSource(s.clusterFile, s.cluster, s.namespace, s.podName)
		first, err := src.load()
		if err != nil {
			return nil, configError{err}
		}
		f.view(first)
		return src, nil
	}
	var cfg *rest.Config
	var err error
	if s.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", s.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, configErrorf("kubernetes client config (give --kubeconfig or --cluster-file outside a pod): %w", err)
	}
	cfg.UserAgent = "redis-operator-instance/" + version
	klog.SetSlogLogger(log.With("logger", "client-go"))
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, configErrorf("kubernetes client: %w", err)
	}
	return newKubeSource(client, s.namespace, s.cluster, s.podName, log.With("logger", "manager")), nil
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

// offer puts v into a one-slot channel, replacing a value not yet taken:
// the reader wants the latest state, never a backlog.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}
