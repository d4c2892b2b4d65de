package main

// The reconciler owns the desired state of this pod: it turns each new
// view of the RedisCluster, and each new look at Redis, into redis.conf,
// into whether redis-server should run, into the role Redis must have, and
// into the status it publishes. One goroutine runs it (run), one select
// loop; each of its steps is named and lives in the file of its concern:
// the configuration (confcheck.go, liveconf.go), credentials (auth.go),
// the role (role.go), restores (restore.go), the status (status.go).

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// redisProcess is the supervisor as the reconciler sees it.
type redisProcess interface {
	setWanted(run bool)
	snapshot() supervisorState
}

// reconcilerDeps are what the reconciler drives and shares, made before it.
type reconcilerDeps struct {
	sup         redisProcess
	creds       *credentials  // what every goroutine that dials Redis offers, and to whom
	primaryKeys *atomic.Int64 // keys held while the primary, for the supervisor's restart guard
	lookNow     func()        // asks the observer for a look at Redis now
	// checkConfig is redis-server's own verdict on a fragment; nil in unit
	// tests, which take what the manager's own rules take.
	checkConfig func([]directive) error
	restore     restoreFunc  // fetches, checks and places a backup; nil in unit tests
	handover    handoverFunc // moves the primary role; nil for the real one
	exeHash     string
	inherited   *handoff   // what the manager this one replaced knew; nil for none
	discovery   *discovery // the discovery port, told of each view; nil when off
	lastTLS     *tlsLoaded // the certificate on disk, from before this manager; nil for none
}

// reconciler owns the desired state of this pod and its status. Its state
// is grouped by concern, each group declared in the file of that concern.
type reconciler struct {
	log      *slog.Logger
	settings *settings
	reconcilerDeps

	beat   atomic.Int64       // the loop is alive, for /healthz: touched before each step
	pauses chan chan struct{} // an upgrade holds the loop still
	jobs   sync.WaitGroup     // restores and handovers under way, joined when run ends
	began  time.Time

	view       clusterView
	viewAt     time.Time // when it came
	haveView   bool
	viewErr    string // the source's latest complaint
	viewSeq    uint64 // of the latest view applied
	errSeq     uint64 // of the latest complaint
	conf       string // redis.conf as last written
	confDue    bool   // a view changed it while redis-server ran; written after the role step
	writeErr   string // why redis.conf could not be written
	fenced     bool
	fenceErr   string // why the latest fence annotation was refused
	fenceKnown bool   // fenced was inherited, a malformed annotation notwithstanding
	wanted     bool   // redis-server should run
	guardErr   string // why redis-server may not start
	adopted    bool   // redis-server was inherited: no status before the first look at it
	obs        *observation
	lastAnswer time.Time // redis-server last answered INFO
	heldKeys   int64     // keys this instance last held: seen, or from its entry of before

	fragmentState // confcheck.go
	liveState     // liveconf.go
	authStatus    // auth.go
	roleState     // role.go
	restoreState  // restore.go
	statusState   // status.go
	tlsState      // redistls.go
	usersState    // users.go
}

func newReconciler(s *settings, log *slog.Logger, deps reconcilerDeps) *reconciler {
	if deps.handover == nil {
		deps.handover = handover
	}
	r := &reconciler{log: log, settings: s, reconcilerDeps: deps, pauses: make(chan chan struct{}), began: time.Now()}
	r.fragment, r.fragmentOK = previousFragment(s.confPath())
	r.wantedValues, r.restartOnly = valuesOf(r.fragment), map[string]bool{}
	r.tlsGood = deps.lastTLS
	r.seedUsers(s.confPath())
	r.handovers = make(chan handoverResult, 1)
	r.restores = make(chan restoreResult, 1)
	r.restoreWait = backoff{min: restoreBackoff, max: 5 * time.Minute}
	r.statuses = make(chan statusUpdate, 1)
	r.observed = make(chan struct{})
	r.published.Store(&probeState{reason: "starting", startupReason: "starting"})
	if deps.inherited != nil {
		deps.inherited.seed(r)
	}
	r.touch()
	return r
}

// run reacts to the source, to Redis, and to time until ctx ends. Nothing
// starts before the first view of the cluster: nothing starts on a guess.
// Every step is bounded (a fragment check, an RDB's checksum, a dial: a
// few seconds at most), and what may take longer (a restore, a handover)
// runs on a goroutine of its own, whose end comes back here.
func (r *reconciler) run(ctx context.Context, f *feed, observations <-chan *observation) {
	// The observer's looks, at least one every pollServing, are what moves
	// the reconciler; the tick only keeps it beating should they stop, and
	// falls on one of their beats (footprint.go).
	tick := newBeat(5 * time.Second)
	defer tick.stop()
	defer r.stopping()
	for {
		r.publish()
		pauses := r.pauses
		if r.handing {
			pauses = nil // an upgrade waits for the handover to end
		}
		select {
		case <-ctx.Done():
			return
		case resume := <-pauses:
			<-resume
		case res := <-r.restores:
			r.steps(func() { r.restoreEnded(res) })
		case res := <-r.handovers:
			// The next step of the role waits for the next look at Redis,
			// which the handover's end asks for: the last look is of before.
			r.steps(func() { r.handoverEnded(res) })
		case v := <-f.views:
			r.steps(func() { r.takeView(v) }, r.enforceRole, r.writeDueConf, r.syncTLS, r.rotateAuth, r.syncUsers)
		case e := <-f.errs:
			r.takeSourceError(e)
		case o := <-observations:
			r.steps(func() { r.takeObservation(o) }, r.retryFragmentCheck, r.retryRestore, r.enforceRole, r.syncLive, r.syncTLS, r.rotateAuth, r.syncUsers)
		case <-tick.C:
			tick.next()
			r.steps(r.retryRestore, r.retryGuard)
		}
	}
}

// steps runs the steps of one turn of the loop, each after a beat: the
// liveness probe measures a step, not a turn, and no step is long.
func (r *reconciler) steps(steps ...func()) {
	for _, step := range steps {
		r.touch()
		step()
	}
}

func (r *reconciler) touch() { r.beat.Store(time.Now().UnixNano()) }

// stopping ends run: the restore and the handover under way are let go,
// and waited for a little, so that what they leave is removed by them
// rather than by the next start.
func (r *reconciler) stopping() {
	if r.restoreJob != nil {
		r.restoreJob.cancel()
	}
	joined := make(chan struct{})
	go func() { r.jobs.Wait(); close(joined) }()
	select {
	case <-joined:
	case <-time.After(jobsJoinTimeout):
		r.log.Warn("a restore or a handover did not end in time; leaving it")
	}
	r.stopped("stopping")
}

// jobsJoinTimeout bounds the wait for a restore or handover at a stop;
// both end within a second of being cancelled.
const jobsJoinTimeout = 5 * time.Second

// takeView applies a view of the cluster from the source.
func (r *reconciler) takeView(v clusterView) {
	if v.seq > r.errSeq {
		r.viewErr = "" // the complaint is older than this view
	}
	r.viewAt = time.Now()
	r.viewSeq = v.seq
	r.applyView(v)
	r.publishDiscovery()
	if r.obs != nil && r.obs.err != nil {
		r.pokeObserver() // it may have lacked the password the view brought
	}
}

// takeSourceError records the source's complaint, unless a newer view
// came: the last good view stays in force.
func (r *reconciler) takeSourceError(e sourceError) {
	if e.seq < r.viewSeq {
		return
	}
	r.errSeq = e.seq
	if msg := e.err.Error(); msg != r.viewErr {
		r.log.Error("cannot use the cluster's new state; keeping the last good one", "error", e.err)
		r.viewErr = msg
	}
	r.publishDiscovery()
}

// publishDiscovery tells the discovery port of the latest view, stale when
// the source complains since.
func (r *reconciler) publishDiscovery() {
	if r.discovery == nil || !r.haveView {
		return
	}
	view := r.view
	if !r.writtenAt.IsZero() {
		// This instance's own entry as it was last written: fresher than
		// the source's copy, which comes back after a round trip, or, in
		// local mode, not at all.
		rc := view.cluster
		rc.Status.InstancesStatus = maps.Clone(rc.Status.InstancesStatus)
		if rc.Status.InstancesStatus == nil {
			rc.Status.InstancesStatus = map[string]instanceStatus{}
		}
		rc.Status.InstancesStatus[r.settings.podName] = r.written
		if r.role.primary && r.written.Ready && r.written.Role == "master" {
			rc.Status.CurrentPrimary = r.settings.podName
		}
		view.cluster = rc
	}
	v := discoveryFor(view, r.settings.namespace, r.settings.podName, r.viewAt)
	v.stale = r.viewErr != ""
	r.discovery.publish(v)
}

// takeObservation takes a look at Redis.
func (r *reconciler) takeObservation(o *observation) {
	r.obs = o
	if o.err == nil {
		r.lastAnswer = o.at
		if !o.loading() {
			r.heldKeys = o.info.keys()
		}
	}
}

// retryGuard applies the view again while a guard keeps redis-server
// stopped: what it refused may have been put right on disk.
func (r *reconciler) retryGuard() {
	if r.guardErr != "" {
		r.applyView(r.view)
	}
}

// applyView renders redis.conf for the new view, and decides whether
// redis-server runs. A refused fragment keeps the last good one in force
// but does not hold up what else changed; a fence holds whatever fails.
func (r *reconciler) applyView(v clusterView) {
	defer func() { r.haveView = true }()
	if !r.haveView {
		// What this instance held before it (re)started, before its own
		// entry is overwritten.
		r.heldKeys = v.cluster.Status.InstancesStatus[r.settings.podName].Keys
	}
	if v.password == "" && (!r.haveView || r.view.password != "") {
		r.log.Warn("no password from spec.authSecretRef: redis-server takes every client without one, on every interface (protected-mode no); set authSecretRef for anything but a local experiment")
	}
	r.view = v
	r.publishCredentials()
	r.creds.setPeers(&v.cluster, r.settings.podName)
	r.takeTLS(v.tls)
	r.takeFragment(v.fragment) // a check by redis-server: a few seconds at most
	r.touch()
	r.takeUsers(v) // a check by redis-server too, when the rules changed
	r.touch()
	r.takeFencing(v.cluster.Metadata.Annotations)
	r.role = roleFor(&v.cluster, r.settings.podName)
	if r.fenced {
		r.setWanted(false) // whatever fails below, a fence holds
	}
	if !r.fragmentOK {
		r.setWanted(false) // never a configuration we did not check
		return
	}
	if r.sup.snapshot().running {
		// redis-server reads redis.conf only when it starts: the write
		// (two fsyncs, a millisecond or more, longer under load) comes
		// after the role is enforced (writeDueConf), not on a
		// switchover's path.
		r.confDue = true
	} else if !r.writeConf() {
		return
	}
	waiting := !r.role.primary && r.role.replicaOf == ""
	if waiting && !r.fenced && r.wanted {
		r.log.Info("waiting for the target primary to publish its address", "targetPrimary", r.role.target)
	}
	guard, restoring := r.mayStart()
	r.setWanted(!r.fenced && !waiting && guard == "" && !restoring)
}

// takeFencing reads the fence annotation. A malformed one leaves fencing
// as it was; at the first view, with nothing to keep, it fences.
func (r *reconciler) takeFencing(annotations map[string]string) {
	fenced, err := isFenced(annotations, r.settings.podName)
	if err != nil {
		if !r.haveView && !r.fenceKnown {
			// The pod may well be meant to be fenced, so redis-server
			// stays stopped until it parses.
			r.fenced = true
		}
		if r.fenceErr != err.Error() {
			r.log.Error("ignoring a malformed fence annotation; fencing stays as it was", "error", err, "fenced", r.fenced)
		}
		r.fenceErr = err.Error()
		return
	}
	if fenced != r.fenced {
		r.log.Info("fencing changed", "fenced", fenced)
	}
	r.fenced, r.fenceErr = fenced, ""
}

// writeDueConf writes the redis.conf a view deferred.
func (r *reconciler) writeDueConf() {
	if r.confDue {
		r.confDue = false
		r.writeConf()
	}
}

// writeConf writes redis.conf for the accepted fragment and this pod, and
// says whether it holds what it should.
func (r *reconciler) writeConf() bool {
	conf, err := renderConfig(r.fragment, podConfig{
		dataDir:      r.settings.dataDir,
		port:         r.settings.redisPort,
		announceHost: r.settings.announceHost,
		replicaOf:    r.role.replicaOf,
		password:     r.view.password,
		tls:          r.podTLS(),
		users:        r.wantedUsers([]string{r.view.password}),
		ownDefault:   r.declares("default"),
	})
	if err == nil && conf != r.conf {
		err = writeFileAtomic(r.settings.confPath(), []byte(conf), 0o600)
		if err == nil {
			r.conf = conf
			r.log.Info("wrote redis.conf", "configHash", configHash(r.wantedValues))
		}
	}
	if err != nil {
		if err.Error() != r.writeErr {
			r.log.Error("cannot write redis.conf", "error", err)
		}
		r.writeErr = err.Error()
		return false
	}
	r.writeErr = ""
	return true
}

// mayStart says, while redis-server does not run, why it must not start
// (the guard), or whether it waits for a restore. A running server has the
// run-time guards of enforceRole instead.
func (r *reconciler) mayStart() (guard string, restoring bool) {
	if !r.sup.snapshot().running {
		guard = r.startGuard()
		if guard == "" {
			restoring = r.bootstrap()
		} else if r.restoreJob != nil || r.restoreErr != "" {
			r.abandonRestore("a guard keeps redis-server from starting") // no restore while the guard holds
			r.restoreErr, r.restoreRetry = "", time.Time{}
		}
	}
	if guard != "" && guard != r.guardErr {
		r.log.Error("not starting redis-server", "reason", guard)
	}
	r.guardErr = guard
	return guard, restoring
}

// startGuard says why redis-server must not start now, or "": as the
// primary on an empty data directory while the status shows the cluster held
// data (the data was lost here, and replicas would copy the loss), or as a
// replica holding data of a master that holds none.
func (r *reconciler) startGuard() string {
	if r.tlsWanted && r.tlsGood == nil {
		return "spec.tls asks for TLS, and no certificate of its Secret was ever good here: redis-server does not start in plaintext"
	}
	entries := r.view.cluster.Status.InstancesStatus
	onDisk := datasetKeys(r.settings.dataDir, r.fragment)
	if r.role.leads() {
		if why := unreadDataset(r.settings.dataDir, r.fragment); why != "" {
			return why
		}
		if onDisk > 0 {
			return ""
		}
		holder, most := "this instance", r.heldKeys // its entry of before counts too
		for pod, e := range entries {
			if pod != r.settings.podName && e.Keys > most {
				holder, most = pod, e.Keys
			}
		}
		if most == 0 {
			return ""
		}
		return fmt.Sprintf("refusing to start as the primary with an empty data directory while %s reported %d keys: move targetPrimary to an instance that holds the data", holder, most)
	}
	// The entry of the one to follow reports what it holds even while it
	// is stopped. A target that starts as the replica of the instance still
	// holding the role follows that one until the handover.
	follow := r.role.target
	if r.role.primary {
		follow = r.view.cluster.Status.CurrentPrimary
	}
	if e, ok := entries[follow]; ok && e.Keys == 0 && onDisk > 0 {
		return fmt.Sprintf("refusing to follow %s, which reports no key, with the dataset on disk here (%d keys or more): it stays as it is", follow, onDisk)
	}
	return ""
}

func (r *reconciler) setWanted(run bool) {
	r.wanted = run
	r.sup.setWanted(run)
}

// pause holds the reconciler still, between two of its steps, until the
// returned function is called: an upgrade writes the state down meanwhile.
// It waits at most wait for a step, or a handover, to end.
func (r *reconciler) pause(ctx context.Context, wait time.Duration) (func(), bool) {
	resume := make(chan struct{})
	select {
	case r.pauses <- resume:
		return func() { close(resume) }, true
	case <-ctx.Done():
	case <-time.After(wait):
	}
	return nil, false
}

func (r *reconciler) pokeObserver() {
	if r.lookNow != nil {
		r.lookNow()
	}
}
