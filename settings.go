package main

// How the instance was started: its flags, each with an environment
// variable beside it, and the defaults that depend on the machine. A
// mistake here is a configError: exit 2, one line, before anything starts.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// settings is how this instance was started.
type settings struct {
	cluster, podName, namespace string
	clusterFile, kubeconfig     string
	dataDir, redisServer        string
	redisPort, sentinelPort     int
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

// sentinelAddr is where clients reach this manager's discovery port; ""
// when it is off.
func (s *settings) sentinelAddr() string {
	if s.sentinelPort == 0 {
		return ""
	}
	return net.JoinHostPort(s.announceHost, strconv.Itoa(s.sentinelPort))
}

// announceAddr is where the other instances reach this one's redis-server.
func (s *settings) announceAddr() string {
	return net.JoinHostPort(s.announceHost, strconv.Itoa(s.redisPort))
}

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
	fs.IntVar(&s.sentinelPort, "sentinel-port", 26379, "the discovery port, which speaks the Sentinel protocol to clients looking for the primary; 0 turns it off (env SENTINEL_PORT)")
	env["sentinel-port"] = "SENTINEL_PORT"
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
		// Service named redis (SENTINEL_PORT for one named sentinel); that
		// is not this setting.
		if (name == "redis-port" || name == "sentinel-port") && strings.Contains(v, "://") {
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
	if s.sentinelPort < 0 || s.sentinelPort > 65535 || s.sentinelPort == s.redisPort {
		return configErrorf("--sentinel-port %d is not a port, or is the Redis port", s.sentinelPort)
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
