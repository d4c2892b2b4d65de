package main

// The manager is PID 1 of its pod: it starts redis-server, forwards its log,
// reaps every zombie in the container, restarts redis-server when it dies,
// and stops it gracefully when the pod is told to go.
//
// Exactly one goroutine waits for children (the reaper), because a second
// wait, such as exec.Cmd.Wait, would race it for redis-server's exit status.
// Exactly one goroutine owns redis-server's lifecycle (the supervisor).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
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
	sweep := time.NewTicker(5 * time.Second)
	defer sweep.Stop()
	for {
		r.reapAll()
		select {
		case <-ctx.Done():
			return
		case <-r.sigchld:
		case <-sweep.C:
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

// Restart backoff: redis-server that dies at once is retried quickly, then
// ever more slowly; one that ran for a healthy minute starts the count anew.
const (
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 30 * time.Second
	healthyRunTime = time.Minute
)

// supervisorState is what the rest of the manager may know of redis-server.
type supervisorState struct {
	wanted      bool      // the manager wants redis-server running
	running     bool      // a redis-server process exists
	pid         int       // its PID while running
	restarts    int       // unexpected exits followed by a restart
	startedAt   time.Time // of the current process
	startedConf string    // redis.conf as it was read at the last start
	retryAt     time.Time // when a crashed redis-server will be started again
	lastExit    string
	exitStatus  int       // of the last exit when it was a non-zero status: see snapshot
	refused     string    // why a restart is being refused
	beat        time.Time // the loop is alive
}

// supervisor owns the redis-server process.
type supervisor struct {
	log         *slog.Logger // the manager's
	redisLog    *slog.Logger // for redis-server's own lines
	reaper      *reaper
	redisServer string
	confPath    string
	dataDir     string
	port        int
	shutdown    time.Duration // budget for a graceful stop
	// restartGuard says why redis-server must not be started again after
	// it died, given the redis.conf it ran on, or "".
	restartGuard func(conf string) string
	// credentials are the passwords redis-server may answer to.
	credentials func() []string

	want     chan bool // latest wish wins
	restarts chan chan error
	pauses   chan supervisorPause

	// A redis-server started by the manager this one replaced, if any.
	adoptProc   *os.Process
	adoptExited <-chan syscall.WaitStatus
	state       atomic.Pointer[supervisorState]

	logR, logW *os.File // one pipe carries the log of every redis-server we start
	logDone    chan struct{}
	tail       redisTail // of the redis-server started last
}

// newSupervisor makes the pipe of redis-server's log, unless it was
// inherited with an adopted redis-server (see adopt).
func newSupervisor(s *supervisor) (*supervisor, error) {
	if s.logR == nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("redis-server log pipe: %w", err)
		}
		s.logR, s.logW = r, w
	}
	s.want = make(chan bool, 1)
	s.restarts = make(chan chan error)
	s.pauses = make(chan supervisorPause)
	s.logDone = make(chan struct{})
	if s.state.Load() == nil {
		s.state.Store(&supervisorState{beat: time.Now()})
	}
	go s.forwardLog()
	return s, nil
}

// adopt takes over a redis-server the previous manager started, before
// run: its PID, the redis.conf it read, and the count of its restarts. One
// that exited in between is reaped by the reaper's first sweep and
// restarted like any that dies.
func (s *supervisor) adopt(h *handoff, reaper *reaper) {
	st := &supervisorState{restarts: h.Restarts, beat: time.Now()}
	if exited, ok := reaper.adopt(h.RedisPID); ok {
		s.adoptProc, _ = os.FindProcess(h.RedisPID)
		s.adoptExited = exited
		st.running, st.pid, st.startedAt, st.startedConf = true, h.RedisPID, h.StartedAt, h.StartedConf
	}
	s.state.Store(st)
}

// supervisorPause holds the supervisor still while an upgrade writes its
// state down: it starts and stops nothing until resumed.
type supervisorPause struct {
	state  chan supervisorState
	resume chan struct{}
}

// pause waits at most wait for the supervisor to hold still; false when it
// is busy (stopping, starting, restarting redis-server) or stopping.
func (s *supervisor) pause(ctx context.Context, wait time.Duration) (supervisorState, func(), bool) {
	p := supervisorPause{state: make(chan supervisorState, 1), resume: make(chan struct{})}
	select {
	case s.pauses <- p:
	case <-ctx.Done():
		return supervisorState{}, nil, false
	case <-time.After(wait):
		return supervisorState{}, nil, false
	}
	return <-p.state, func() { close(p.resume) }, true
}

// releaseLog stops forwarding redis-server's log and returns its pipe for
// the next manager; resume forwards again, should the exec not happen.
// What the pipe holds and was not read yet stays in it for the next reader.
func (s *supervisor) releaseLog() (r, w *os.File, resume func()) {
	s.logR.SetReadDeadline(time.Now())
	<-s.logDone
	return s.logR, s.logW, func() {
		s.logR.SetReadDeadline(time.Time{})
		s.logDone = make(chan struct{})
		go s.forwardLog()
	}
}

// setWanted tells the supervisor whether redis-server should run. It never
// blocks: a newer wish replaces one not yet read.
func (s *supervisor) setWanted(run bool) { offer(s.want, run) }

// snapshot is the supervisor's state. The reason of an exit with a
// non-zero status is Redis's own last words, read when asked: they may
// reach the log pipe after the exit is reaped.
func (s *supervisor) snapshot() supervisorState {
	st := *s.state.Load()
	if !st.running && st.exitStatus != 0 {
		conf, _ := parseConf(st.startedConf)
		if words := lastWords(s.tail.lines(), secretsIn(conf)); words != "" {
			st.lastExit += ": " + words
		}
	}
	return st
}

// errNotRunning refuses a restart of a redis-server that is not meant to
// run: fenced, waiting, or between crashes.
var errNotRunning = errors.New("redis-server is not running")

// restart stops redis-server gracefully and starts it again on redis.conf
// as it now is: how parameters that Redis reads only at start are applied.
// The stop is the same as the pod's: SHUTDOWN saves where persistence is on.
func (s *supervisor) restart(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case s.restarts <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// touch keeps the heartbeat fresh while the run loop waits in a stop.
func (s *supervisor) touch() {
	c := *s.state.Load()
	c.beat = time.Now()
	s.state.Store(&c)
}

// run owns redis-server until ctx ends, then stops it gracefully.
func (s *supervisor) run(ctx context.Context) {
	st := *s.state.Load()
	publish := func() { st.beat = time.Now(); c := st; s.state.Store(&c) }
	var (
		proc    = s.adoptProc
		exited  = s.adoptExited
		backoff time.Duration
		retry   *time.Timer
		retryC  <-chan time.Time
		beat    = time.NewTicker(5 * time.Second) // well inside loopStale; an idle pod should sleep
	)
	defer beat.Stop()
	retryLater := func() {
		backoff = nextBackoff(backoff)
		st.retryAt = time.Now().Add(backoff)
		retry = time.NewTimer(backoff)
		retryC = retry.C
	}
	// refuse keeps redis-server stopped for now, for the guard's reason.
	refuse := func(why string) {
		if why != st.refused {
			s.log.Error("not starting redis-server again", "reason", why)
		}
		st.refused, st.lastExit, st.exitStatus = why, why, 0
		retryLater()
	}
	start := func() {
		retryC = nil
		p, ch, conf, err := s.startRedis()
		if err != nil {
			s.log.Error("cannot start redis-server", "error", err)
			st.lastExit, st.exitStatus = err.Error(), 0
			exited = nil
			retryLater()
			return
		}
		proc, exited = p, ch
		st.running, st.pid, st.startedAt, st.retryAt, st.exitStatus = true, p.Pid, time.Now(), time.Time{}, 0
		st.startedConf = conf
		s.log.Info("redis-server started", "pid", p.Pid)
	}
	for {
		publish()
		select {
		case <-ctx.Done():
			if proc != nil {
				s.stop(proc, exited, time.Now().Add(s.shutdown), "SHUTDOWN")
				st.running, st.pid = false, 0
				publish()
			}
			s.logW.Close() // lets the forwarder drain and finish
			select {
			case <-s.logDone:
			case <-time.After(time.Second):
			}
			return
		case st.wanted = <-s.want:
			switch {
			case st.wanted && proc == nil && retryC == nil:
				start()
			case !st.wanted && proc != nil:
				s.stop(proc, exited, time.Now().Add(s.shutdown), fenceStop...)
				proc, exited, st.running, st.pid = nil, nil, false, 0
			case !st.wanted && retryC != nil:
				retry.Stop()
				retryC, st.retryAt = nil, time.Time{}
			}
		case p := <-s.pauses:
			p.state <- st
			<-p.resume
		case done := <-s.restarts:
			if !st.wanted || proc == nil {
				done <- errNotRunning
				break
			}
			s.stop(proc, exited, time.Now().Add(s.shutdown), "SHUTDOWN")
			proc, exited, st.running, st.pid = nil, nil, false, 0
			// The guard of a crash holds here too, on the file the new
			// process would read: it may name other data files.
			conf, _ := os.ReadFile(s.confPath)
			if why := s.restartGuard(string(conf)); why != "" {
				refuse(why)
				publish()
				done <- errors.New(why)
				break
			}
			start()
			publish() // before the answer: the caller goes on to watch the new process
			if proc == nil {
				done <- fmt.Errorf("start redis-server again: %s", st.lastExit)
			} else {
				done <- nil
			}
		case ws := <-exited:
			proc.Release()
			ran := time.Since(st.startedAt)
			proc, exited, st.running, st.pid = nil, nil, false, 0
			st.lastExit, st.exitStatus = describeExit(ws), 0
			if ws.Exited() {
				st.exitStatus = ws.ExitStatus()
			}
			if !st.wanted {
				break
			}
			if ran >= healthyRunTime {
				backoff = 0
			}
			retryLater()
			st.restarts++
			s.log.Error("redis-server exited unexpectedly; restarting", "status", st.lastExit, "ranFor", ran.Round(time.Millisecond).String(), "restartIn", backoff.String(), "restarts", st.restarts)
		case <-retryC:
			if !st.wanted || proc != nil {
				break
			}
			if why := s.restartGuard(st.startedConf); why != "" {
				refuse(why)
				break
			}
			st.refused = ""
			start()
		case <-beat.C:
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return backoffMin
	}
	return min(2*d, backoffMax)
}

// startRedis starts redis-server on the generated redis.conf, in its own
// process group so that a Ctrl-C meant for the manager does not reach it.
func (s *supervisor) startRedis() (*os.Process, <-chan syscall.WaitStatus, string, error) {
	conf, err := os.ReadFile(s.confPath)
	if err != nil {
		return nil, nil, "", fmt.Errorf("read %s: %w", s.confPath, err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, "", err
	}
	defer devnull.Close()
	s.tail.reset()
	p, ch, err := s.reaper.start(func() (*os.Process, error) {
		return os.StartProcess(s.redisServer, []string{s.redisServer, s.confPath}, &os.ProcAttr{
			Dir:   s.dataDir,
			Env:   os.Environ(),
			Files: []*os.File{devnull, s.logW, s.logW},
			Sys:   &syscall.SysProcAttr{Setpgid: true},
		})
	})
	if err != nil {
		return nil, nil, "", fmt.Errorf("start %s: %w", s.redisServer, err)
	}
	return p, ch, string(conf), nil
}

// stop asks redis-server to shut down with the given SHUTDOWN arguments
// (plain SHUTDOWN saves when persistence is on and lets lagging replicas
// catch up), falls back to SIGTERM when it cannot be asked, and only when the
// deadline passes kills it.
//
// A redis-server still loading its dataset gets the same SHUTDOWN: Redis
// makes it SHUTDOWN NOSAVE while it loads (shutdownCommand; a SIGTERM then
// too), so a half-loaded dataset is never saved over the whole one, and it
// stops at once. The manager does not send NOSAVE itself: it can only know
// Redis is loading by asking, and a load that ended between the question
// and the SHUTDOWN would lose every write taken since.
func (s *supervisor) stop(proc *os.Process, exited <-chan syscall.WaitStatus, deadline time.Time, shutdown ...string) {
	s.log.Info("stopping redis-server", "pid", proc.Pid, "command", strings.Join(shutdown, " "), "budget", time.Until(deadline).Round(time.Millisecond).String())
	asked := make(chan error, 1)
	go func() { asked <- s.askShutdown(deadline, shutdown) }()
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	for {
		select {
		case <-beat.C:
			s.touch()
		case ws := <-exited:
			s.log.Info("redis-server stopped", "pid", proc.Pid, "status", describeExit(ws))
			proc.Release()
			return
		case err := <-asked:
			asked = nil
			if err != nil {
				s.log.Warn("SHUTDOWN failed; sending SIGTERM", "error", err)
				proc.Signal(syscall.SIGTERM)
			}
		case <-time.After(time.Until(deadline)):
			s.log.Error("redis-server did not stop within the shutdown budget; killing it", "pid", proc.Pid)
			proc.Kill()
			ws := <-exited
			s.log.Warn("redis-server killed", "pid", proc.Pid, "status", describeExit(ws))
			proc.Release()
			return
		}
	}
}

// askShutdown sends SHUTDOWN. Redis closes the connection instead of
// answering when it goes, so an EOF is success.
func (s *supervisor) askShutdown(deadline time.Time, args []string) error {
	c, err := dialRedis(localAddr(s.port), s.credentials(), time.Until(deadline))
	if err != nil {
		return err
	}
	defer c.Close()
	cmdArgs := make([]any, 0, len(args)-1)
	for _, a := range args[1:] {
		cmdArgs = append(cmdArgs, a)
	}
	_, err = c.Do(args[0], cmdArgs...)
	if err == nil || errors.Is(err, io.EOF) || isConnReset(err) {
		return nil
	}
	return err
}

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// forwardLog re-emits redis-server's log lines as the manager's own records.
func (s *supervisor) forwardLog() {
	defer close(s.logDone)
	br := bufio.NewReaderSize(s.logR, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			s.tail.add(line)
			emitRedisLine(s.redisLog, line)
		}
		if err != nil {
			return
		}
	}
}

// emitRedisLine re-emits a line of redis-server's as a record of the
// manager's log.
func emitRedisLine(log *slog.Logger, line string) {
	pid, role, level, msg, ok := splitRedisLine(line)
	if !ok {
		log.Info(line)
		return
	}
	// Redis's verbose and debug lines are there because its loglevel asked
	// for them: they stay visible at Info, with Redis's own level beside.
	lvl := slog.LevelInfo
	if level == '#' {
		lvl = slog.LevelWarn
	}
	log.Log(context.Background(), lvl, msg, "pid", pid, "role", redisLogRoles[role], "redisLevel", redisLogLevels[level])
}

// splitRedisLine splits "pid:role dd Mon yyyy hh:mm:ss.mmm level message";
// ok is false for a line without that prefix.
func splitRedisLine(line string) (pid int, role, level byte, msg string, ok bool) {
	p, rest, found := strings.Cut(line, ":")
	if !found || len(rest) < 29 || rest[1] != ' ' || rest[26] != ' ' || rest[28] != ' ' {
		return 0, 0, 0, "", false
	}
	pid, _ = strconv.Atoi(p)
	return pid, rest[0], rest[27], rest[29:], true
}

// redisTail keeps the last lines of redis-server's log, which say why it
// stopped (see lastWords): its exit status says only that it did.
type redisTail struct {
	mu  sync.Mutex
	buf []string // oldest first
}

const tailLines = 16

func (t *redisTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf[max(0, len(t.buf)+1-tailLines):], line)
}

func (t *redisTail) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = nil
}

func (t *redisTail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.buf)
}

// lastWordsLine says whether a line of redis-server's output may say why
// it stopped. The line that quotes a configuration line Redis refuses
// (">>> '...'") never does: it may hold a password.
func lastWordsLine(line string) bool {
	if strings.HasPrefix(line, ">>> ") || strings.TrimSpace(line) == "" {
		return false
	}
	_, _, level, _, prefixed := splitRedisLine(line)
	return !prefixed || level == '#'
}

// lastWords is why a redis-server stopped, in its own words: the last two
// lines of its output that may say it, without their prefix, and without
// the secrets given.
func lastWords(out []string, secrets []string) string {
	var words []string
	for _, line := range slices.Backward(out) {
		if len(words) == 2 {
			break
		}
		if !lastWordsLine(line) {
			continue
		}
		if _, _, _, msg, ok := splitRedisLine(line); ok {
			line = msg
		}
		words = append([]string{strings.TrimSpace(line)}, words...)
	}
	return redact(strings.Join(words, "; "), secrets)
}

var (
	redisLogRoles  = map[byte]string{'M': "master", 'S': "replica", 'C': "child", 'X': "sentinel"}
	redisLogLevels = map[byte]string{'.': "debug", '-': "verbose", '*': "notice", '#': "warning"}
)

// dialRedis connects and authenticates with the first of passwords that
// works ("" for none), with a deadline on every step. The manager offers
// every password the server may answer to: during a rotation it accepts
// two, and a restarted server may already have the new one only.
func dialRedis(addr string, passwords []string, timeout time.Duration, opts ...redis.DialOption) (redis.Conn, error) {
	timeout = max(timeout, 10*time.Millisecond)
	c, err := redis.Dial("tcp", addr, append([]redis.DialOption{
		redis.DialConnectTimeout(timeout),
		redis.DialReadTimeout(timeout),
		redis.DialWriteTimeout(timeout)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	if len(passwords) == 0 || len(passwords) == 1 && passwords[0] == "" {
		return c, nil
	}
	for _, pw := range passwords {
		if pw == "" {
			_, err = c.Do("PING")
		} else {
			_, err = c.Do("AUTH", pw)
		}
		if _, refused := err.(redis.Error); !refused {
			break // accepted, or the connection failed
		}
	}
	if err != nil {
		c.Close()
		// Redis's answer names no password; say so rather than quote it.
		return nil, fmt.Errorf("authenticate to redis at %s: %w", addr, err)
	}
	return c, nil
}

// withRedis runs fn on a connection of its own, closed after.
func withRedis(addr string, passwords []string, timeout time.Duration, fn func(redis.Conn) error) error {
	c, err := dialRedis(addr, passwords, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

func localAddr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
