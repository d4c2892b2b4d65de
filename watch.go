package main

// The manager follows one RedisCluster object and reports back to it. The
// source of the object is a file in local mode; a reconciler turns each new
// view of it, and each new look at Redis, into redis.conf, into whether
// redis-server should run, and into this pod's status entry.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// redisCluster is the part of the RedisCluster object the manager reads.
type redisCluster struct {
	Metadata objectMeta    `json:"metadata"`
	Spec     clusterSpec   `json:"spec"`
	Status   clusterStatus `json:"status"`
}

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Generation  int64             `json:"generation,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type clusterSpec struct {
	Instances     int     `json:"instances"`
	TargetPrimary string  `json:"targetPrimary"`
	ConfigMapRef  *keyRef `json:"configMapRef"`
	AuthSecretRef *keyRef `json:"authSecretRef"`
	Replication   struct {
		MaxLagBytes int64 `json:"maxLagBytes"`
	} `json:"replication"`
}

type keyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

type clusterStatus struct {
	CurrentPrimary  string                    `json:"currentPrimary,omitempty"`
	InstancesStatus map[string]instanceStatus `json:"instancesStatus,omitempty"`
}

func (rc *redisCluster) targetPrimary() string {
	if rc.Spec.TargetPrimary != "" {
		return rc.Spec.TargetPrimary
	}
	return rc.Metadata.Name + "-0"
}

// instanceStatus is status.instancesStatus[<pod>] and the body of /v1/status.
// No field is omitted when empty: a merge patch must be able to clear it.
type instanceStatus struct {
	Role               string    `json:"role"`
	Address            string    `json:"address"`
	Ready              bool      `json:"ready"`
	NotReadyReason     string    `json:"notReadyReason"`
	Fenced             bool      `json:"fenced"`
	MasterLinkStatus   string    `json:"masterLinkStatus"`
	ReplicationID      string    `json:"replicationID"`
	ReplicationOffset  int64     `json:"replicationOffset"`
	LagBytes           int64     `json:"lagBytes"`
	ConnectedReplicas  int64     `json:"connectedReplicas"`
	UsedMemoryBytes    int64     `json:"usedMemoryBytes"`
	RedisVersion       string    `json:"redisVersion"`
	ManagerVersion     string    `json:"managerVersion"`
	ExecutableHash     string    `json:"executableHash"`
	ConfigHash         string    `json:"configHash"`
	PendingRestart     []string  `json:"pendingRestart"`
	Restarts           int       `json:"restarts"`
	LastError          string    `json:"lastError"`
	ObservedGeneration int64     `json:"observedGeneration"`
	UpdatedAt          time.Time `json:"updatedAt"`
}

// clusterView is everything the manager reads from its source at one moment.
type clusterView struct {
	cluster  redisCluster
	fragment string // the ConfigMap's redis.conf fragment
	password string // from the Secret; empty without authSecretRef
}

// localSource reads the cluster from a multi-document YAML file and keeps
// the instances' status entries as files beside it.
type localSource struct {
	path, statusDir     string
	cluster, namespace  string
	pod                 string
	lastFile, lastPeers []byte
	beat                atomic.Int64
}

func newLocalSource(path, cluster, namespace, pod string) *localSource {
	s := &localSource{path: path, statusDir: path + ".status", cluster: cluster, namespace: namespace, pod: pod}
	s.beat.Store(time.Now().UnixNano())
	return s
}

// localPoll is how often the file and the other instances' entries are read;
// they are small, and reading them is cheaper than a notification mechanism.
const localPoll = 250 * time.Millisecond

// run sends a new view whenever the file or another instance's entry
// changes, or an error when the file no longer makes a usable view.
func (s *localSource) run(ctx context.Context, views chan clusterView, errs chan error) {
	t := time.NewTicker(localPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.beat.Store(time.Now().UnixNano())
		file, ferr := os.ReadFile(s.path)
		peers := s.readPeers()
		if ferr == nil && bytes.Equal(file, s.lastFile) && bytes.Equal(peers, s.lastPeers) {
			continue
		}
		s.lastFile, s.lastPeers = file, peers
		v, err := s.load()
		if err != nil {
			offer(errs, err)
			continue
		}
		offer(views, v)
	}
}

// readPeers returns the other instances' entries, concatenated, so that a
// change in any of them is seen; this pod's own writes are no news to it.
func (s *localSource) readPeers() []byte {
	var all []byte
	entries, _ := os.ReadDir(s.statusDir)
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || name == s.pod+".json" || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(s.statusDir, name))
		all = append(append(append(all, name...), 0), b...)
	}
	return all
}

// load reads the file into a view: the RedisCluster named by --cluster, the
// ConfigMap and Secret it references, and the status entries beside it.
func (s *localSource) load() (clusterView, error) {
	var v clusterView
	data, err := os.ReadFile(s.path)
	if err != nil {
		return v, fmt.Errorf("read cluster file: %w", err)
	}
	docs := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var found bool
	configMaps := map[string]map[string]string{}
	secrets := map[string]map[string][]byte{}
	for i := 1; ; i++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return v, fmt.Errorf("cluster file %s: %w", s.path, err)
		}
		var head struct {
			Kind     string     `json:"kind"`
			Metadata objectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return v, fmt.Errorf("cluster file %s, document %d: %w", s.path, i, err)
		}
		if head.Metadata.Namespace != "" && head.Metadata.Namespace != s.namespace {
			continue
		}
		switch head.Kind {
		case "RedisCluster":
			if head.Metadata.Name == s.cluster {
				if err := yaml.Unmarshal(doc, &v.cluster); err != nil {
					return v, fmt.Errorf("cluster file %s, RedisCluster %s: %w", s.path, s.cluster, err)
				}
				found = true
			}
		case "ConfigMap":
			var cm struct {
				Data map[string]string `json:"data"`
			}
			if err := yaml.Unmarshal(doc, &cm); err != nil {
				return v, fmt.Errorf("cluster file %s, ConfigMap %s: %w", s.path, head.Metadata.Name, err)
			}
			configMaps[head.Metadata.Name] = cm.Data
		case "Secret":
			var sec struct {
				Data       map[string][]byte `json:"data"`
				StringData map[string]string `json:"stringData"`
			}
			// The error would quote the document, and with it the secret.
			if err := yaml.Unmarshal(doc, &sec); err != nil {
				return v, fmt.Errorf("cluster file %s: Secret %s is not valid", s.path, head.Metadata.Name)
			}
			if sec.Data == nil {
				sec.Data = map[string][]byte{}
			}
			for k, val := range sec.StringData {
				sec.Data[k] = []byte(val)
			}
			secrets[head.Metadata.Name] = sec.Data
		}
	}
	if !found {
		return v, fmt.Errorf("cluster file %s holds no RedisCluster named %q in namespace %q", s.path, s.cluster, s.namespace)
	}
	if ref := v.cluster.Spec.ConfigMapRef; ref != nil {
		frag, ok := configMaps[ref.Name][ref.Key]
		if !ok {
			return v, fmt.Errorf("cluster file %s holds no ConfigMap %s with key %q", s.path, ref.Name, ref.Key)
		}
		v.fragment = frag
	}
	if ref := v.cluster.Spec.AuthSecretRef; ref != nil {
		pw, ok := secrets[ref.Name][ref.Key]
		if !ok {
			return v, fmt.Errorf("cluster file %s holds no Secret %s with key %q", s.path, ref.Name, ref.Key)
		}
		v.password = strings.TrimRight(string(pw), "\r\n")
	}
	v.cluster.Status.InstancesStatus = s.readEntries()
	return v, nil
}

func (s *localSource) readEntries() map[string]instanceStatus {
	out := map[string]instanceStatus{}
	entries, _ := os.ReadDir(s.statusDir)
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		var st instanceStatus
		if b, err := os.ReadFile(filepath.Join(s.statusDir, e.Name())); err == nil && yaml.Unmarshal(b, &st) == nil {
			out[name] = st
		}
	}
	return out
}

func (s *localSource) writeStatus(_ context.Context, st instanceStatus) error {
	if err := os.MkdirAll(s.statusDir, 0o755); err != nil {
		return fmt.Errorf("status directory: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(s.statusDir, s.pod+".json"), append(b, '\n'), 0o644)
}

// Status writes: a change that matters (role, readiness, errors) goes out at
// once; a change in figures alone (offsets, memory) at most every
// figuresEvery; with no change at all, a heartbeat every heartbeatEvery.
const (
	figuresEvery   = 10 * time.Second
	heartbeatEvery = time.Minute
)

// probeState is what the HTTP handlers serve, published by the reconciler.
type probeState struct {
	status        instanceStatus
	ready         bool
	reason        string
	started       bool
	startupReason string
	loadedPercent float64
	etaSeconds    int64
	lastAnswer    time.Time // redis-server last answered INFO
}

// reconciler owns the desired configuration and this pod's status.
type reconciler struct {
	log      *slog.Logger
	settings *settings
	sup      *supervisor
	writer   interface {
		writeStatus(context.Context, instanceStatus) error
	}
	exeHash string

	published atomic.Pointer[probeState]
	password  atomic.Pointer[string] // for the manager's own Redis connections
	beat      atomic.Int64

	view       clusterView
	fragment   []directive // the last good fragment
	fragmentOK bool        // there is one
	wanted     bool        // redis-server should run
	role       desiredRole
	conf       string // redis.conf as last written
	viewErr    string // the source's latest complaint
	confErr    string // why the latest fragment was refused
	obs        *observation
	lastAnswer time.Time
	written    instanceStatus
	writtenAt  time.Time
}

func newReconciler(r *reconciler) *reconciler {
	empty := ""
	r.password.Store(&empty)
	r.fragment, r.fragmentOK = previousFragment(r.settings.confPath())
	r.published.Store(&probeState{reason: "starting", startupReason: "starting"})
	r.beat.Store(time.Now().UnixNano())
	return r
}

// run reacts to the source, to Redis, and to time until ctx ends. It holds
// views back until its first one, so that nothing starts on a guess.
func (r *reconciler) run(ctx context.Context, first clusterView, views <-chan clusterView, errs <-chan error, observations <-chan *observation) {
	r.applyView(first)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.publish(ctx)
		select {
		case <-ctx.Done():
			return
		case v := <-views:
			r.viewErr = ""
			r.applyView(v)
		case err := <-errs:
			if msg := err.Error(); msg != r.viewErr {
				r.log.Error("cannot use the cluster's new state; keeping the last good one", "error", err)
				r.viewErr = msg
			}
		case o := <-observations:
			r.obs = o
			if o.err == nil {
				r.lastAnswer = o.at
			}
			r.follow()
		case <-tick.C:
		}
	}
}

// applyView renders redis.conf for the new view. A refused fragment keeps
// the last good one in force but does not hold up what else changed.
func (r *reconciler) applyView(v clusterView) {
	r.view = v
	if frag, err := parseFragment(v.fragment); err != nil {
		if r.confErr != err.Error() {
			r.log.Error("refusing the new redis.conf fragment; the last good configuration stays", "error", err)
		}
		r.confErr = err.Error()
	} else {
		r.fragment, r.fragmentOK, r.confErr = frag, true, ""
	}
	r.password.Store(&v.password)
	r.role = roleFor(&v.cluster, r.settings.podName)
	if !r.fragmentOK {
		r.setWanted(false) // never a configuration we did not check
		return
	}
	conf, err := renderConfig(r.fragment, podConfig{
		dataDir:      r.settings.dataDir,
		port:         r.settings.redisPort,
		announceHost: r.settings.announceHost,
		replicaOf:    r.role.replicaOf,
		password:     v.password,
	})
	if err != nil {
		r.confErr = err.Error()
		return
	}
	if conf != r.conf {
		if err := writeFileAtomic(r.settings.confPath(), []byte(conf), 0o600); err != nil {
			r.confErr = err.Error()
			r.log.Error("cannot write redis.conf", "error", err)
			return
		}
		r.conf = conf
		r.log.Info("wrote redis.conf", "configHash", configHash(conf))
	}
	wanted := r.role.primary || r.role.replicaOf != ""
	if !wanted && r.wanted != wanted {
		r.log.Info("waiting for the target primary to publish its address", "targetPrimary", r.role.target)
	}
	r.setWanted(wanted)
}

func (r *reconciler) setWanted(run bool) {
	r.wanted = run
	r.sup.setWanted(run)
}

// follow keeps a running replica pointed at the target's current address.
func (r *reconciler) follow() {
	moved, err := followPrimary(localAddr(r.settings.redisPort), *r.password.Load(), r.obs, r.role)
	switch {
	case err != nil:
		r.log.Warn("cannot re-point the replica at the target primary", "error", err)
	case moved:
		r.log.Info("re-pointed the replica at the target primary", "targetPrimary", r.role.target, "address", r.role.replicaOf)
	}
}

// publish computes the status, hands it to the HTTP handlers, and writes it
// to the source when it changed enough or the heartbeat is due.
func (r *reconciler) publish(ctx context.Context) {
	r.beat.Store(time.Now().UnixNano())
	sup := r.sup.snapshot()
	ps := &probeState{lastAnswer: r.lastAnswer}
	st := instanceStatus{
		Role:               "none",
		Address:            joinHostPort(r.settings.announceHost, fmt.Sprint(r.settings.redisPort)),
		ManagerVersion:     version,
		ExecutableHash:     r.exeHash,
		Restarts:           sup.restarts,
		ObservedGeneration: r.view.cluster.Metadata.Generation,
		LastError:          firstNonEmpty(r.viewErr, r.confErr),
		PendingRestart:     []string{},
	}
	if sup.running {
		st.ConfigHash = configHash(sup.startedConf)
		st.PendingRestart = pendingRestart(sup.startedConf, r.conf)
	}
	obs := r.obs
	if obs != nil && !sup.running {
		obs = nil // what we saw was of a process that is gone
	}
	if obs != nil && obs.err == nil {
		i := obs.info
		switch obs.role() {
		case "master":
			st.Role = "master"
		case "slave":
			st.Role = "replica"
			st.MasterLinkStatus = i["master_link_status"]
			st.LagBytes = lagBytes(obs)
		}
		st.ReplicationID = i["master_replid"]
		st.ReplicationOffset = i.int("master_repl_offset")
		st.ConnectedReplicas = i.int("connected_slaves")
		st.UsedMemoryBytes = i.int("used_memory")
		st.RedisVersion = i["redis_version"]
	}
	// r.wanted, not sup.wanted: the supervisor may not have heard yet.
	switch {
	case !r.wanted && !r.fragmentOK:
		ps.reason = "no valid redis.conf fragment yet: " + r.confErr
		ps.started = true
	case !r.wanted:
		ps.reason = fmt.Sprintf("waiting for the target primary %s to publish its address", r.role.target)
		ps.started = true
	case !sup.running && !sup.retryAt.IsZero():
		ps.reason = fmt.Sprintf("redis-server exited (%s); restarting", sup.lastExit)
		ps.startupReason = ps.reason
	case !sup.running:
		ps.reason, ps.startupReason = "redis-server is starting", "redis-server is starting"
	default:
		ps.ready, ps.reason = readiness(obs, r.role, r.view.cluster.Spec.Replication.MaxLagBytes)
		switch {
		case obs == nil || obs.err != nil:
			ps.startupReason = "redis-server does not answer yet"
		case obs.loading():
			ps.startupReason = "redis-server is loading its dataset"
			ps.loadedPercent = obs.info.float("loading_loaded_perc")
			ps.etaSeconds = obs.info.int("loading_eta_seconds")
		default:
			ps.started = true
		}
	}
	st.Ready, st.NotReadyReason = ps.ready, ps.reason
	ps.status = st
	ps.status.UpdatedAt = time.Now().UTC()
	r.published.Store(ps)

	since := time.Since(r.writtenAt)
	switch {
	case r.writtenAt.IsZero(), !sameStatus(st, r.written, false), since >= heartbeatEvery:
	case !sameStatus(st, r.written, true) && since >= figuresEvery:
	default:
		return
	}
	if err := r.writer.writeStatus(ctx, ps.status); err != nil {
		r.log.Warn("cannot write status", "error", err)
		return
	}
	r.written, r.writtenAt = st, time.Now()
}

// sameStatus compares two entries; with figures false, it ignores the
// figures that move with every write (offsets, memory).
func sameStatus(a, b instanceStatus, figures bool) bool {
	if !figures {
		a.ReplicationOffset, a.LagBytes, a.UsedMemoryBytes = b.ReplicationOffset, b.LagBytes, b.UsedMemoryBytes
	}
	a.UpdatedAt = b.UpdatedAt
	return reflect.DeepEqual(a, b)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
