package main

// HTTPS for the manager's endpoints: the certificate is served, and client
// certificates verified, as the files are now, so a renewed certificate is
// used from the next handshake on without a restart.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// tlsFiles serves the certificate, and verifies client certificates, as
// the files are now: a renewed certificate (cert-manager rewriting the
// Secret behind a volume) is used from the next handshake on, without a
// restart. Files that cannot be read keep the last good ones in use.
type tlsFiles struct {
	certFile, keyFile, caFile string
	log                       *slog.Logger

	mu                 sync.Mutex
	cert               *tls.Certificate
	pool               *x509.CertPool
	certStamp, caStamp string
	checked            time.Time
}

// loadTLS reads the files once, at start: a mistake there is a start error.
func loadTLS(certFile, keyFile, caFile string, log *slog.Logger) (*tlsFiles, error) {
	t := &tlsFiles{certFile: certFile, keyFile: keyFile, caFile: caFile, log: log}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// fileStamp changes when any of the files does (a write, a rename over it,
// an entry added to a directory).
func fileStamp(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d.%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return b.String()
}

// reload reads what changed; it is asked at most once a second.
func (t *tlsFiles) reload() error {
	if stamp := fileStamp(t.certFile, t.keyFile); stamp != t.certStamp {
		cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		if t.cert != nil {
			t.log.Info("serving a renewed TLS certificate", "file", t.certFile)
		}
		t.cert, t.certStamp = &cert, stamp
	}
	if stamp := fileStamp(t.caFile); t.caFile != "" && stamp != t.caStamp {
		pem, err := os.ReadFile(t.caFile)
		if err != nil {
			return fmt.Errorf("TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("TLS client CA %s holds no PEM certificate", t.caFile)
		}
		if t.pool != nil {
			t.log.Info("verifying client certificates against a renewed CA", "file", t.caFile)
		}
		t.pool, t.caStamp = pool, stamp
	}
	return nil
}

func (t *tlsFiles) current() (*tls.Certificate, *x509.CertPool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.checked) >= time.Second {
		t.checked = time.Now()
		if err := t.reload(); err != nil {
			t.log.Error("cannot read the renewed TLS files; serving with the last good ones", "error", err)
		}
	}
	return t.cert, t.pool
}

func (t *tlsFiles) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := t.current()
			c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}}
			if pool != nil {
				// Probes carry no certificate: asked for, not required.
				c.ClientAuth, c.ClientCAs = tls.VerifyClientCertIfGiven, pool
			}
			return c, nil
		},
	}
}
