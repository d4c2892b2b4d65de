package main

// Local mode (--cluster-file): the RedisCluster, its ConfigMap and its
// Secret come from one multi-document YAML file, and the instances' status
// entries are files beside it, so that several managers on one machine
// form a cluster without an API server.

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
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// localSource reads the cluster from a multi-document YAML file and keeps
// the instances' status entries as files beside it.
type localSource struct {
	path, statusDir     string
	cluster, namespace  string
	pod                 string
	lastFile, lastPeers []byte
	lastStamp           string // fileStamp of the file and the status directory, when last read
	parsedFrom          []byte // the file's bytes that parsed gave
	parsed              clusterFile
	sentAt              time.Time // of the last view
	beat                atomic.Int64
	pollWatched         time.Duration // the poll while inotify tells of changes
	log                 *slog.Logger
}

func newLocalSource(path, cluster, namespace, pod string, log *slog.Logger) *localSource {
	s := &localSource{path: path, statusDir: path + ".status", cluster: cluster, namespace: namespace, pod: pod,
		pollWatched: localPollWatched, log: log}
	s.beat.Store(time.Now().UnixNano())
	return s
}

// The file and the other instances' entries are read when inotify tells of
// a change in them (filewatch.go), and every localPollWatched all the same,
// should a change ever go untold; without inotify, every localPoll. Behind
// inotify, the poll looks at the file's and the directory's stat first and
// reads only when one moved (or the resync is due): an idle manager's poll
// is two system calls, not a dozen per file.
const (
	localPoll        = 100 * time.Millisecond
	localPollWatched = 5 * time.Second // well inside loopStale: it is the loop's heartbeat too
)

func (s *localSource) heartbeat() time.Time { return time.Unix(0, s.beat.Load()) }

// run sends a new view whenever the file or another instance's entry
// changes, or an error when the file no longer makes a usable view.
func (s *localSource) run(ctx context.Context, f *feed) {
	poll, changed := localPoll, (<-chan struct{})(nil)
	os.MkdirAll(s.statusDir, 0o755) // to be watched before any entry is written
	w, err := watchDirs(ctx,
		watchedDir{filepath.Dir(s.path), func(name string) bool { return name == filepath.Base(s.path) }},
		watchedDir{s.statusDir, s.isPeerEntry})
	if err != nil {
		s.log.Warn("cannot watch the cluster file for changes; reading it every "+localPoll.String(), "error", err)
	} else {
		poll, changed = s.pollWatched, w.changed
	}
	t := newBeat(poll)
	defer t.stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			t.next()
			s.beat.Store(time.Now().UnixNano())
			// Behind inotify, an unmoved stamp is enough: a change the
			// stamp's coarse clock hid was told. Without it, read.
			if changed != nil && fileStamp(s.path, s.statusDir) == s.lastStamp && time.Since(s.sentAt) < resyncEvery {
				continue
			}
		case <-changed:
			s.beat.Store(time.Now().UnixNano())
		}
		s.lastStamp = fileStamp(s.path, s.statusDir)
		file, ferr := os.ReadFile(s.path)
		peers := s.readPeers()
		// Unchanged, the view is sent again once a minute all the same, as
		// the Kubernetes source's resync does: it says the view is current.
		if ferr == nil && bytes.Equal(file, s.lastFile) && bytes.Equal(peers, s.lastPeers) && time.Since(s.sentAt) < resyncEvery {
			continue
		}
		s.lastFile, s.lastPeers = file, peers
		v, err := s.loadFrom(file, ferr)
		if err != nil {
			f.fail(err)
			continue
		}
		s.sentAt = time.Now()
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
		if !s.isPeerEntry(name) {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(s.statusDir, name))
		all = append(append(append(all, name...), 0), b...)
	}
	return all
}

// isPeerEntry says whether a name in the status directory is another
// instance's entry (not a temporary file of an atomic write).
func (s *localSource) isPeerEntry(name string) bool {
	return !strings.HasPrefix(name, ".") && name != s.pod+".json" && strings.HasSuffix(name, ".json")
}

// load reads the file into a view: the RedisCluster named by --cluster, the
// ConfigMap and Secret it references, and the status entries beside it.
func (s *localSource) load() (clusterView, error) {
	data, err := os.ReadFile(s.path)
	return s.loadFrom(data, err)
}

// loadFrom makes the view from the file's bytes as read. The file is
// parsed again only when they changed: another instance's new status
// entry is no reason to parse YAML.
func (s *localSource) loadFrom(data []byte, readErr error) (clusterView, error) {
	var v clusterView
	if readErr != nil {
		return v, fmt.Errorf("read cluster file: %w", readErr)
	}
	file, err := s.parsed, error(nil)
	if s.parsedFrom == nil || !bytes.Equal(data, s.parsedFrom) {
		if file, err = s.parse(data); err != nil {
			s.parsedFrom = nil
			return v, err
		}
		s.parsed, s.parsedFrom = file, data
	}
	if file.cluster == nil {
		return v, fmt.Errorf("cluster file %s holds no RedisCluster named %q in namespace %q", s.path, s.cluster, s.namespace)
	}
	v.cluster = *file.cluster
	if ref := v.cluster.Spec.ConfigMapRef; ref != nil {
		frag, ok := file.configMaps[ref.Name][ref.Key]
		if !ok {
			return v, fmt.Errorf("cluster file %s holds no ConfigMap %s with key %q", s.path, ref.Name, ref.Key)
		}
		v.fragment = frag
	}
	if ref := v.cluster.Spec.AuthSecretRef; ref != nil {
		pw, ok := file.secrets[ref.Name][ref.Key]
		if !ok {
			return v, fmt.Errorf("cluster file %s holds no Secret %s with key %q", s.path, ref.Name, ref.Key)
		}
		v.password = strings.TrimRight(string(pw), "\r\n")
	}
	if spec := v.cluster.Spec.TLS; spec != nil && spec.SecretRef != nil {
		data, ok := file.secrets[spec.SecretRef.Name]
		if !ok {
			return v, fmt.Errorf("cluster file %s holds no Secret %s", s.path, spec.SecretRef.Name)
		}
		if v.tls, err = tlsMaterialOf(spec, data); err != nil {
			return v, fmt.Errorf("cluster file %s: Secret %s: %w", s.path, spec.SecretRef.Name, err)
		}
	}
	v.users, v.usersErr = declaredUsers(v.cluster.Spec.Users, func(ref *keyRef) (string, error) {
		pw, ok := file.secrets[ref.Name][ref.Key]
		if !ok {
			return "", fmt.Errorf("cluster file %s holds no Secret %s with key %q", s.path, ref.Name, ref.Key)
		}
		return string(pw), nil
	})
	v.cluster.Status.InstancesStatus = s.readEntries()
	v.cluster.Status.CurrentPrimary = readCurrentPrimary(s.statusDir)
	return v, nil
}

// clusterFile is what a cluster file holds for this namespace.
type clusterFile struct {
	cluster    *redisCluster // the one named by --cluster
	configMaps map[string]map[string]string
	secrets    map[string]map[string][]byte
}

// parse reads the file's documents. An error never quotes a Secret.
func (s *localSource) parse(data []byte) (clusterFile, error) {
	file := clusterFile{configMaps: map[string]map[string]string{}, secrets: map[string]map[string][]byte{}}
	docs := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 1; ; i++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return file, nil
		}
		if err != nil {
			return file, fmt.Errorf("cluster file %s: %w", s.path, err)
		}
		var head struct {
			Kind     string     `json:"kind"`
			Metadata objectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return file, fmt.Errorf("cluster file %s: document %d is not valid YAML%s", s.path, i, yamlErrorLine(err))
		}
		if head.Metadata.Namespace != "" && head.Metadata.Namespace != s.namespace {
			continue
		}
		if err := s.parseDocument(&file, head.Kind, head.Metadata.Name, doc); err != nil {
			return file, err
		}
	}
}

// parseDocument adds one document of the kinds the file may hold.
func (s *localSource) parseDocument(file *clusterFile, kind, name string, doc []byte) error {
	switch kind {
	case "RedisCluster":
		if name != s.cluster {
			return nil
		}
		file.cluster = &redisCluster{}
		if err := yaml.Unmarshal(doc, file.cluster); err != nil {
			return fmt.Errorf("cluster file %s, RedisCluster %s: %w", s.path, s.cluster, err)
		}
	case "ConfigMap":
		var cm struct {
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal(doc, &cm); err != nil {
			return fmt.Errorf("cluster file %s, ConfigMap %s: %w", s.path, name, err)
		}
		file.configMaps[name] = cm.Data
	case "Secret":
		var sec struct {
			Data       map[string][]byte `json:"data"`
			StringData map[string]string `json:"stringData"`
		}
		// The error would quote the document, and with it the secret.
		if err := yaml.Unmarshal(doc, &sec); err != nil {
			return fmt.Errorf("cluster file %s: Secret %s is not valid", s.path, name)
		}
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		for k, val := range sec.StringData {
			sec.Data[k] = []byte(val)
		}
		file.secrets[name] = sec.Data
	}
	return nil
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

// currentPrimaryFile is status.currentPrimary in local mode, beside the
// status entries: the cluster file holds no status.
const currentPrimaryFile = "currentPrimary"

// claimCurrentPrimary records that pod holds the primary role, as the
// primary's status patch does in the object.
func claimCurrentPrimary(statusDir, pod string) error {
	path := filepath.Join(statusDir, currentPrimaryFile)
	if b, err := os.ReadFile(path); err == nil && string(b) == pod+"\n" {
		return nil // the claim stands; each status write need not sync it again
	}
	return writeFileAtomic(path, []byte(pod+"\n"), 0o644)
}

func readCurrentPrimary(statusDir string) string {
	b, _ := os.ReadFile(filepath.Join(statusDir, currentPrimaryFile))
	return strings.TrimSpace(string(b))
}
