package main

// The manager replaces itself in place. PUT /v1/update brings a new binary,
// which is checked (its checksum, its ELF class and machine, its own
// `version`, its acceptance of this instance's settings) and renamed over
// this one; then the manager execs it. The PID
// stays, so redis-server stays its child and keeps serving. The HTTP
// listener and the pipe of redis-server's log are inherited: probes wait in
// the listen queue for the few milliseconds of the exec instead of being
// refused, and the log keeps flowing. The new manager adopts redis-server
// from the handoff (handoff.go), and answers the upgrade request itself
// once it serves, so a caller that goes on at once (with a SIGTERM, say)
// finds it.

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxBinarySize bounds an upload: the manager is about 17 MB, and the
// upload may land on a memory-backed volume that counts against the pod.
const maxBinarySize = 64 << 20

// updater takes uploads, one at a time, and passes a checked binary to the
// goroutine that runs the instance, which execs it.
type updater struct {
	exe      string // this binary's path, which the new one replaces
	start    startFunc
	ctx      context.Context // ends when the manager stops
	log      *slog.Logger
	busy     sync.Mutex // one operator command that changes the instance at a time
	requests chan upgradeRequest
}

func newUpdater(ctx context.Context, exe string, start startFunc, log *slog.Logger) *updater {
	return &updater{exe: exe, start: start, ctx: ctx, log: log, requests: make(chan upgradeRequest)}
}

type upgradeRequest struct {
	conn    net.Conn // hijacked, for the new manager to answer on; nil when answered
	version string
	sha256  string
}

func (u *updater) handle(w http.ResponseWriter, r *http.Request) {
	if !u.busy.TryLock() {
		writeJSON(w, http.StatusConflict, map[string]any{"error": errBusy})
		return
	}
	handedOver := false
	defer func() {
		if !handedOver {
			u.busy.Unlock()
		}
	}()
	if u.ctx.Err() != nil {
		writeJSON(w, http.StatusConflict, map[string]any{"error": "the manager is stopping"})
		return
	}
	want := strings.ToLower(r.Header.Get("X-Binary-SHA256"))
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "the X-Binary-SHA256 header must hold the body's SHA-256 in hex"})
		return
	}
	// A binary takes longer to arrive than a request's usual budget.
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(5 * time.Minute))
	rc.SetWriteDeadline(time.Now().Add(6 * time.Minute))
	newVersion, code, err := u.receive(http.MaxBytesReader(w, r.Body, maxBinarySize), want)
	if err != nil {
		u.log.Warn("refused an upgrade", "error", err, "status", code)
		writeJSON(w, code, map[string]any{"error": err.Error()})
		return
	}
	u.log.Info("upgrading in place", "from", version, "to", newVersion)
	req := upgradeRequest{version: newVersion, sha256: want}
	if r.TLS == nil {
		// The new manager answers, on this very connection.
		if conn, _, err := rc.Hijack(); err == nil {
			req.conn = conn
		}
	}
	if req.conn == nil {
		// Over TLS the session cannot cross the exec, and the old manager
		// cannot answer for what happens after it: the caller watches
		// /v1/status for the new executableHash.
		writeJSON(w, http.StatusAccepted, map[string]any{"accepted": true, "from": version, "version": newVersion,
			"executableHash": want, "note": "the upgrade takes place after this answer; /v1/status shows its executableHash once done"})
		rc.Flush()
	}
	select {
	case u.requests <- req:
		handedOver = true // the instance's goroutine unlocks busy
	case <-u.ctx.Done():
		replyRaw(req.conn, http.StatusConflict, map[string]any{"error": "the manager is stopping; the new binary runs at its next start"})
	}
}

// receive writes the body beside this binary while hashing it, checks it,
// and renames it into place. It returns the new binary's version, or the
// status code and the reason it was refused; a refused upload leaves no file.
func (u *updater) receive(body io.Reader, want string) (string, int, error) {
	dir := filepath.Dir(u.exe)
	f, err := os.CreateTemp(dir, ".redis-operator-update-*")
	if err != nil {
		return "", http.StatusInternalServerError, fmt.Errorf("cannot write beside %s: %w", u.exe, err)
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return "", http.StatusRequestEntityTooLarge, fmt.Errorf("the binary is larger than %d bytes", maxBinarySize)
	case err != nil:
		return "", http.StatusBadRequest, fmt.Errorf("reading the binary: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return "", http.StatusBadRequest, fmt.Errorf("checksum mismatch: the body's SHA-256 is %s, X-Binary-SHA256 says %s", got, want)
	}
	if code, err := sameMachine(f.Name(), u.exe); err != nil {
		return "", code, err
	}
	if err := os.Chmod(f.Name(), 0o755); err != nil {
		return "", http.StatusInternalServerError, err
	}
	out, ws, err := runChild(context.Background(), u.start, []string{f.Name(), "version"}, dir, 10*time.Second, "")
	fields := strings.Fields(out)
	switch {
	case err != nil:
		return "", http.StatusUnprocessableEntity, fmt.Errorf("the new binary fails its self-check: %w", err)
	case !ws.Exited() || ws.ExitStatus() != 0:
		return "", http.StatusUnprocessableEntity, fmt.Errorf("the new binary fails its self-check: `version` ended with %s", describeExit(ws))
	case len(fields) < 2 || fields[0] != "redis-operator":
		return "", http.StatusUnprocessableEntity, fmt.Errorf("the new binary fails its self-check: `version` printed %q", lastLine(out))
	}
	// It must also take this instance's flags and environment: one that
	// refused them would fail after the exec, with no way back.
	out, ws, err = runChild(context.Background(), u.start, append([]string{f.Name(), "instance"}, append(slices.Clone(os.Args[2:]), "--check-settings")...), dir, 10*time.Second, "")
	switch {
	case err != nil:
		return "", http.StatusUnprocessableEntity, fmt.Errorf("the new binary fails its self-check: %w", err)
	case !ws.Exited() || ws.ExitStatus() != 0:
		return "", http.StatusUnprocessableEntity, fmt.Errorf("the new binary refuses this instance's settings: %s", lastLine(out))
	}
	if u.ctx.Err() != nil {
		return "", http.StatusConflict, errors.New("the manager is stopping")
	}
	if err := os.Rename(f.Name(), u.exe); err != nil {
		return "", http.StatusInternalServerError, fmt.Errorf("cannot put the new binary in place: %w", err)
	}
	if err := syncDir(dir); err != nil {
		// In place now, whatever this says: the exec goes ahead, and only
		// a crash of the node before the kernel writes it back would bring
		// the old binary back at the next start.
		u.log.Warn("the new binary is in place, but its rename may not be durable yet", "error", err)
	}
	return fields[1], 0, nil
}

// sameMachine checks that the new binary is an executable for this one's
// ELF class and machine: a binary for another architecture would fail at
// the exec, when there is no going back.
func sameMachine(path, self string) (int, error) {
	nf, err := elf.Open(path)
	if err != nil {
		return http.StatusUnprocessableEntity, fmt.Errorf("not an executable for this machine: %w", err)
	}
	defer nf.Close()
	sf, err := elf.Open(self)
	if err != nil {
		return http.StatusInternalServerError, fmt.Errorf("cannot read this binary: %w", err)
	}
	defer sf.Close()
	switch {
	case nf.Type != elf.ET_EXEC && nf.Type != elf.ET_DYN:
		return http.StatusUnprocessableEntity, fmt.Errorf("not an executable: ELF type %s", nf.Type)
	case nf.Class != sf.Class || nf.Machine != sf.Machine:
		return http.StatusUnprocessableEntity, fmt.Errorf("built for %s %s, this machine runs %s %s", nf.Class, nf.Machine, sf.Class, sf.Machine)
	}
	return 0, nil
}

// errStopping ends an upgrade that a stop overtook.
var errStopping = errors.New("a stop came before the exec")

// execUpgrade execs the new binary, with everything the new manager needs
// inherited. It returns only when the exec did not happen: with errStopping
// when a stop came first; otherwise the manager serves on, on the listener
// it returns (a new one when HTTP had stopped already), and the caller has
// its answer.
func execUpgrade(ctx context.Context, req upgradeRequest, exe, dataDir string, rec *reconciler, sup *supervisor, reaper *reaper, srv *httpServer, ln net.Listener, disc *discovery, discLn net.Listener) (net.Listener, error) {
	refuse := func(code int, msg string) (net.Listener, error) {
		replyRaw(req.conn, code, map[string]any{"error": msg})
		return ln, errors.New(msg)
	}
	// The two owners of state hold still while it is written down: no start
	// or stop of redis-server, no role change. Neither is waited for long:
	// a stop or a handover in progress makes the upgrade wait for a retry.
	st, resumeSup, ok := sup.pause(ctx, 2*time.Second)
	if !ok {
		return refuse(http.StatusConflict, "redis-server is being stopped, started or restarted; try again")
	}
	defer resumeSup()
	resumeRec, ok := rec.pause(ctx, 2*time.Second)
	if !ok {
		return refuse(http.StatusConflict, "the manager is busy with a role change; try again")
	}
	defer resumeRec()
	logR, logW, resumeLog, err := sup.releaseLog()
	if err != nil {
		return refuse(http.StatusInternalServerError, "cannot hand redis-server's log over: "+err.Error())
	}
	defer resumeLog()
	// From here no exit of redis-server is reaped by this process: the next
	// one must see it.
	defer reaper.hold()()
	// The discovery port stops: its listener and its connections cross the
	// exec.
	discConns, resumeDisc := disc.quiesce()
	defer resumeDisc()

	fds := inherit()
	h := handoff{Version: handoffVersion, From: version, Restarts: st.restarts, NewHash: req.sha256, Fenced: rec.fenced, Upgrades: counts.upgrades.Load() + 1,
		Listener: fds.dup(ln.(*net.TCPListener)), LogR: fds.dup(logR), LogW: fds.dup(logW), Reply: -1}
	if c, ok := req.conn.(*net.TCPConn); ok {
		h.Reply = fds.dup(c)
	}
	if l, ok := discLn.(*net.TCPListener); ok {
		h.Discovery = fds.dup(l)
	}
	for _, dc := range discConns {
		if fd := fds.dup(dc.c.(*net.TCPConn)); fd >= 0 {
			h.DiscoveryConns = append(h.DiscoveryConns, dc.handoff(fd))
		}
	}
	h.DiscoveryMaster = disc.announced()
	if h.Listener < 0 || h.LogR < 0 || h.LogW < 0 || req.conn != nil && h.Reply < 0 || h.Discovery < 0 {
		fds.close()
		return refuse(http.StatusInternalServerError, "cannot keep the listeners, the log pipe or this connection across the exec")
	}
	if rec.haveView { // read while the reconciler is paused
		h.View = &handoffView{Cluster: rec.view.cluster, Fragment: rec.view.fragment, Password: rec.view.password}
	}
	if st.running {
		h.RedisPID, h.StartedAt, h.StartedConf = st.pid, st.startedAt, st.startedConf
	}
	// Written while HTTP still serves: a full disk refuses the upgrade and
	// changes nothing else.
	path, err := h.write(dataDir)
	if err != nil {
		fds.close()
		return refuse(http.StatusInternalServerError, "cannot write the handoff: "+err.Error())
	}
	// Requests in flight are answered; new connections wait in the listen
	// queue for the next manager.
	srv.quiesce(2 * time.Second)
	err = errStopping
	if ctx.Err() == nil {
		// From the main thread, redis-server's parent: no other thread's
		// end may send it its parent-death signal (mainthread.go).
		onMainThread(func() { err = syscall.Exec(exe, os.Args, append(os.Environ(), handoffEnv+"="+path)) })
	}
	// Still here: the exec did not happen.
	os.Remove(path)
	if errors.Is(err, errStopping) {
		fds.close()
		replyRaw(req.conn, http.StatusConflict, map[string]any{"error": "the manager is stopping; the new binary runs at its next start"})
		return nil, err
	}
	replyRaw(req.conn, http.StatusInternalServerError, map[string]any{"error": "exec of the new binary failed: " + err.Error()})
	next, lerr := fds.listenerAgain(h.Listener)
	if lerr != nil {
		return nil, fmt.Errorf("exec %s: %w; and the listener is lost: %v", exe, err, lerr)
	}
	return next, fmt.Errorf("exec %s: %w", exe, err)
}

// inheritance is the descriptors the new manager inherits: duplicates made
// without close-on-exec, under ForkLock so that no other child inherits
// them meanwhile. close releases them, and the lock.
type inheritance struct{ fds []int }

func inherit() *inheritance {
	syscall.ForkLock.Lock()
	return &inheritance{}
}

// dup duplicates c's descriptor; -1 when it cannot.
func (in *inheritance) dup(c syscall.Conn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	raw.Control(func(f uintptr) { fd, _ = syscall.Dup(int(f)) })
	if fd >= 0 {
		in.fds = append(in.fds, fd)
	}
	return fd
}

func (in *inheritance) close() {
	for _, fd := range in.fds {
		syscall.Close(fd)
	}
	syscall.ForkLock.Unlock()
}

// listenerAgain serves again, after an exec that failed, on the listener's
// duplicate: Serve closed the original. The other duplicates are closed.
func (in *inheritance) listenerAgain(fd int) (net.Listener, error) {
	in.fds = slices.DeleteFunc(in.fds, func(d int) bool { return d == fd })
	in.close()
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "http-listener")
	defer f.Close()
	return net.FileListener(f)
}

// replyRaw answers on a hijacked connection and closes it.
func replyRaw(conn net.Conn, code int, body any) {
	if conn == nil {
		return
	}
	defer conn.Close()
	b, _ := json.MarshalIndent(body, "", "  ")
	b = append(b, '\n')
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, http.StatusText(code), len(b), b)
}
