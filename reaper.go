package main

// The manager is PID 1 of its pod. Exactly one goroutine waits for
// children (the reaper): a second wait, such as exec.Cmd.Wait, would race it
// for redis-server's exit status. It also reaps every orphan in the
// container, and runs the short-lived helpers (redis-server checking a
// fragment, redis-check-rdb, a new binary checking itself).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

// prSetChildSubreaper makes orphans of our descendants our children, so that
// we reap them as PID 1 would when we are not PID 1 (local mode, tests).
const prSetChildSubreaper = 36

// reaper owns every wait for a child process.
type reaper struct {
	log     *slog.Logger
	sigchld chan os.Signal

	mu      sync.Mutex // held across start and wait so an exit cannot beat its registration
	waiting map[int]chan<- syscall.WaitStatus
}

// newReaper asks for SIGCHLD before any child exists and, when we are not
// PID 1, becomes the subreaper of our descendants.
func newReaper(log *slog.Logger) *reaper {
	r := &reaper{log: log, sigchld: make(chan os.Signal, 1), waiting: map[int]chan<- syscall.WaitStatus{}}
	signal.Notify(r.sigchld, syscall.SIGCHLD)
	if os.Getpid() != 1 {
		if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
			log.Warn("cannot become child subreaper; orphans of redis-server will not be reaped here", "error", errno)
		}
	}
	return r
}

// start runs startProcess and registers the child before any wait can see it.
// The returned channel receives the child's wait status once.
func (r *reaper) start(startProcess func() (*os.Process, error)) (*os.Process, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := startProcess()
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[p.Pid] = ch
	return p, ch, nil
}

// adopt registers a child this process did not start: the redis-server of
// the manager it replaced. One that exited meanwhile is reported at once;
// false when pid is not a child of this process (none was running, or the
// PID now belongs to another process).
func (r *reaper) adopt(pid int) (<-chan syscall.WaitStatus, bool) {
	if pid <= 0 {
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan syscall.WaitStatus, 1)
	var ws syscall.WaitStatus
	got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	switch {
	case err != nil: // ECHILD
		return nil, false
	case got == pid:
		ch <- ws
	default:
		r.waiting[pid] = ch
	}
	return ch, true
}

// hold stops all reaping until the returned function is called: across an
// upgrade's exec, redis-server's exit must be left for the next manager.
func (r *reaper) hold() func() {
	r.mu.Lock()
	return r.mu.Unlock
}

// run reaps children until ctx ends. A periodic sweep covers a SIGCHLD that
// arrived while nothing listened (coalesced signals, a child adopted late).
func (r *reaper) run(ctx context.Context) {
	defer signal.Stop(r.sigchld)
	sweep := newBeat(5 * time.Second)
	defer sweep.stop()
	for {
		r.reapAll()
		select {
		case <-ctx.Done():
			return
		case <-r.sigchld:
		case <-sweep.C:
			sweep.next()
		}
	}
}

func (r *reaper) reapAll() {
	for {
		var ws syscall.WaitStatus
		r.mu.Lock()
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid > 0 {
			if ch, ok := r.waiting[pid]; ok {
				ch <- ws
				delete(r.waiting, pid)
				pid = -pid // reported to its owner; not an orphan
			}
		}
		r.mu.Unlock()
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil || pid == 0:
			return // ECHILD: no children at all; 0: none has exited yet
		case pid > 0:
			r.log.Debug("reaped orphan", "pid", pid, "status", describeExit(ws))
		}
	}
}

func describeExit(ws syscall.WaitStatus) string {
	switch {
	case ws.Signaled():
		return fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// startFunc starts a child through the one reaper; tests outside the
// manager give their own.
type startFunc func(func() (*os.Process, error)) (*os.Process, <-chan syscall.WaitStatus, error)

// runChild runs a short-lived helper (redis-server checking a
// configuration, a new binary checking itself) and returns what it printed
// and how it ended; one that outlives timeout, or ctx, is killed. When
// stopOn is not empty, the child is sent SIGTERM once its output holds
// stopOn, case aside: a server that only has to show it can start.
func runChild(ctx context.Context, start startFunc, argv []string, dir string, timeout time.Duration, stopOn string) (string, syscall.WaitStatus, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", 0, err
	}
	defer r.Close()
	p, exited, err := start(func() (*os.Process, error) {
		return os.StartProcess(argv[0], argv, &os.ProcAttr{
			Dir: dir, Files: []*os.File{nil, w, w}, Sys: &syscall.SysProcAttr{Setpgid: true},
		})
	})
	w.Close()
	if err != nil {
		return "", 0, err
	}
	defer p.Release()
	var mu sync.Mutex
	var out bytes.Buffer
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		buf := make([]byte, 4096)
		stopped := stopOn == ""
		for {
			n, err := r.Read(buf)
			mu.Lock()
			if out.Len() < 64<<10 {
				out.Write(buf[:n])
			}
			if !stopped && bytes.Contains(bytes.ToLower(out.Bytes()), []byte(strings.ToLower(stopOn))) {
				stopped = true
				p.Signal(syscall.SIGTERM)
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	var ws syscall.WaitStatus
	select {
	case ws = <-exited:
	case <-time.After(timeout):
		p.Kill()
		<-exited
		return "", 0, fmt.Errorf("it did not exit within %s", timeout)
	case <-ctx.Done():
		p.Kill()
		<-exited
		return "", 0, ctx.Err()
	}
	// What it wrote is in the pipe by now; a descendant (of a wrapper
	// script, say) may hold the pipe open, so its end is not waited for.
	select {
	case <-eof:
	case <-time.After(500 * time.Millisecond):
	}
	mu.Lock()
	defer mu.Unlock()
	return out.String(), ws, nil
}
