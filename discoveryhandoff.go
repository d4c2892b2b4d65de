package main

// The discovery port across an in-place upgrade's exec. Its listener is
// inherited, so a client that connects meanwhile waits in the listen queue
// for the next manager. The connections open cross the exec too, each
// stopped between two commands: a client whose question crosses the exec
// gets its answer from the next manager, and a subscriber keeps its
// subscriptions. Closed instead, a connection is reset under a client that
// asked a moment before the exec or asks a moment after it, which a client
// library reports as an error, not as a reason to ask again.
//
// A TLS connection cannot cross: its session lives in crypto/tls. It is
// closed at the exec, and its client connects again.

import (
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// discoveryPause is an upgrade's, from quiesce until the exec, or until
// resume when the exec did not happen.
type discoveryPause struct {
	resumed chan struct{}       // closed by resume
	held    chan struct{}       // closed by the accept loop, once stopped
	once    sync.Once           // over held
	stopped chan *discoveryConn // each connection asked: itself once stopped, nil when it cannot stop or ended
}

// discoveryConnHandoff is one connection as the next manager takes it.
type discoveryConnHandoff struct {
	Fd       int      `json:"fd"`
	Resp3    bool     `json:"resp3,omitempty"`
	Authed   bool     `json:"authed,omitempty"`
	Name     string   `json:"name,omitempty"`
	Channels []string `json:"channels,omitempty"`
	Patterns []string `json:"patterns,omitempty"`
}

// discoveryHandoffWait bounds the wait for the connections to stop: each
// stops as soon as the command it is reading is answered. One that a slow
// client holds mid-command longer is closed by the exec.
const discoveryHandoffWait = 200 * time.Millisecond

// quiesce readies the discovery port for an upgrade's exec: it stops
// accepting, and stops each open connection between two commands. It
// returns those stopped that can cross the exec, and resume, to serve on
// should the exec not happen.
func (d *discovery) quiesce() (stopped []*discoveryConn, resume func()) {
	if d == nil {
		return nil, func() {}
	}
	p := &discoveryPause{resumed: make(chan struct{}), held: make(chan struct{})}
	d.pausing.Store(p)
	deadline := time.After(discoveryHandoffWait)
	// Once the accept loop is held, no connection is accepted and not yet
	// registered. Before it serves, none is open.
	if ln := d.ln.Load(); ln != nil {
		ln.SetDeadline(time.Now()) // wakes the pending Accept
		select {
		case <-p.held:
		case <-deadline:
		}
	}
	d.mu.Lock()
	open := slices.Collect(maps.Keys(d.open))
	d.mu.Unlock()
	p.stopped = make(chan *discoveryConn, len(open))
	for _, dc := range open {
		dc.stopForUpgrade(p)
	}
wait:
	for range open {
		select {
		case dc := <-p.stopped:
			if dc != nil {
				stopped = append(stopped, dc)
			}
		case <-deadline:
			break wait
		}
	}
	return stopped, func() {
		d.pausing.Store(nil)
		if ln := d.ln.Load(); ln != nil {
			ln.SetDeadline(time.Time{})
		}
		close(p.resumed)
	}
}

// holdAccepting holds the accept loop while an upgrade is under way. It
// says whether to go on accepting: false once ctx ended.
func (d *discovery) holdAccepting(ctx context.Context) bool {
	if p := d.pausing.Load(); p != nil {
		p.once.Do(func() { close(p.held) })
		select {
		case <-p.resumed:
		case <-ctx.Done():
		}
	}
	return ctx.Err() == nil
}

// stopForUpgrade asks the connection to stop before its next command. A
// TLS connection goes on until the exec closes it.
func (dc *discoveryConn) stopForUpgrade(p *discoveryPause) {
	if _, ok := dc.c.(*net.TCPConn); !ok {
		p.stopped <- nil
		return
	}
	dc.pmu.Lock()
	defer dc.pmu.Unlock()
	dc.pause = p
	if dc.idle {
		dc.c.SetReadDeadline(time.Now()) // wakes its wait for the next command
	}
}

// next waits for the next command's first byte, which it leaves unread.
// An upgrade stops the connection here, where nothing of a command has
// been read: the next manager reads what the client sends meanwhile.
func (dc *discoveryConn) next(ctx context.Context, r interface{ Peek(int) ([]byte, error) }) error {
	for {
		dc.setIdle(true)
		_, err := r.Peek(1)
		p := dc.setIdle(false)
		switch {
		case err == nil && p != nil:
			dc.c.SetReadDeadline(time.Time{}) // the command came with the upgrade: answered first
			return nil
		case err == nil:
			return nil
		case p == nil || !errors.Is(err, os.ErrDeadlineExceeded):
			return err
		}
		if !dc.stopUntilResumed(ctx, p) {
			return ctx.Err()
		}
	}
}

// setIdle marks the connection waiting for a command or not, and returns
// the pause of an upgrade under way. Waiting, it stops at once.
func (dc *discoveryConn) setIdle(idle bool) *discoveryPause {
	dc.pmu.Lock()
	defer dc.pmu.Unlock()
	dc.idle = idle
	if idle && dc.pause != nil {
		dc.c.SetReadDeadline(time.Now())
	}
	return dc.pause
}

// stopUntilResumed tells the upgrade that the connection stopped, and holds
// it, notifications included, until the exec ends this process or resume
// is called. It returns false when ctx ended first.
func (dc *discoveryConn) stopUntilResumed(ctx context.Context, p *discoveryPause) bool {
	dc.pmu.Lock()
	dc.pause = nil // told once: an end from now on is the exec's or ctx's
	dc.pmu.Unlock()
	dc.mu.Lock()
	defer dc.mu.Unlock()
	p.stopped <- dc
	select {
	case <-p.resumed:
	case <-ctx.Done():
		return false
	}
	dc.c.SetReadDeadline(time.Time{})
	return true
}

// announced is the primary last announced to subscribers, for the next
// manager to announce a move from.
func (d *discovery) announced() string {
	if d == nil {
		return ""
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.master
}

// handoff describes the stopped connection for the next manager, which
// gets its descriptor as fd.
func (dc *discoveryConn) handoff(fd int) discoveryConnHandoff {
	return discoveryConnHandoff{Fd: fd, Resp3: dc.resp3, Authed: dc.authed, Name: dc.name,
		Channels: slices.Sorted(maps.Keys(dc.chans)), Patterns: slices.Sorted(maps.Keys(dc.pattern))}
}

// adopt takes the connections the manager this one replaced handed over;
// serve answers them from its first view on, as it does new ones. A
// descriptor that is not a connection any more is closed.
func (d *discovery) adopt(conns []discoveryConnHandoff, master string) {
	d.master = master
	for _, h := range conns {
		f := os.NewFile(uintptr(h.Fd), "discovery-connection")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			continue
		}
		dc := d.newConn(c)
		dc.resp3, dc.authed, dc.name = h.Resp3, h.Authed, h.Name
		dc.chans, dc.pattern = setOf(h.Channels), setOf(h.Patterns)
		if dc.subscribed() {
			d.subs[dc] = true
		}
		d.adopted = append(d.adopted, dc)
	}
}

// setOf is the set of names; nil for none.
func setOf(names []string) map[string]bool {
	if len(names) == 0 {
		return nil
	}
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return set
}
