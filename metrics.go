package main

// Metrics. /metrics is read from what the reconciler last published: the
// observer's INFO of each second and the manager's own counters. A scrape
// never waits on Redis, however slow it is, and costs it nothing: the INFO
// it shows was taken anyway.

import (
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Metrics. /metrics is read from what the reconciler last published: the
// observer's INFO of each second and the manager's own counters. A scrape
// never waits on Redis, however slow it is, and costs it nothing: the
// INFO it shows was taken anyway.

// metrics is GET /metrics.
func (h *endpoints) metrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write(renderMetrics(h.rec.published.Load(), time.Now()))
}

// counts are the manager's counters; each is added to by the one goroutine
// that does what it counts.
var counts struct {
	statusPatches, statusPatchErrors atomic.Int64 // the status writer
	watchRestarts                    atomic.Int64 // the Kubernetes source
	configErrors                     atomic.Int64 // the reconciler
	upgrades                         atomic.Int64 // set from the handoff at start
}

// redisStale: an INFO older than this says redis-server is not answering.
const redisStale = 5 * time.Second

// metricsWriter writes the Prometheus text format, each family once.
type metricsWriter struct{ b strings.Builder }

func (m *metricsWriter) family(name, kind, help string) {
	fmt.Fprintf(&m.b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func (m *metricsWriter) sample(name string, v float64, labels ...string) {
	m.b.WriteString(name)
	if len(labels) > 0 {
		m.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				m.b.WriteByte(',')
			}
			fmt.Fprintf(&m.b, `%s="%s"`, labels[i], labelEscaper.Replace(labels[i+1]))
		}
		m.b.WriteByte('}')
	}
	m.b.WriteByte(' ')
	m.b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	m.b.WriteByte('\n')
}

func (m *metricsWriter) one(name, kind, help string, v float64, labels ...string) {
	m.family(name, kind, help)
	m.sample(name, v, labels...)
}

// labelEscaper escapes what the text format asks a label value to.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func flag01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func renderMetrics(ps *probeState, now time.Time) []byte {
	st := ps.status
	m := &metricsWriter{}
	m.one("redis_operator_build_info", "gauge", "The manager's build; always 1.", 1,
		"version", version, "commit", commit, "goversion", runtime.Version(), "executable_hash", st.ExecutableHash)
	m.family("redis_operator_role", "gauge", "1 for the role this instance runs as (none while stopped or fenced), 0 for the others.")
	for _, role := range []string{"master", "replica", "none"} {
		m.sample("redis_operator_role", flag01(st.Role == role), "role", role)
	}
	m.one("redis_operator_ready", "gauge", "1 while /readyz answers 200.", flag01(ps.ready))
	m.one("redis_operator_fenced", "gauge", "1 while the fence annotation names this instance.", flag01(st.Fenced))
	m.one("redis_operator_error", "gauge", "1 while the status entry carries a lastError.", flag01(st.LastError != ""))
	m.one("redis_operator_redis_restarts_total", "counter", "Unexpected exits of redis-server followed by a restart.", float64(st.Restarts))
	m.one("redis_operator_config_errors_total", "counter", "redis.conf fragments refused and live changes Redis refused.", float64(counts.configErrors.Load()))
	m.one("redis_operator_pending_restart_parameters", "gauge", "Parameters changed that apply only at redis-server's next restart.", float64(len(st.PendingRestart)))
	m.one("redis_operator_status_patches_total", "counter", "Status entries written.", float64(counts.statusPatches.Load()))
	m.one("redis_operator_status_patch_errors_total", "counter", "Status writes that failed (each is retried).", float64(counts.statusPatchErrors.Load()))
	m.one("redis_operator_watch_restarts_total", "counter", "Watches of the RedisCluster that failed and were listed again; a watch the server ends on time resumes and is not counted.", float64(counts.watchRestarts.Load()))
	m.one("redis_operator_upgrades_total", "counter", "In-place upgrades of this pod's manager.", float64(counts.upgrades.Load()))
	if !ps.tlsNotAfter.IsZero() {
		m.one("redis_operator_tls_certificate_expiry_seconds", "gauge", "When the spec.tls certificate the manager holds (served, or to be served at the next start) expires, Unix time.", float64(ps.tlsNotAfter.Unix()))
	}

	i := ps.info
	up := i != nil && now.Sub(ps.infoAt) < redisStale
	m.one("redis_up", "gauge", "1 when redis-server answered the manager's last INFO (one every 2.5 s).", flag01(up))
	if !up {
		return []byte(m.b.String()) // no figure rather than an old one
	}
	num := func(key string) float64 { v, _ := strconv.ParseFloat(i[key], 64); return v }
	m.one("redis_loading", "gauge", "1 while redis-server loads its dataset.", flag01(i["loading"] == "1"))
	m.one("redis_uptime_seconds", "gauge", "Seconds since redis-server started.", num("uptime_in_seconds"))
	m.one("redis_used_memory_bytes", "gauge", "Memory Redis has allocated (used_memory).", num("used_memory"))
	m.one("redis_maxmemory_bytes", "gauge", "The maxmemory limit; 0 for none.", num("maxmemory"))
	m.one("redis_connected_clients", "gauge", "Client connections, replicas not included.", num("connected_clients"))
	m.one("redis_commands_processed_total", "counter", "Commands processed.", num("total_commands_processed"))
	m.one("redis_keyspace_hits_total", "counter", "Lookups that found their key.", num("keyspace_hits"))
	m.one("redis_keyspace_misses_total", "counter", "Lookups that did not find their key.", num("keyspace_misses"))
	m.one("redis_evicted_keys_total", "counter", "Keys evicted for maxmemory.", num("evicted_keys"))
	m.one("redis_expired_keys_total", "counter", "Keys expired.", num("expired_keys"))
	m.one("redis_db_keys", "gauge", "Keys in all databases.", float64(i.keys()))
	m.one("redis_replication_offset_bytes", "gauge", "This instance's replication offset (master_repl_offset).", num("master_repl_offset"))
	m.one("redis_connected_replicas", "gauge", "Replicas connected to this instance.", num("connected_slaves"))
	if i.role() == "slave" {
		m.one("redis_master_link_up", "gauge", "1 while this replica's link to its primary is up.", flag01(i["master_link_status"] == "up"))
		m.one("redis_replication_lag_bytes", "gauge", "How far this replica is behind its primary, in bytes of the replication stream.", float64(st.LagBytes))
	}
	m.one("redis_rdb_last_save_ok", "gauge", "1 when the last RDB save succeeded.", flag01(i["rdb_last_bgsave_status"] == "ok"))
	m.one("redis_rdb_last_save_timestamp_seconds", "gauge", "When the last RDB save succeeded, Unix time.", num("rdb_last_save_time"))
	m.one("redis_aof_enabled", "gauge", "1 when appendonly is on.", flag01(i["aof_enabled"] == "1"))
	m.one("redis_aof_last_write_ok", "gauge", "1 when the last write to the AOF succeeded.", flag01(i["aof_last_write_status"] == "ok"))
	return []byte(m.b.String())
}
