package main

// `redis-operator status`: an instance's /v1/status as a table, for a human
// at `kubectl exec`.

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// statusCommand prints an instance's /v1/status as a table, for a human at
// `kubectl exec`: by default this pod's own, at the address its manager
// listens on (HTTP_ADDR, as the instance reads it).
func statusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", cmp.Or(os.Getenv("HTTP_ADDR"), defaultHTTPAddr), "the manager's HTTP address: host:port, or a URL (https://...)")
	caFile := fs.String("ca-file", "", "over HTTPS, trust this CA (default: the system's)")
	if err := fs.Parse(args); err != nil {
		return configErrorf("%v", err)
	}
	if fs.NArg() > 0 {
		return configErrorf("usage: redis-operator status [--addr host:port|URL] [--ca-file FILE]")
	}
	base := *addr
	if !strings.Contains(base, "://") {
		host, port, err := net.SplitHostPort(base)
		if err != nil {
			return configErrorf("--addr %q: %v", base, err)
		}
		base = "http://" + net.JoinHostPort(cmp.Or(host, "127.0.0.1"), port)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return configErrorf("--ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return configErrorf("--ca-file %s: no certificate in it", *caFile)
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/v1/status", nil)
	if err != nil {
		return configErrorf("--addr %q: %v", *addr, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s answered %s", req.URL, resp.Status)
	}
	var st instanceStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("status: %s: %w", req.URL, err)
	}
	printStatus(stdout, st, time.Now())
	return nil
}

func printStatus(out io.Writer, st instanceStatus, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	ready := "ready"
	if !st.Ready {
		ready = "not ready: " + st.NotReadyReason
	}
	row("address", "%s", st.Address)
	row("role", "%s, %s", st.Role, ready)
	row("fenced", "%s", yesNo(st.Fenced))
	switch st.Role {
	case "replica":
		row("replication", "link %s, %d bytes behind, offset %d", st.MasterLinkStatus, st.LagBytes, st.ReplicationOffset)
	case "master":
		row("replication", "%d replicas connected, offset %d", st.ConnectedReplicas, st.ReplicationOffset)
	}
	row("keys", "%d", st.Keys)
	row("memory", "%s used", byteSize(st.UsedMemoryBytes))
	row("redis", "%s, restarted %d times", cmp.Or(st.RedisVersion, "-"), st.Restarts)
	hash := st.ExecutableHash
	if len(hash) > 12 {
		hash = hash[:12]
	}
	row("manager", "%s (sha256 %s)", st.ManagerVersion, hash)
	pending := "none"
	if len(st.PendingRestart) > 0 {
		pending = strings.Join(st.PendingRestart, ", ")
	}
	row("config", "hash %s, waiting for a restart: %s", cmp.Or(st.ConfigHash, "-"), pending)
	row("last error", "%s", cmp.Or(st.LastError, "-"))
	row("updated", "%s (%s ago)", st.UpdatedAt.Format(time.RFC3339), now.Sub(st.UpdatedAt).Round(time.Second))
	tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
