package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The spec.tls Secret's watch tells of a change after the first sight of
// the Secret, and of nothing else; refused by RBAC, it gives up at once,
// saying so once, and renewals wait for the resync.
func TestSecretWatchTellsOfRenewals(t *testing.T) {
	secret := unstructuredFrom(t, "apiVersion: v1\nkind: Secret\nmetadata: {name: cache-tls, namespace: prod, resourceVersion: \"7\"}\ndata: {tls.crt: YQ==}\n")
	fw := watch.NewFake()
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{secretGVR: "SecretList"})
	client.PrependWatchReactor("secrets", func(k8stesting.Action) (bool, watch.Interface, error) { return true, fw, nil })
	k := newKubeSource(client, "prod", "cache", "cache-0", slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k.followSecret(ctx, "cache-tls")
	changed := func() bool {
		select {
		case <-k.secretChanged:
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	}
	fw.Add(secret) // the first sight: the view already holds it
	if changed() {
		t.Error("the first sight of the Secret counted as a change")
	}
	renewed := secret.DeepCopy()
	renewed.SetResourceVersion("8")
	fw.Modify(renewed)
	if !changed() {
		t.Error("a renewal was not told")
	}
	fw.Action(watch.Bookmark, renewed)
	if changed() {
		t.Error("a bookmark counted as a change")
	}

	var logged bytes.Buffer
	denied := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{secretGVR: "SecretList"})
	watches := 0
	denied.PrependWatchReactor("secrets", func(k8stesting.Action) (bool, watch.Interface, error) {
		watches++
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "cache-tls", nil)
	})
	k = newKubeSource(denied, "prod", "cache", "cache-0", slog.New(slog.NewTextHandler(&logged, nil)))
	done := make(chan struct{})
	go func() { k.watchSecret(ctx, "cache-tls"); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("a forbidden watch is retried")
	}
	if watches != 1 || strings.Count(logged.String(), "a renewal is read at the next resync") != 1 {
		t.Errorf("%d watches; log:\n%s", watches, logged.String())
	}
}
