package main

// What holds the Redis port when redis-server is to start there. A manager
// that died uncleanly may have left its redis-server running: one started
// by an older manager, without the parent-death signal (mainthread.go), or
// one still saving its dataset after that signal when the manager is
// started again. That one, recognised by its working directory (Redis
// serves from its data directory), is stopped the way the manager stops
// its own: SHUTDOWN, which saves, within the shutdown budget; then this
// manager starts its own on the same data, and no acknowledged write is
// lost. Anything else on the port (another program, a redis-server of
// another data directory) is left alone and named, in the log, /readyz and
// the status, instead of a redis-server started only to fail on "Address
// already in use" again and again.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// portHolder is a process listening on a TCP port, as /proc shows it.
type portHolder struct {
	pid  int    // 0: a listener whose process this manager cannot see
	name string // its command (/proc/<pid>/comm)
	dir  string // its working directory
}

func (h portHolder) String() string {
	if h.pid == 0 {
		return "a process this manager cannot see (another user's, or outside its PID namespace)"
	}
	if h.name == "redis-server" {
		return fmt.Sprintf("pid %d (redis-server, serving %s)", h.pid, h.dir)
	}
	return fmt.Sprintf("pid %d (%s)", h.pid, h.name)
}

// findPortHolder finds what listens on port, over IPv4 and IPv6: the
// listening socket's inode, then the process holding a descriptor of it.
func findPortHolder(port int) (portHolder, bool) {
	inodes := map[string]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		listeningInodes(table, port, inodes)
	}
	if len(inodes) == 0 {
		return portHolder{}, false
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if holdsSocket(pid, inodes) {
			name, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			dir, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
			return portHolder{pid: pid, name: strings.TrimSpace(string(name)), dir: dir}, true
		}
	}
	return portHolder{}, true
}

// listeningInodes adds the inodes of the sockets of table (/proc/net/tcp's
// format) that listen on port.
func listeningInodes(table string, port int, inodes map[string]bool) {
	f, err := os.Open(table)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != "0A" { // 0A: LISTEN
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
			inodes[f[9]] = true
		}
	}
}

// holdsSocket says whether pid has a descriptor of one of the sockets.
func holdsSocket(pid int, inodes map[string]bool) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false // gone, or another user's
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if inode, ok := strings.CutPrefix(target, "socket:["); err == nil && ok && inodes[strings.TrimSuffix(inode, "]")] {
			return true
		}
	}
	return false
}

// isThisPods says whether a holder is a redis-server of this pod's data
// directory.
func (s *supervisor) isThisPods(h portHolder) bool {
	if h.pid == 0 || h.dir == "" {
		return false
	}
	want, err := filepath.EvalSymlinks(s.dataDir)
	if err != nil {
		want = filepath.Clean(s.dataDir)
	}
	return h.dir == want
}

// clearPort makes the Redis port free for redis-server to start on, or
// says why it cannot be.
func (s *supervisor) clearPort() (reason string) {
	h, held := findPortHolder(s.port)
	switch {
	case !held:
		return ""
	case !s.isThisPods(h):
		return fmt.Sprintf("port %d is held by %s, not by this pod's redis-server; it is left alone, and redis-server starts once the port is free", s.port, h)
	}
	s.stopStray(h)
	if h, held := findPortHolder(s.port); held {
		return fmt.Sprintf("port %d is still held by %s after a graceful stop", s.port, h)
	}
	return ""
}

// stopStrayIfAny stops a redis-server of this pod's data directory that
// runs without its manager, if the port shows one: when redis-server is
// not wanted (fenced), it must not go on serving either.
func (s *supervisor) stopStrayIfAny() {
	if h, held := findPortHolder(s.port); held && s.isThisPods(h) {
		s.stopStray(h)
	}
}

// stopStray stops a redis-server of this pod's data directory that this
// manager did not start, as it stops its own.
func (s *supervisor) stopStray(h portHolder) {
	s.log.Warn("this pod's redis-server runs without its manager; stopping it gracefully (SHUTDOWN, which saves) before going on", "pid", h.pid, "port", s.port, "dataDir", s.dataDir)
	proc, err := os.FindProcess(h.pid)
	if err != nil {
		return
	}
	// Not a child: its end is seen by polling, not by the reaper.
	gone := make(chan syscall.WaitStatus, 1)
	go func() {
		for alive(h.pid) {
			time.Sleep(20 * time.Millisecond)
		}
		gone <- 0
	}()
	s.stop(proc, gone, time.Now().Add(s.shutdown), "SHUTDOWN")
}

// alive says whether pid runs: not gone, and not a zombie waiting for its
// parent to reap it.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}
