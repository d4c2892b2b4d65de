package main

// Where the RedisCluster comes from and where this pod's status entry goes:
// the source. A source sends views of the cluster (the object, with the
// ConfigMap and Secret it names) and complaints through a feed, and writes
// the status. In Kubernetes it is one client-go dynamic watch of the one
// object; in local mode, a file (localfile.go).

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

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
		src := newLocalSource(s.clusterFile, s.cluster, s.namespace, s.podName, log)
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

// kubeSource lists the RedisCluster once, then watches it from the
// resourceVersion it got to: an event's or a bookmark's. The server ends a
// watch after the timeout asked for; the next one resumes from there, with
// no list and no GET. Only a failure (an error, a 410 Gone, a watch that
// closes at once) costs a new list, after a backoff.
type kubeSource struct {
	client             dynamic.Interface
	namespace, cluster string
	pod                string
	log                *slog.Logger
	resync             time.Duration
	quickClose         time.Duration // a watch closed sooner than this failed
	beat               atomic.Int64

	// Owned by run's goroutine.
	current *unstructured.Unstructured // the object as last seen; nil once deleted
	sent    *clusterView               // the last view sent, whose ConfigMap and Secret a change of status reuses
	rv      string                     // where the next watch resumes

	secretWatch   *secretWatch  // of the spec.tls Secret; secretwatch.go
	secretChanged chan struct{} // it changed: read it again
}

func newKubeSource(client dynamic.Interface, namespace, cluster, pod string, log *slog.Logger) *kubeSource {
	k := &kubeSource{client: client, namespace: namespace, cluster: cluster, pod: pod, log: log, resync: resyncEvery, quickClose: time.Second, secretChanged: make(chan struct{}, 1)}
	k.beat.Store(time.Now().UnixNano())
	return k
}

func (k *kubeSource) heartbeat() time.Time { return time.Unix(0, k.beat.Load()) }

// run lists and watches until ctx ends, and lists again, after a backoff,
// when watching fails.
func (k *kubeSource) run(ctx context.Context, f *feed) {
	retry := newBackoff()
	for {
		began := time.Now()
		err := k.listAndWatch(ctx, f)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > healthyRunTime {
			retry.reset()
		}
		wait := retry.next()
		counts.watchRestarts.Add(1)
		k.log.Warn("watch of the RedisCluster failed; listing again", "error", err, "retryIn", wait.String())
		k.beat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// errWatchExpired ends a watch the server closed after its timeout, as
// asked: not a failure.
var errWatchExpired = errors.New("the watch expired")

// listAndWatch lists, then watches until a watch fails; one that expires
// is followed by the next from where it got to.
func (k *kubeSource) listAndWatch(ctx context.Context, f *feed) error {
	if err := k.list(ctx, f); err != nil {
		f.fail(err)
		return err
	}
	resync := time.NewTicker(k.resync)
	defer resync.Stop()
	for {
		began := time.Now()
		err := k.watch(ctx, f, resync.C)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errWatchExpired) && time.Since(began) < k.quickClose:
			return fmt.Errorf("watch closed by the server after %s", time.Since(began).Round(time.Millisecond))
		case errors.Is(err, errWatchExpired):
			k.log.Debug("the watch expired; watching on", "resourceVersion", k.rv)
		default:
			return err
		}
	}
}

// list reads the object, sends its view, and notes where to watch from.
func (k *kubeSource) list(ctx context.Context, f *feed) error {
	k.beat.Store(time.Now().UnixNano())
	lctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	list, err := k.client.Resource(redisClusterGVR).Namespace(k.namespace).List(lctx, metav1.ListOptions{FieldSelector: k.selector()})
	if err != nil {
		return fmt.Errorf("list RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
	}
	k.current, k.sent, k.rv = nil, nil, list.GetResourceVersion()
	for i := range list.Items {
		if list.Items[i].GetName() == k.cluster { // the fake client ignores selectors
			k.current = &list.Items[i]
		}
	}
	k.emit(ctx, f, true)
	return nil
}

func (k *kubeSource) selector() string {
	return fields.OneTermEqualSelector("metadata.name", k.cluster).String()
}

// watch follows one watch until it ends: errWatchExpired when the server
// closed it, another error when it failed. The resync re-reads the
// ConfigMap and Secret, whose changes this watch does not see.
func (k *kubeSource) watch(ctx context.Context, f *feed, resync <-chan time.Time) error {
	// The server ends the watch after a while, as client-go's reflector
	// asks, so that a watch that went quiet without closing is replaced.
	timeout := int64(watchTimeout/time.Second) + rand.Int64N(int64(watchTimeout/time.Second))
	w, err := k.client.Resource(redisClusterGVR).Namespace(k.namespace).Watch(ctx, metav1.ListOptions{FieldSelector: k.selector(),
		ResourceVersion: k.rv, AllowWatchBookmarks: true, TimeoutSeconds: &timeout})
	if err != nil {
		err = fmt.Errorf("watch RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
		if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
			f.fail(err) // a resourceVersion too old to resume from is no complaint: the list recovers
		}
		return err
	}
	defer w.Stop()
	beat := newBeat(5 * time.Second)
	defer beat.stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
			beat.next()
			k.beat.Store(time.Now().UnixNano())
		case <-resync:
			k.emit(ctx, f, true)
		case <-k.secretChanged:
			k.renewTLS(ctx, f)
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errWatchExpired
			}
			if err := k.take(ctx, f, ev); err != nil {
				return err
			}
		}
	}
}

// take applies one event. A 410 Gone (the resourceVersion is too old to
// resume from) is no complaint: the list that follows recovers from it.
func (k *kubeSource) take(ctx context.Context, f *feed, ev watch.Event) error {
	if ev.Type == watch.Error {
		err := apierrors.FromObject(ev.Object)
		if !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
			f.fail(fmt.Errorf("watch RedisCluster %s/%s: %w", k.namespace, k.cluster, err))
		}
		return fmt.Errorf("watch: %w", err)
	}
	u, ok := ev.Object.(*unstructured.Unstructured)
	if !ok {
		return nil
	}
	if rv := u.GetResourceVersion(); rv != "" {
		k.rv = rv
	}
	if ev.Type == watch.Bookmark || u.GetName() != k.cluster {
		return nil
	}
	if ev.Type == watch.Deleted {
		k.current = nil
	} else {
		k.current = u
	}
	k.emit(ctx, f, false)
	return nil
}

// emit sends the view of the object as last seen. The ConfigMap and Secrets
// are read again when the spec changes what it takes from them, and on
// every resync; the many changes that are only other instances' status
// entries, or a spec change that names the same objects (a switchover),
// reuse what was read, or each would cost a GET per object on its way.
func (k *kubeSource) emit(ctx context.Context, f *feed, reread bool) {
	if k.current == nil {
		f.fail(fmt.Errorf("RedisCluster %s/%s does not exist", k.namespace, k.cluster))
		return
	}
	// A Secret that is not there yet is watched too: its creation is news.
	name, _, _ := unstructured.NestedString(k.current.Object, "spec", "tls", "secretRef", "name")
	k.followSecret(ctx, name)
	v, err := k.view(ctx, k.current, k.sent, reread)
	if err != nil {
		f.fail(err)
		return
	}
	k.sent = &v
	f.view(v)
}

// view reads the ConfigMap and Secrets the object names, or takes what it
// read from prev when the spec takes the same from them as prev's did and
// reread is false.
func (k *kubeSource) view(ctx context.Context, obj *unstructured.Unstructured, prev *clusterView, reread bool) (clusterView, error) {
	var v clusterView
	raw, err := obj.MarshalJSON()
	if err == nil {
		err = json.Unmarshal(raw, &v.cluster)
	}
	if err != nil {
		return v, fmt.Errorf("RedisCluster %s/%s: %w", k.namespace, k.cluster, err)
	}
	if !reread && prev != nil && reflect.DeepEqual(readsOf(prev.cluster.Spec), readsOf(v.cluster.Spec)) {
		v.fragment, v.password, v.tls, v.users, v.usersErr = prev.fragment, prev.password, prev.tls, prev.users, prev.usersErr
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
	v.users, v.usersErr = declaredUsers(v.cluster.Spec.Users, func(ref *keyRef) (string, error) {
		data, err := k.get(ctx, secretGVR, ref)
		if err != nil {
			return "", err
		}
		pw, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return "", fmt.Errorf("Secret %s/%s key %q is not base64", k.namespace, ref.Name, ref.Key)
		}
		return string(pw), nil
	})
	v.tls, err = k.readTLS(ctx, v.cluster.Spec.TLS)
	return v, err
}

// specReads is what of the spec decides what view reads and makes of it:
// the objects named, and what the view combines with them (the users'
// rules, clientAuth).
type specReads struct {
	configMap, authSecret *keyRef
	tls                   *tlsSpec
	users                 []userSpec
}

func readsOf(spec clusterSpec) specReads {
	return specReads{spec.ConfigMapRef, spec.AuthSecretRef, spec.TLS, spec.Users}
}

// readTLS reads the spec.tls Secret; nil without spec.tls.
func (k *kubeSource) readTLS(ctx context.Context, spec *tlsSpec) (*tlsMaterial, error) {
	if spec == nil || spec.SecretRef == nil {
		return nil, nil
	}
	data, err := k.secretData(ctx, spec.SecretRef.Name)
	if err != nil {
		return nil, err
	}
	m, err := tlsMaterialOf(spec, data)
	if err != nil {
		return nil, fmt.Errorf("Secret %s/%s: %w", k.namespace, spec.SecretRef.Name, err)
	}
	return m, nil
}

// secretData reads a Secret's data, each value decoded. An error never
// quotes a value.
func (k *kubeSource) secretData(ctx context.Context, name string) (map[string][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	obj, err := k.client.Resource(secretGVR).Namespace(k.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get Secret %s/%s: %w", k.namespace, name, err)
	}
	raw, _, _ := unstructured.NestedStringMap(obj.Object, "data")
	data := make(map[string][]byte, len(raw))
	for key, val := range raw {
		b, err := base64.StdEncoding.DecodeString(val)
		if err != nil {
			return nil, fmt.Errorf("Secret %s/%s key %q is not base64", k.namespace, name, key)
		}
		data[key] = b
	}
	return data, nil
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
