package main

// The manager follows one RedisCluster object and reports back to it. The
// source of the object is a file in local mode; a reconciler turns each new
// view of it, and each new look at Redis, into redis.conf, into whether
// redis-server should run, and into this pod's status entry.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
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
	Bootstrap struct {
		Restore *restoreSpec `json:"restore"`
	} `json:"bootstrap"`
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
	Keys               int64     `json:"keys"`
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
	seq      uint64 // stamped by the feed
}

// feed carries a source's news to the reconciler: the latest view and the
// latest complaint, each in a one-slot channel where newer replaces older,
// numbered so that the reconciler can tell which of the two came last.
type feed struct {
	views chan clusterView
	errs  chan sourceError
	seq   uint64 // owned by the one goroutine that sends
}

type sourceError struct {
	seq uint64
	err error
}

func newFeed() *feed {
	return &feed{views: make(chan clusterView, 1), errs: make(chan sourceError, 1)}
}

func (f *feed) view(v clusterView) {
	f.seq++
	v.seq = f.seq
	offer(f.views, v)
}

func (f *feed) fail(err error) {
	f.seq++
	offer(f.errs, sourceError{f.seq, err})
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
const localPoll = 100 * time.Millisecond

func (s *localSource) heartbeat() time.Time { return time.Unix(0, s.beat.Load()) }

// run sends a new view whenever the file or another instance's entry
// changes, or an error when the file no longer makes a usable view.
func (s *localSource) run(ctx context.Context, f *feed) {
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
			f.fail(err)
			continue
		}
		f.view(v)
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
			return v, fmt.Errorf("cluster file %s: document %d is not valid YAML%s", s.path, i, yamlErrorLine(err))
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
	v.cluster.Status.CurrentPrimary = readCurrentPrimary(s.statusDir)
	return v, nil
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// yamlErrorLine keeps only the line number of a YAML error: the rest may
// quote the document, and the document may be a Secret.
func yamlErrorLine(err error) string {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		return " (line " + m[1] + " of the document)"
	}
	return ""
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

func (s *localSource) writeStatus(_ context.Context, u statusUpdate) error {
	st := u.entry
	if err := os.MkdirAll(s.statusDir, 0o755); err != nil {
		return fmt.Errorf("status directory: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if u.primary { // before the entry, so that whoever sees the entry sees the claim
		if err := claimCurrentPrimary(s.statusDir, s.pod); err != nil {
			return err
		}
	}
	return writeFileAtomic(filepath.Join(s.statusDir, s.pod+".json"), append(b, '\n'), 0o644)
}

// The Kubernetes source: one watch of the one RedisCluster, with the
// ConfigMap and Secret it names read on every change and on every resync.
var (
	redisClusterGVR = schema.GroupVersionResource{Group: "redisoperator.io", Version: "v1", Resource: "redisclusters"}
	configMapGVR    = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	secretGVR       = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
)

const (
	// requestTimeout bounds each API request but the watch itself.
	requestTimeout = 10 * time.Second
	// resyncEvery re-reads the referenced ConfigMap and Secret, whose
	// changes the watch of the RedisCluster does not see.
	resyncEvery = time.Minute
	// watchTimeout is the shortest a watch lasts before it is renewed.
	watchTimeout = 5 * time.Minute
)

type kubeSource struct {
	client             dynamic.Interface
	namespace, cluster string
	pod                string
	log                *slog.Logger
	resync             time.Duration
	beat               atomic.Int64
}

func newKubeSource(client dynamic.Interface, namespace, cluster, pod string, log *slog.Logger) *kubeSource {
	k := &kubeSource{client: client, namespace: namespace, cluster: cluster, pod: pod, log: log, resync: resyncEvery}
	k.beat.Store(time.Now().UnixNano())
	return k
}

func (k *kubeSource) heartbeat() time.Time { return time.Unix(0, k.beat.Load()) }

// run lists and watches until ctx ends. A watch that ends, fails or
// answers 410 Gone leads to a fresh list, after a backoff when it failed.
func (k *kubeSource) run(ctx context.Context, f *feed) {
	var backoff time.Duration
	for {
		began := time.Now()
		err := k.listAndWatch(ctx, f)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > healthyRunTime {
			backoff = 0
		}
		backoff = nextBackoff(backoff)
		counts.watchRestarts.Add(1)
		k.log.Warn("watch of the RedisCluster ended; listing again", "error", err, "retryIn", backoff.String())
		k.beat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

func (k *kubeSource) listAndWatch(ctx context.Context, f *feed) error {
	k.beat.Store(time.Now().UnixNano())
	rcs := k.client.Resource(redisClusterGVR).Namespace(k.namespace)
	selector := fields.OneTermEqualSelector("metadata.name", k.cluster).String()
	lctx, cancel := context.WithTimeout(ctx, requestTimeout)
	list, err := rcs.List(lctx, metav1.ListOptions{FieldSelector: selector})
	cancel()
	if err != nil {
		err = fmt.Errorf("list RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
		f.fail(err)
		return err
	}
	var current *unstructured.Unstructured
	for i := range list.Items {
		if list.Items[i].GetName() == k.cluster { // the fake client ignores selectors
			current = &list.Items[i]
		}
	}
	// The ConfigMap and Secret are read again when the spec changes and on
	// every resync; the many changes that are only other instances'
	// status entries reuse what was read, or each would cost two GETs.
	var refs *clusterView
	emit := func(reread bool) {
		if current == nil {
			f.fail(fmt.Errorf("RedisCluster %s/%s does not exist", k.namespace, k.cluster))
			return
		}
		v, err := k.view(ctx, current, refs, reread)
		if err != nil {
			f.fail(err)
			return
		}
		refs = &v
		f.view(v)
	}
	emit(true)
	// The server ends the watch after a while, as client-go's reflector
	// asks, so that a watch that went quiet without closing is replaced.
	timeout := int64(watchTimeout/time.Second) + rand.Int64N(int64(watchTimeout/time.Second))
	w, err := rcs.Watch(ctx, metav1.ListOptions{FieldSelector: selector, ResourceVersion: list.GetResourceVersion(),
		AllowWatchBookmarks: true, TimeoutSeconds: &timeout})
	if err != nil {
		err = fmt.Errorf("watch RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
		f.fail(err)
		return err
	}
	defer w.Stop()
	resync := time.NewTicker(k.resync)
	defer resync.Stop()
	beat := time.NewTicker(5 * time.Second)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
			k.beat.Store(time.Now().UnixNano())
		case <-resync.C:
			emit(true)
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errors.New("watch closed by the server")
			}
			switch ev.Type {
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
					f.fail(fmt.Errorf("watch RedisCluster %s/%s: %w", k.namespace, k.cluster, err))
				}
				return fmt.Errorf("watch: %w", err)
			case watch.Bookmark:
				continue
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok || u.GetName() != k.cluster {
				continue
			}
			if ev.Type == watch.Deleted {
				current = nil
			} else {
				current = u
			}
			emit(false)
		}
	}
}

// view reads the ConfigMap and Secret the object names, or takes them from
// prev when the spec is the one prev was made of and reread is false.
func (k *kubeSource) view(ctx context.Context, obj *unstructured.Unstructured, prev *clusterView, reread bool) (clusterView, error) {
	var v clusterView
	raw, err := obj.MarshalJSON()
	if err == nil {
		err = json.Unmarshal(raw, &v.cluster)
	}
	if err != nil {
		return v, fmt.Errorf("RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
	}
	if !reread && prev != nil && reflect.DeepEqual(prev.cluster.Spec, v.cluster.Spec) {
		v.fragment, v.password = prev.fragment, prev.password
		return v, nil
	}
	if ref := v.cluster.Spec.ConfigMapRef; ref != nil {
		data, err := k.get(ctx, configMapGVR, ref)
		if err != nil {
			return v, err
		}
		v.fragment = data
	}
	if ref := v.cluster.Spec.AuthSecretRef; ref != nil {
		data, err := k.get(ctx, secretGVR, ref)
		if err != nil {
			return v, err
		}
		pw, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return v, fmt.Errorf("Secret %s/%s key %q is not base64", k.namespace, ref.Name, ref.Key)
		}
		v.password = strings.TrimRight(string(pw), "\r\n")
	}
	return v, nil
}

// get reads one key of a ConfigMap's or Secret's data.
func (k *kubeSource) get(ctx context.Context, gvr schema.GroupVersionResource, ref *keyRef) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	kind := map[string]string{"configmaps": "ConfigMap", "secrets": "Secret"}[gvr.Resource]
	obj, err := k.client.Resource(gvr).Namespace(k.namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get %s %s/%s: %w", kind, k.namespace, ref.Name, err)
	}
	data, found, _ := unstructured.NestedString(obj.Object, "data", ref.Key)
	if !found {
		return "", fmt.Errorf("%s %s/%s has no key %q", kind, k.namespace, ref.Name, ref.Key)
	}
	return data, nil
}

// writeStatus patches this pod's entry, and currentPrimary from the primary,
// with a JSON merge patch on the status subresource: it touches no other
// instance's entry, and needs no read first.
func (k *kubeSource) writeStatus(ctx context.Context, u statusUpdate) error {
	status := map[string]any{"instancesStatus": map[string]any{k.pod: u.entry}}
	if u.primary {
		status["currentPrimary"] = k.pod
	}
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	_, err = k.client.Resource(redisClusterGVR).Namespace(k.namespace).Patch(ctx, k.cluster, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("patch status of RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
	}
	return nil
}

// Status writes: a change that matters (role, readiness, errors, keys
// appearing or going) goes out at once; figures alone (offsets, memory, a
// count of keys) ride the heartbeat, every heartbeatEvery. On an idle
// cluster a primary's offset moves with every replication PING and its
// memory with every INFO, so writing figures as they move would be a patch
// per pod every few seconds, each sent to every watcher of the object,
// for numbers /v1/status serves live anyway.
const heartbeatEvery = time.Minute

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
	info          redisInfo // its last INFO, of the process running now
	infoAt        time.Time
}

// redisProcess is the supervisor as the reconciler sees it.
type redisProcess interface {
	setWanted(run bool)
	snapshot() supervisorState
}

// statusUpdate is one entry to write; primary also claims currentPrimary.
type statusUpdate struct {
	entry   instanceStatus
	primary bool
}

// reconciler owns the desired configuration and this pod's status.
type reconciler struct {
	log      *slog.Logger
	settings *settings
	sup      redisProcess
	statuses chan statusUpdate // to the status writer; the latest wins
	exeHash  string

	published   atomic.Pointer[probeState]
	beat        atomic.Int64
	primaryKeys atomic.Int64 // keys held while the primary, for the supervisor's restart guard

	view          clusterView
	haveView      bool
	checkConfig   func([]directive) error // redis-server's own verdict on a fragment; nil in unit tests
	fragment      []directive             // the last good fragment
	fragmentOK    bool                    // there is one
	fragmentText  string                  // the text it was read from
	refusedText   string                  // the last fragment text refused
	checkedAt     time.Time               // of the last fragment checked
	retryFragment bool                    // it was not refused but could not be checked: try again
	wantedValues  confValues              // the fragment's values
	applied       confValues              // what the running redis-server runs of it
	appliedFor    time.Time               // the start of the redis-server applied describes
	restartOnly   map[string]bool         // parameters Redis said it cannot change at run time
	liveRefused   string                  // the last change Redis refused live
	liveErr       string                  // why
	auth          authState
	authErr       string                          // why the password could not be rotated
	authWait      string                          // the replica a rotation waits for
	creds         atomic.Pointer[[]string]        // passwords to offer redis-server, for every goroutine
	peers         atomic.Pointer[map[string]bool] // the other instances' addresses: see isPeer
	fenced        bool
	wanted        bool // redis-server should run
	role          desiredRole
	conf          string // redis.conf as last written
	viewErr       string // the source's latest complaint
	viewSeq       uint64 // of the latest view applied
	errSeq        uint64 // of the latest complaint
	confErr       string // why the latest fragment was refused
	writeErr      string // why redis.conf could not be written
	fenceErr      string // why the latest fence annotation was refused
	roleErr       string // why the role could not be made right
	guardErr      string // why redis-server may not start
	restorer      *restorer
	restores      chan restoreResult
	restoreJob    *restoreJob // the restore under way, or abandoned and not yet ended
	restoreDone   restoreSpec // the backup restored, or found not needed
	restoreErr    string      // why the last attempt failed
	restoreFailed restoreSpec // the backup it failed for
	restoreFails  int
	restoreRetry  time.Time
	heldKeys      int64         // keys this instance last held: seen, or from its entry of before
	lostSince     time.Time     // when the old primary was first found gone
	demoteSince   time.Time     // when this master first found it is not the target
	stuckAt       int64         // the replica\'s offset, while it stands still
	stuckSince    time.Time     // since when it has
	poke          chan struct{} // asks the observer to look now
	pauses        chan chan struct{}
	observed      chan struct{} // closed once a state with a view and a look at Redis is published
	observedSent  bool
	began         time.Time
	adopted       bool // redis-server was inherited: no status before that look
	fenceKnown    bool // fenced was inherited too, a malformed annotation notwithstanding
	obs           *observation
	lastAnswer    time.Time
	written       instanceStatus
	writtenAt     time.Time
}

func newReconciler(r *reconciler) *reconciler {
	r.statuses = make(chan statusUpdate, 1)
	r.pauses = make(chan chan struct{})
	r.began = time.Now()
	r.observed = make(chan struct{})
	r.restores = make(chan restoreResult, 1)
	r.fragment, r.fragmentOK = previousFragment(r.settings.confPath())
	r.wantedValues, r.restartOnly = valuesOf(r.fragment), map[string]bool{}
	r.creds.Store(&[]string{})
	r.peers.Store(&map[string]bool{})
	r.published.Store(&probeState{reason: "starting", startupReason: "starting"})
	r.beat.Store(time.Now().UnixNano())
	return r
}

// run reacts to the source, to Redis, and to time until ctx ends. Nothing
// starts before the first view of the cluster: nothing starts on a guess.
func (r *reconciler) run(ctx context.Context, f *feed, observations <-chan *observation) {
	// The observer's looks, at least one a second, are what moves the
	// reconciler; the tick only keeps it beating should they stop, and
	// costs an idle pod a wakeup each time.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		r.publish()
		select {
		case <-ctx.Done():
			if r.restoreJob != nil {
				r.restoreJob.cancel() // what it leaves, the next start removes
			}
			r.stopped("stopping")
			return
		case res := <-r.restores:
			r.restoreEnded(res)
		case resume := <-r.pauses:
			<-resume
		case v := <-f.views:
			if v.seq > r.errSeq {
				r.viewErr = "" // the complaint is older than this view
			}
			r.viewSeq = v.seq
			r.applyView(v)
			if r.obs != nil && r.obs.err != nil {
				r.pokeObserver() // it may have lacked the password the view brought
			}
			r.enforceRole()
			r.rotateAuth()
		case e := <-f.errs:
			if e.seq < r.viewSeq {
				break // a newer view already came
			}
			r.errSeq = e.seq
			if msg := e.err.Error(); msg != r.viewErr {
				r.log.Error("cannot use the cluster's new state; keeping the last good one", "error", e.err)
				r.viewErr = msg
			}
		case o := <-observations:
			r.obs = o
			if o.err == nil {
				r.lastAnswer = o.at
				if !o.loading() {
					r.heldKeys = o.info.keys()
				}
			}
			if r.retryFragment && time.Since(r.checkedAt) >= probeEvery {
				r.applyView(r.view) // its fragment could not be checked
			}
			r.retryRestore()
			r.enforceRole()
			r.syncLive()
			r.rotateAuth()
		case <-tick.C:
			r.retryRestore()
			if r.guardErr != "" {
				r.applyView(r.view) // what the guard refused may have been put right on disk
			}
		}
	}
}

// applyView renders redis.conf for the new view. A refused fragment keeps
// the last good one in force but does not hold up what else changed.
func (r *reconciler) applyView(v clusterView) {
	defer func() { r.haveView = true }()
	if !r.haveView {
		// What this instance held before it (re)started, before its own
		// entry is overwritten.
		r.heldKeys = v.cluster.Status.InstancesStatus[r.settings.podName].Keys
	}
	if v.password == "" && (!r.haveView || r.view.password != "") {
		r.log.Warn("no password from spec.authSecretRef: redis-server takes every client without one, on every interface (protected-mode no); set authSecretRef for anything but a local experiment")
	}
	r.view = v
	r.publishCredentials()
	r.publishPeers(&v.cluster)
	r.takeFragment(v.fragment)
	if fenced, err := isFenced(v.cluster.Metadata.Annotations, r.settings.podName); err != nil {
		if !r.haveView && !r.fenceKnown {
			// Nothing to keep as it was: the pod may well be meant to be
			// fenced, so redis-server stays stopped until it parses.
			r.fenced = true
		}
		if r.fenceErr != err.Error() {
			r.log.Error("ignoring a malformed fence annotation; fencing stays as it was", "error", err, "fenced", r.fenced)
		}
		r.fenceErr = err.Error()
	} else {
		if fenced != r.fenced {
			r.log.Info("fencing changed", "fenced", fenced)
		}
		r.fenced, r.fenceErr = fenced, ""
	}
	r.role = roleFor(&v.cluster, r.settings.podName)
	if r.fenced {
		r.setWanted(false) // whatever fails below, a fence holds
	}
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
	if err == nil && conf != r.conf {
		err = writeFileAtomic(r.settings.confPath(), []byte(conf), 0o600)
		if err == nil {
			r.conf = conf
			r.log.Info("wrote redis.conf", "configHash", configHash(r.wantedValues))
		}
	}
	if err != nil {
		if err.Error() != r.writeErr {
			r.log.Error("cannot write redis.conf", "error", err)
		}
		r.writeErr = err.Error()
		return
	}
	r.writeErr = ""
	waiting := !r.role.primary && r.role.replicaOf == ""
	if waiting && !r.fenced && r.wanted {
		r.log.Info("waiting for the target primary to publish its address", "targetPrimary", r.role.target)
	}
	// The guard decides a start only: a running server has the run-time
	// guards of enforceRole.
	guard, restoring := "", false
	if !r.sup.snapshot().running {
		guard = r.startGuard()
		if guard == "" {
			restoring = r.bootstrap()
		} else if r.restoreJob != nil || r.restoreErr != "" {
			r.abandonRestore("a guard keeps redis-server from starting") // no restore while the guard holds
			r.restoreErr, r.restoreRetry = "", time.Time{}
		}
	}
	if guard != "" && guard != r.guardErr {
		r.log.Error("not starting redis-server", "reason", guard)
	}
	r.guardErr = guard
	r.setWanted(!r.fenced && !waiting && guard == "" && !restoring)
}

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
	go func() {
		keys, err := r.restorer.run(ctx, job)
		cancel()
		r.restores <- restoreResult{job: job, keys: keys, err: err}
	}()
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
		r.log.Info("restored the dataset from backup", "url", redactURL(res.job.spec.URL), "bytes", res.job.got.Load(),
			"keys", res.keys, "seconds", time.Since(res.job.began).Seconds())
	default:
		r.restoreFails++
		wait := min(restoreBackoff<<min(r.restoreFails-1, 10), 5*time.Minute)
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
// each further one.
const restoreBackoff = 5 * time.Second

// startGuard says why redis-server must not start now, or "": as the
// primary on an empty data directory while the status shows the cluster held
// data (the data was lost here, and replicas would copy the loss), or as a
// replica holding data of a master that holds none.
func (r *reconciler) startGuard() string {
	entries := r.view.cluster.Status.InstancesStatus
	onDisk := datasetKeys(r.settings.dataDir, r.fragment)
	if r.role.leads() {
		if why := unreadDataset(r.settings.dataDir, r.fragment); why != "" {
			return why
		}
		if onDisk > 0 {
			return ""
		}
		holder, most := "this instance", r.heldKeys // its entry of before counts too
		for pod, e := range entries {
			if pod != r.settings.podName && e.Keys > most {
				holder, most = pod, e.Keys
			}
		}
		if most == 0 {
			return ""
		}
		return fmt.Sprintf("refusing to start as the primary with an empty data directory while %s reported %d keys: move targetPrimary to an instance that holds the data", holder, most)
	}
	// The entry of the one to follow reports what it holds even while it
	// is stopped. A target that starts as the replica of the instance still
	// holding the role follows that one until the handover.
	follow := r.role.target
	if r.role.primary {
		follow = r.view.cluster.Status.CurrentPrimary
	}
	if e, ok := entries[follow]; ok && e.Keys == 0 && onDisk > 0 {
		return fmt.Sprintf("refusing to follow %s, which reports no key, with the dataset on disk here (%d keys or more): it stays as it is", follow, onDisk)
	}
	return ""
}

func (r *reconciler) setWanted(run bool) {
	r.wanted = run
	r.sup.setWanted(run)
}

// enforceRole brings the local redis-server to the role the object gives
// it: the target takes the primary role over (or fails over to itself once
// the old primary has been gone for the failover window), a master that is
// not the target hands the role over and refuses writes until it has, and
// a replica follows the target's address.
func (r *reconciler) enforceRole() {
	sup := r.sup.snapshot()
	obs := r.obs
	if !r.wanted || !sup.running || obs == nil || obs.err != nil || obs.loading() || obs.at.Before(sup.startedAt) {
		return
	}
	me := redisNode{dial: localAddr(r.settings.redisPort), announce: joinHostPort(r.settings.announceHost, fmt.Sprint(r.settings.redisPort))}
	if r.role.primary || obs.role() != "master" {
		r.demoteSince = time.Time{} // the grace is for one stay as a master that is not the target
	}
	switch {
	case r.role.primary && obs.role() == "slave":
		master := joinHostPort(obs.info["master_host"], obs.info["master_port"])
		err := errOldNotMaster // it follows no instance of the cluster: see isPeer
		if r.isPeer(master) {
			err = handover(redisNode{dial: master, announce: master}, me, r.credentials())
		}
		if errors.Is(err, errOldNotMaster) {
			// The primary role moved on while this one followed the old
			// holder (a quick double move), or it follows an address no
			// instance publishes: take it from whoever holds it. When no
			// one does, the role is lost, as if its holder were gone: the
			// failover window decides.
			if holder := r.masterElsewhere(); holder != "" {
				master = holder
				err = handover(redisNode{dial: holder, announce: holder}, me, r.credentials())
			} else {
				err = fmt.Errorf("%w: no instance runs as master", errUnreachable)
			}
		}
		switch {
		case err == nil:
			r.log.Info("took over the primary role", "from", master)
			r.lostSince, r.roleErr = time.Time{}, ""
			r.pokeObserver()
		case errors.Is(err, errUnreachable):
			// Fail over once it has been gone, without a single answer in
			// between, for the failover window.
			if r.lostSince.IsZero() {
				r.lostSince = time.Now()
				r.log.Warn("the old primary does not answer; failing over if it stays away", "from", master, "window", r.settings.failoverTimeout.String(), "error", err)
			}
			if time.Since(r.lostSince) < r.settings.failoverTimeout {
				return
			}
			if holder, n := r.dataElsewhere(); obs.info.keys() == 0 && n > 0 {
				r.roleFailed("refusing to fail over to this instance", fmt.Errorf("%w: it holds no key while %s reported %d", errEmptyPrimary, holder, n))
				return
			}
			if err := promote(me.dial, r.credentials()); err != nil {
				r.roleFailed("cannot promote this instance", err)
				return
			}
			r.log.Warn("failed over: promoted this instance", "oldPrimary", master, "goneFor", time.Since(r.lostSince).Round(time.Millisecond).String())
			r.lostSince, r.roleErr = time.Time{}, ""
			r.pokeObserver()
		default:
			r.lostSince = time.Time{} // it answered, or may yet: no failover
			r.roleFailed("cannot take over the primary role from "+master, err)
		}
	case r.role.primary && obs.role() == "master":
		// The primary also makes sure it is the only master: an old one
		// whose manager cannot see the new target would take writes again
		// once its pause ran out.
		other := r.masterElsewhere()
		if other == "" || !isMaster(other, r.credentials()) {
			r.lostSince, r.roleErr = time.Time{}, ""
			return
		}
		if err := handover(redisNode{dial: other, announce: other}, me, r.credentials()); err != nil {
			r.roleFailed("cannot demote the other master at "+other, err)
			return
		}
		r.log.Warn("demoted another master", "address", other)
		r.roleErr = ""
	case !r.role.primary && obs.role() == "master":
		// Not the target, yet a master: no write may be taken here.
		if r.role.replicaOf == "" {
			if err := pauseWrites(me.dial, r.credentials()); err != nil {
				r.roleFailed("cannot stop writes on this master, which is not the target", err)
			}
			return
		}
		// The target's manager normally takes the role over at once; this
		// side steps in only when it has not, so the two do not race.
		if r.demoteSince.IsZero() {
			r.demoteSince = time.Now()
		}
		if time.Since(r.demoteSince) < handoverGrace {
			if err := pauseWrites(me.dial, r.credentials()); err != nil {
				r.roleFailed("cannot stop writes on this master, which is not the target", err)
			}
			return
		}
		target := redisNode{dial: r.role.replicaOf, announce: r.role.replicaOf}
		if err := handover(me, target, r.credentials()); err != nil {
			r.roleFailed("cannot hand the primary role to "+r.role.target, err)
			if err := pauseWrites(me.dial, r.credentials()); err != nil {
				r.log.Error("cannot stop writes on this master, which is not the target", "error", err)
			}
			return
		}
		r.log.Info("handed the primary role over", "to", r.role.target, "address", r.role.replicaOf)
		r.roleErr = ""
		r.pokeObserver()
	default:
		r.lostSince = time.Time{}
		moving := obs.role() == "slave" && r.role.replicaOf != "" &&
			joinHostPort(obs.info["master_host"], obs.info["master_port"]) != canonicalAddr(r.role.replicaOf)
		if t := r.view.cluster.Status.InstancesStatus[r.role.target]; moving && t.Role == "master" && t.Keys == 0 && obs.info.keys() > 0 {
			r.roleFailed("refusing to follow "+r.role.target, fmt.Errorf("%w: it reports no key, and following it would drop the %d keys here", errEmptyPrimary, obs.info.keys()))
			return
		}
		moved, err := followPrimary(me.dial, r.credentials(), obs, r.role)
		switch {
		case err != nil:
			r.roleFailed("cannot re-point the replica at the target primary", err)
			return
		case moved:
			r.log.Info("re-pointed the replica at the target primary", "targetPrimary", r.role.target, "address", r.role.replicaOf)
			r.pokeObserver()
		}
		r.roleErr = ""
		r.unstick(me, r.credentials(), obs)
	}
}

// masterElsewhere is the address of another instance whose entry says it
// runs as master, or "".
func (r *reconciler) masterElsewhere() string {
	for pod, e := range r.view.cluster.Status.InstancesStatus {
		if pod != r.settings.podName && e.Role == "master" && e.Address != "" {
			return canonicalAddr(e.Address)
		}
	}
	return ""
}

// dataElsewhere names the other instance whose status entry reports the
// most keys, and how many.
func (r *reconciler) dataElsewhere() (string, int64) {
	var holder string
	var most int64
	for pod, e := range r.view.cluster.Status.InstancesStatus {
		if pod != r.settings.podName && e.Keys > most {
			holder, most = pod, e.Keys
		}
	}
	return holder, most
}

// unstick renews a replication link that is up but has carried nothing
// while the primary moved on: Redis 7.0 can leave one so, and the replica
// would otherwise stay behind for good.
func (r *reconciler) unstick(me redisNode, passwords []string, obs *observation) {
	at := obs.info.int("slave_repl_offset")
	behind := obs.role() == "slave" && obs.info["master_link_status"] == "up" && obs.primaryOffset > at
	if !behind || at != r.stuckAt {
		r.stuckAt, r.stuckSince = at, time.Now()
		return
	}
	if time.Since(r.stuckSince) < stalledFor {
		return
	}
	err := withRedis(me.dial, passwords, redisTimeout, func(c redis.Conn) error {
		_, err := c.Do("CLIENT", "KILL", "TYPE", "master")
		return err
	})
	if err != nil {
		r.log.Warn("cannot renew a replication link that carries nothing", "error", err)
		return
	}
	r.log.Warn("renewed a replication link that carried nothing", "stuckAt", at, "primaryOffset", obs.primaryOffset, "for", time.Since(r.stuckSince).Round(time.Second).String())
	r.stuckSince = time.Now()
}

// stalledFor is how long a replica may stand still behind its primary
// before its link is renewed; well above a pause of the primary's writes.
const stalledFor = 5 * time.Second

// handoverGrace is how long a master that is no longer the target waits,
// refusing writes, for the target's manager to take the role over before it
// hands the role over itself.
const handoverGrace = 500 * time.Millisecond

// roleFailed reports a role change that did not happen; it is retried on
// the next look at Redis.
func (r *reconciler) roleFailed(what string, err error) {
	msg := what + ": " + err.Error()
	if msg != r.roleErr {
		r.log.Warn(what, "error", err)
	}
	r.roleErr = msg
}

// pause holds the reconciler still, between two of its steps, until the
// returned function is called: an upgrade writes the state down meanwhile.
// It waits at most wait for a step (a handover, say) to end.
func (r *reconciler) pause(ctx context.Context, wait time.Duration) (func(), bool) {
	resume := make(chan struct{})
	select {
	case r.pauses <- resume:
		return func() { close(resume) }, true
	case <-ctx.Done():
	case <-time.After(wait):
	}
	return nil, false
}

func (r *reconciler) pokeObserver() {
	if r.poke != nil {
		offer(r.poke, struct{}{})
	}
}

// publish computes the status, hands it to the HTTP handlers, and to the
// status writer when it changed enough or the heartbeat is due.
func (r *reconciler) publish() {
	r.beat.Store(time.Now().UnixNano())
	if r.role.primary {
		r.primaryKeys.Store(r.heldKeys)
	} else {
		r.primaryKeys.Store(0)
	}
	sup := r.sup.snapshot()
	ps := &probeState{lastAnswer: r.lastAnswer}
	crashed := "" // with Redis's own reason: see supervisor.snapshot
	if r.wanted && !sup.running && !sup.retryAt.IsZero() && sup.refused == "" {
		crashed = fmt.Sprintf("redis-server exited (%s); restarting", sup.lastExit)
	}
	st := instanceStatus{
		Role:               "none",
		Address:            joinHostPort(r.settings.announceHost, fmt.Sprint(r.settings.redisPort)),
		Fenced:             r.fenced,
		ManagerVersion:     version,
		ExecutableHash:     r.exeHash,
		Restarts:           sup.restarts,
		ObservedGeneration: r.view.cluster.Metadata.Generation,
		LastError:          cmp.Or(r.viewErr, r.confErr, r.writeErr, r.fenceErr, r.guardErr, r.restoreErr, sup.refused, crashed, r.roleErr, r.authErr, r.liveErr),
		PendingRestart:     []string{},
	}
	if sup.running {
		st.ConfigHash, st.PendingRestart = r.configStatus()
	}
	obs := r.obs
	if obs != nil && (!sup.running || obs.at.Before(sup.startedAt)) {
		obs = nil // what we saw was of a process that is gone
	}
	st.Keys = r.heldKeys // while redis-server does not run: what it held
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
		st.Keys = i.keys()
		st.RedisVersion = i["redis_version"]
	}
	// r.wanted, not sup.wanted: the supervisor may not have heard yet.
	switch {
	case !r.haveView:
		ps.reason = "waiting for the RedisCluster " + r.settings.cluster
		ps.startupReason = ps.reason
	case r.fenced:
		ps.reason = "fenced by the " + fencedAnnotation + " annotation"
		ps.started = true
	case !r.wanted && r.restoreJob != nil:
		ps.reason = "restoring the dataset from backup: " + r.restoreJob.progress()
		ps.startupReason = ps.reason
	case !r.wanted && r.restoreErr != "":
		ps.reason = r.restoreErr
		ps.started = true
	case !r.wanted && r.guardErr != "":
		ps.reason = r.guardErr
		ps.started = true
	case !r.wanted && !r.fragmentOK:
		ps.reason = "no valid redis.conf fragment yet: " + r.confErr
		ps.started = true
	case !r.wanted:
		ps.reason = fmt.Sprintf("waiting for the target primary %s to publish its address", r.role.target)
		ps.started = true
	case !sup.running && !sup.retryAt.IsZero():
		ps.reason = cmp.Or(crashed, sup.lastExit)
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
	if obs != nil && obs.err == nil {
		ps.info, ps.infoAt = obs.info, obs.at // for /metrics: no INFO of its own
	}
	r.published.Store(ps)
	if !r.observedSent && r.haveView && r.obs != nil && r.obs.err == nil {
		r.observedSent = true
		close(r.observed)
	}

	since := time.Since(r.writtenAt)
	switch {
	case !r.haveView: // no object to write to yet
		return
	case r.adopted && !r.observedSent && time.Since(r.began) < 5*time.Second:
		return // an upgrade's first moments: the entry of before holds until Redis is seen

	case r.writtenAt.IsZero(), !sameStatus(st, r.written), since >= heartbeatEvery:
	default:
		return
	}
	// The writer retries until it succeeds, so this entry counts as written.
	offer(r.statuses, statusUpdate{entry: ps.status, primary: r.role.primary && ps.ready && st.Role == "master"})
	r.written, r.writtenAt = st, time.Now()
}

// stopped publishes that this instance serves no more: from the stop
// request on, while redis-server shuts down, and after.
func (r *reconciler) stopped(reason string) statusUpdate {
	ps := *r.published.Load()
	ps.ready, ps.reason = false, reason
	ps.status.Role, ps.status.Ready, ps.status.NotReadyReason = "none", false, reason
	ps.status.MasterLinkStatus, ps.status.ConnectedReplicas = "", 0
	ps.status.UpdatedAt = time.Now().UTC()
	r.published.Store(&ps)
	return statusUpdate{entry: ps.status}
}

// statusWriter writes the latest entry, retrying with backoff while the
// source fails: Redis is not touched by this, and the entry catches up.
func runStatusWriter(ctx context.Context, log *slog.Logger, updates <-chan statusUpdate, write func(context.Context, statusUpdate) error) {
	var (
		pending *statusUpdate
		backoff time.Duration
		retry   <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			pending = &u
			if retry != nil {
				continue // the scheduled retry writes the latest
			}
		case <-retry:
			retry = nil
		}
		if pending == nil {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, requestTimeout)
		err := write(wctx, *pending)
		cancel()
		if err == nil {
			counts.statusPatches.Add(1)
			pending, backoff, retry = nil, 0, nil
			continue
		}
		counts.statusPatchErrors.Add(1)
		backoff = min(max(2*backoff, backoffMin), backoffMax)
		log.Warn("cannot write status; retrying", "error", err, "retryIn", backoff.String())
		retry = time.After(backoff)
	}
}

// sameStatus says whether two entries differ only in figures that move
// with every write (offsets, memory, how many keys).
func sameStatus(a, b instanceStatus) bool {
	a.ReplicationOffset, a.LagBytes, a.UsedMemoryBytes = b.ReplicationOffset, b.LagBytes, b.UsedMemoryBytes
	if (a.Keys == 0) == (b.Keys == 0) {
		a.Keys = b.Keys // the empty-primary guards read whether an entry holds keys
	}
	if a.Ready == b.Ready {
		a.NotReadyReason = b.NotReadyReason // it quotes loading progress and lag
	}
	a.UpdatedAt = b.UpdatedAt
	return reflect.DeepEqual(a, b)
}
