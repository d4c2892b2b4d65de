package main

// redis-server's life is tied to the manager's. It is started with a
// parent-death signal, SIGTERM, on which Redis shuts down as SHUTDOWN does
// (saving where persistence is on), so that a manager that dies uncleanly
// (kill -9, the OOM killer, a crash) outside a container does not leave it
// taking writes with nobody to fence it, move its role or report on it. In
// a container the death of PID 1 already ends every process of the pod.
//
// The kernel sends that signal when the thread that started the child
// ends, not the process; and an exec ends every thread but the one that
// makes it. So redis-server is started, and the upgrade's exec made, on
// one thread that lives as long as the process does: the main thread,
// which main keeps for that (runtime.LockOSThread in init) and lends
// through onMainThread. The exec leaves that thread in place as the new
// manager's main thread, still redis-server's parent, so an in-place
// upgrade sends no signal. (A redis-server started by a manager older than
// this carries no such signal until its next start.)

import (
	"runtime"
	"sync/atomic"
)

func init() { runtime.LockOSThread() } // main.main runs on the main thread, and stays there

var (
	mainThread        = make(chan func())
	mainThreadServing atomic.Bool
)

// serveMainThread runs work on a goroutine of its own, and what
// onMainThread sends on the main thread, until work returns its exit code.
// The main thread serves before work begins: a redis-server started by
// work is never started from another thread.
func serveMainThread(work func() int) int {
	mainThreadServing.Store(true)
	exit := make(chan int, 1)
	go func() { exit <- work() }()
	for {
		select {
		case f := <-mainThread:
			f()
		case code := <-exit:
			return code
		}
	}
}

// onMainThread runs f on the main thread and waits for it. Where main does
// not serve it (the tests run the manager's parts inside the test binary),
// f runs on the calling goroutine.
func onMainThread(f func()) {
	if !mainThreadServing.Load() {
		f()
		return
	}
	done := make(chan struct{})
	mainThread <- func() {
		defer close(done)
		f()
	}
	<-done
}
