package main

// The configuration redis-server runs is brought to the wanted one without a
// restart where Redis allows: the difference between the two, by name, goes
// into one atomic CONFIG SET, and what Redis reads only at start waits for a
// restart, named in pendingRestart.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The configuration redis-server runs is brought to the wanted one without a
// restart where Redis allows: the difference between the two, by name, goes
// into one atomic CONFIG SET, and what Redis reads only at start waits for a
// restart, named in pendingRestart.

// liveState is what the running redis-server runs of the fragment, as the
// reconciler brought it there.
type liveState struct {
	applied     confValues      // what the running redis-server runs of the fragment
	appliedFor  time.Time       // the start of the redis-server applied describes
	restartOnly map[string]bool // parameters Redis said it cannot change at run time
	liveRefused string          // the last change Redis refused live
	liveErr     string          // why
}

// confValues is a fragment's directives by name, each occurrence's
// arguments in order.
type confValues map[string][][]string

func valuesOf(ds []directive) confValues {
	v := confValues{}
	for _, d := range ds {
		v[d.name] = append(v[d.name], d.args)
	}
	return v
}

// fileOnly directives have no CONFIG SET: Redis reads them at start only.
var fileOnly = map[string]bool{"rename-command": true, "user": true, "loadmodule": true, "sentinel": true}

// configDiff is what it takes to go from the running values to the wanted.
type configDiff struct {
	set     []any    // name, value, ... for one CONFIG SET
	restart []string // names only a restart applies, sorted
}

// diffConfig compares by name. A directive dropped from the fragment waits
// for a restart too: what its default is, the running server cannot say.
func diffConfig(running, wanted confValues, restartOnly map[string]bool) configDiff {
	names := make([]string, 0, len(running)+len(wanted))
	for n := range running {
		names = append(names, n)
	}
	for n := range wanted {
		if _, ok := running[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	d := configDiff{restart: []string{}}
	for _, n := range names {
		a, b := running[n], wanted[n]
		switch {
		case slices.EqualFunc(a, b, slices.Equal[[]string]):
		case b == nil || fileOnly[n] || restartOnly[n] || n == "client-output-buffer-limit" && droppedClass(a, b):
			d.restart = append(d.restart, n)
		default:
			d.set = append(d.set, n, configValue(n, b))
		}
	}
	return d
}

// configValue is the one CONFIG SET value of a parameter as a file gives it,
// read the way Redis reads the file: save lines add up, and a save "" line
// clears those before it; each client-output-buffer-limit line sets its
// class; any other parameter takes its last line.
func configValue(name string, occs [][]string) string {
	var args []string
	switch name {
	case "save":
		for _, o := range occs {
			if len(o) == 1 && o[0] == "" {
				args = args[:0]
				continue
			}
			args = append(args, o...)
		}
	case "client-output-buffer-limit":
		for _, o := range occs {
			args = append(args, o...)
		}
	default:
		args = occs[len(occs)-1]
	}
	return strings.Join(args, " ")
}

// droppedClass says whether a client class limited before is no longer:
// CONFIG SET leaves a class it is not given as it was, so only a restart
// takes it back to its default.
func droppedClass(running, wanted [][]string) bool {
	for _, r := range running {
		if len(r) > 0 && !slices.ContainsFunc(wanted, func(w []string) bool { return len(w) > 0 && strings.EqualFold(w[0], r[0]) }) {
			return true
		}
	}
	return false
}

// immutableArg is how Redis names a parameter it cannot change at run time.
var immutableArg = regexp.MustCompile(`argument '([^']+)'\) - can't set (?:immutable|protected) config`)

// configSet applies the run-time part of a change with one atomic CONFIG
// SET. A parameter Redis calls immutable is learnt as such into
// restartOnly, moved to the restart part, and the rest tried again: no
// table of them is right for every Redis version. Any other refusal refuses
// the whole change, and Redis runs on as before.
func configSet(c redis.Conn, d *configDiff, restartOnly map[string]bool) error {
	for len(d.set) > 0 {
		_, err := c.Do("CONFIG", append([]any{"SET"}, d.set...)...)
		if err == nil {
			return nil
		}
		m := immutableArg.FindStringSubmatch(err.Error())
		if _, refused := err.(redis.Error); !refused || m == nil {
			return err
		}
		i := slices.Index(d.set, any(m[1]))
		if i < 0 || i%2 != 0 {
			return err
		}
		restartOnly[m[1]] = true
		d.set = slices.Delete(d.set, i, i+2)
		d.restart = append(d.restart, m[1])
		slices.Sort(d.restart)
	}
	return nil
}

// configHash identifies the configuration redis-server runs: the user's
// parameters as applied, at start or live since. The credentials are not in
// it: the hash is published, and must not let anyone test guesses of the
// password against it.
func configHash(v confValues) string {
	names := make([]string, 0, len(v))
	for n := range v {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		for _, args := range v[n] {
			h.Write([]byte(directiveLine(n, args...)))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// reachable says whether the running redis-server answered since it started.
func (r *reconciler) reachable() bool {
	sup := r.sup.snapshot()
	return sup.running && r.obs != nil && r.obs.err == nil && !r.obs.at.Before(sup.startedAt)
}

// resetApplied takes what a newly started redis-server runs from the
// redis.conf it read: its fragment and its password.
func (r *reconciler) resetApplied() {
	sup := r.sup.snapshot()
	if sup.startedAt.Equal(r.appliedFor) {
		return
	}
	frag, _ := fragmentOf(sup.startedConf)
	r.applied, r.appliedFor = valuesOf(frag), sup.startedAt
	r.liveRefused, r.liveErr = "", ""
	pw := confSetting(sup.startedConf, "masterauth") // requirepass is not there when spec.users declares default
	r.auth = authState{accepted: []string{pw}, masterauth: pw}
	r.publishCredentials()
}

// setLive applies to the running redis-server what of wanted it can take at
// run time. It returns an error only when Redis refuses the change, which
// then is not made; a server that does not answer now gets it from syncLive
// once it does.
func (r *reconciler) setLive(wanted confValues, began time.Time) error {
	if !r.reachable() {
		return nil
	}
	r.resetApplied()
	d := diffConfig(r.applied, wanted, r.restartOnly)
	if len(d.set) == 0 {
		return nil
	}
	c, err := dialRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout)
	if err != nil {
		r.log.Warn("cannot apply the configuration live yet", "error", err)
		return nil
	}
	defer c.Close()
	if err := configSet(c, &d, r.restartOnly); err != nil {
		if _, refused := err.(redis.Error); refused {
			return refusal{fmt.Errorf("redis-server refuses the new configuration: %w", err)}
		}
		r.log.Warn("cannot apply the configuration live yet", "error", err)
		return nil
	}
	r.appliedLive(d, wanted, began)
	return nil
}

// judgeLive makes a change that alters only parameters the running
// redis-server takes live, each on one line, with that server as its
// judge: CONFIG SET is atomic, and Redis reads each value with the code it
// reads redis.conf with, so what it takes, a start takes too, and what it
// refuses it leaves as it was. That saves the ~20 ms of a redis-server run
// (checkFragment). It says whether it made the change; one it did not, a
// refusal included, goes to checkFragment, whose verdict names the line.
// A restart checks the fragment again all the same (restart.go).
func (r *reconciler) judgeLive(wanted confValues, began time.Time) bool {
	if !r.fragmentOK || !r.reachable() {
		return false
	}
	r.resetApplied()
	unjudged := diffConfig(r.wantedValues, wanted, r.restartOnly)
	d := diffConfig(r.applied, wanted, r.restartOnly)
	if len(unjudged.set) == 0 || len(unjudged.restart) > 0 || len(d.restart) > 0 {
		return false
	}
	for i := 0; i < len(unjudged.set); i += 2 {
		if n := unjudged.set[i].(string); len(wanted[n]) != 1 || n == "save" || n == "client-output-buffer-limit" {
			return false // several lines make one value: as a file reads them
		}
	}
	c, err := dialRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout)
	if err != nil {
		return false
	}
	defer c.Close()
	if _, err := c.Do("CONFIG", append([]any{"SET"}, d.set...)...); err != nil {
		return false
	}
	r.appliedLive(d, wanted, began, "judgedBy", "CONFIG SET")
	return true
}

// appliedLive records and logs a change redis-server took live.
func (r *reconciler) appliedLive(d configDiff, wanted confValues, began time.Time, attrs ...any) {
	names := make([]string, 0, len(d.set)/2)
	for i := 0; i < len(d.set); i += 2 {
		n := d.set[i].(string)
		r.applied[n] = wanted[n]
		names = append(names, n)
	}
	r.liveRefused, r.liveErr = "", ""
	if len(names) > 0 {
		attrs = append([]any{"parameters", names, "pendingRestart", d.restart, "took", time.Since(began).Round(time.Microsecond).String()}, attrs...)
		r.log.Info("applied configuration live", attrs...)
	}
}

// syncLive brings a running redis-server to the accepted fragment: after a
// change that came while it did not answer, or after it restarted on an
// older redis.conf.
func (r *reconciler) syncLive() {
	if !r.fragmentOK || !r.reachable() {
		return
	}
	r.resetApplied()
	d := diffConfig(r.applied, r.wantedValues, r.restartOnly)
	if len(d.set) == 0 || changeKey(d.set) == r.liveRefused {
		return
	}
	if err := r.setLive(r.wantedValues, time.Now()); err != nil {
		counts.configErrors.Add(1)
		r.liveRefused, r.liveErr = changeKey(d.set), err.Error()+"; it applies at the next restart"
		r.log.Error("redis-server refuses a configuration change live", "error", err)
	}
}

// changeKey names a live change, to tell it from another: each name and
// value quoted, so that no two changes share one.
func changeKey(set []any) string { return fmt.Sprintf("%q", set) }

// configStatus is configHash and pendingRestart of the running server.
func (r *reconciler) configStatus() (string, []string) {
	r.resetApplied()
	restart := diffConfig(r.applied, r.wantedValues, r.restartOnly).restart
	if tls := r.tlsRestart(r.sup.snapshot().startedTLS); tls != nil {
		restart = slices.Sorted(slices.Values(append(restart, tls...)))
	}
	return configHash(r.applied), restart
}
