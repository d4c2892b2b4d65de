package main

// The spec.tls Secret is followed by a watch of its own, by name, so that a
// renewal (cert-manager rewrites the Secret well before the certificate
// expires) is served within a second of being written rather than at the
// next resync. It needs `watch` on that Secret; a Role that grants only
// `get` (the least the contract asks for) leaves renewals to the resync,
// every resyncEvery, and the manager says so once.

import (
	"context"
	"math/rand/v2"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
)

// secretWatch follows one Secret until cancelled.
type secretWatch struct {
	name   string
	cancel context.CancelFunc
}

// followSecret watches name, the spec.tls Secret of the latest view, in
// place of the one watched before; "" watches none. Run's goroutine only.
func (k *kubeSource) followSecret(ctx context.Context, name string) {
	if k.secretWatch != nil && k.secretWatch.name == name {
		return
	}
	if k.secretWatch != nil {
		k.secretWatch.cancel()
		k.secretWatch = nil
	}
	if name == "" {
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	k.secretWatch = &secretWatch{name: name, cancel: cancel}
	go k.watchSecret(wctx, name)
}

// renewTLS sends the view again with the spec.tls Secret read anew: a
// renewal costs one GET, not a read of every object the spec names (a
// spec changed meanwhile is read whole, as ever).
func (k *kubeSource) renewTLS(ctx context.Context, f *feed) {
	if k.sent == nil || k.current == nil {
		k.emit(ctx, f, true)
		return
	}
	m, err := k.readTLS(ctx, k.sent.cluster.Spec.TLS)
	if err != nil {
		f.fail(err)
		return
	}
	prev := *k.sent
	prev.tls = m
	k.sent = &prev
	k.emit(ctx, f, false)
}

// watchSecret tells run of every change of the Secret after the first
// sight of it, which the view already holds. A 410 or a closed watch
// starts again from the Secret as it is, which counts as a change: a
// re-read costs a GET, a missed renewal a minute.
func (k *kubeSource) watchSecret(ctx context.Context, name string) {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	retry := newBackoff()
	rv, seen := "", false
	for ctx.Err() == nil {
		timeout := int64(watchTimeout/time.Second) + rand.Int64N(int64(watchTimeout/time.Second))
		w, err := k.client.Resource(secretGVR).Namespace(k.namespace).Watch(ctx, metav1.ListOptions{FieldSelector: sel,
			ResourceVersion: rv, AllowWatchBookmarks: true, TimeoutSeconds: &timeout})
		if apierrors.IsForbidden(err) {
			k.log.Info("no watch of the spec.tls Secret (RBAC grants get only): a renewal is read at the next resync", "secret", name, "resync", k.resync.String())
			return
		}
		if err != nil {
			rv = ""
			select {
			case <-ctx.Done():
			case <-time.After(retry.next()):
			}
			continue
		}
		retry.reset()
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				rv = ""
				break
			}
			obj, ok := ev.Object.(metav1.Object)
			if !ok {
				continue
			}
			rv = obj.GetResourceVersion()
			if ev.Type == watch.Bookmark {
				continue
			}
			if seen {
				offer(k.secretChanged, struct{}{})
			}
			seen = true
		}
		w.Stop()
	}
}
