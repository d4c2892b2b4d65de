package main

// The handoff is what one manager leaves the next across the exec of an
// in-place upgrade (upgrade.go): the inherited descriptors, the
// redis-server it adopts, and the last view of the cluster. It is read once
// and removed, for it holds the password redis-server started with.

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"time"
)

// handoffEnv names the handoff file in the new process's environment.
const (
	handoffEnv     = "REDIS_OPERATOR_HANDOFF"
	handoffFile    = "handoff.json" // in the private directory
	handoffVersion = 1
)

// handoff is what one manager leaves the next across the exec. The file
// holds the redis.conf redis-server started on, password included, so it is
// private to the data directory and removed as soon as it is read.
type handoff struct {
	Version   int       `json:"version"` // of this format
	From      string    `json:"from"`
	ExecAt    time.Time `json:"execAt"`
	Listener  int       `json:"listenerFd"`
	Discovery int       `json:"discoveryFd,omitempty"` // the discovery port's listener; 0 when off
	// The discovery port's connections, and the primary it last announced
	// to subscribers (discoveryhandoff.go).
	DiscoveryConns  []discoveryConnHandoff `json:"discoveryConns,omitempty"`
	DiscoveryMaster string                 `json:"discoveryMaster,omitempty"`
	LogR            int                    `json:"logReadFd"`
	LogW            int                    `json:"logWriteFd"`
	Reply           int                    `json:"replyFd"` // the upgrade request's connection; -1 when answered already
	RedisPID        int                    `json:"redisPid"`
	StartedAt       time.Time              `json:"startedAt"`
	StartedConf     string                 `json:"startedConf"`
	Restarts        int                    `json:"restarts"`
	NewHash         string                 `json:"executableHash"` // of the new binary, checked on upload: not hashed again
	Fenced          bool                   `json:"fenced"`         // as the old manager held it, a malformed annotation notwithstanding
	Upgrades        int64                  `json:"upgrades"`       // in-place upgrades of this pod's manager, this one included
	// The last view of the cluster, so that the new manager is ready at
	// once rather than after its first read of the API server.
	View *handoffView `json:"view,omitempty"`
}

type handoffView struct {
	Cluster  redisCluster `json:"cluster"`
	Fragment string       `json:"fragment"`
	Password string       `json:"password"`
}

// write puts the handoff in the private directory, for the new manager,
// and returns its path.
func (h *handoff) write(dataDir string) (string, error) {
	path := filepath.Join(privateDir(dataDir), handoffFile)
	h.ExecAt = time.Now()
	data, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	return path, writeFileAtomic(path, data, 0o600)
}

// takeHandoff reads what the previous manager left, if this process is the
// product of an upgrade, and removes it so that no child inherits it.
func takeHandoff() (*handoff, error) {
	path := os.Getenv(handoffEnv)
	if path == "" {
		return nil, nil
	}
	os.Unsetenv(handoffEnv)
	data, err := os.ReadFile(path)
	os.Remove(path)
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	var h handoff
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	// No child this manager starts may inherit them.
	fds := []int{h.Listener, h.LogR, h.LogW, h.Reply, h.Discovery}
	for _, c := range h.DiscoveryConns {
		fds = append(fds, c.Fd)
	}
	for _, fd := range fds {
		if fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
	if h.Version != handoffVersion || h.Listener <= 2 || h.LogR <= 2 || h.LogW <= 2 {
		return nil, fmt.Errorf("handoff: version %d with descriptors %d, %d, %d is not one this manager reads", h.Version, h.Listener, h.LogR, h.LogW)
	}
	return &h, nil
}

// inheritedFile makes an inherited descriptor a File again. The listener,
// the log's read end and the request's connection were non-blocking in the
// old manager and still are: reads on them honour deadlines, which the next
// upgrade needs. The log's write end stays blocking, as redis-server wants
// its stdout.
func inheritedFile(fd int, name string) *os.File {
	return os.NewFile(uintptr(fd), name)
}

// seedCredentials offers, from the start, the password redis-server
// started with, and the other instances as the old manager knew them: the
// first look at Redis, and a stop that cannot wait, do not wait for the
// view to bring them.
func (h *handoff) seedCredentials(creds *credentials, pod string) {
	list := []string{confSetting(h.StartedConf, "masterauth")}
	if h.View != nil && h.View.Password != list[0] {
		list = append(list, h.View.Password)
	}
	creds.set(list)
	if h.View != nil {
		creds.setPeers(&h.View.Cluster, pod)
	}
}

// seed gives a new reconciler what the old one knew, as it is made: it
// owns redis-server already, and holds its fencing as it was. A fragment
// the old manager checked needs no new check by redis-server.
func (h *handoff) seed(rec *reconciler) {
	rec.adopted, rec.fenced, rec.fenceKnown = true, h.Fenced, true
	if v := h.View; v != nil && rec.fragmentOK {
		if frag, err := parseFragment(v.Fragment); err == nil && reflect.DeepEqual(valuesOf(frag), rec.wantedValues) {
			rec.fragmentText = v.Fragment
		}
	}
}

// answerUpgrade is the new manager's answer to the request that started it.
func answerUpgrade(h *handoff, exeHash string, log *slog.Logger) {
	gap := time.Since(h.ExecAt)
	log.Info("upgraded in place", "from", h.From, "to", version, "redisPid", h.RedisPID, "handover", gap.Round(time.Microsecond).String())
	if h.Reply < 0 {
		return
	}
	f := inheritedFile(h.Reply, "upgrade-request")
	defer f.Close()
	conn, err := net.FileConn(f)
	if err != nil {
		return
	}
	replyRaw(conn, http.StatusOK, map[string]any{"updated": true, "from": h.From, "version": version,
		"executableHash": exeHash, "redisPid": h.RedisPID, "handoverMs": float64(gap.Microseconds()) / 1000})
}

// legacyHandoff is where managers before the private directory wrote the
// handoff. One an upgrade that failed left there holds a password; it is
// removed when it reads as a handoff, and only then: the name is free for
// Redis's files now, and a dataset is never deleted by its name alone.
const legacyHandoff = ".handoff.json"

func removeLegacyHandoff(dataDir string) {
	path := filepath.Join(dataDir, legacyHandoff)
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return
	}
	data, _ := os.ReadFile(path)
	var h handoff
	if json.Unmarshal(data, &h) == nil && h.Version == handoffVersion && h.Listener > 2 {
		os.Remove(path)
	}
}
