#!/usr/bin/env bash
# The whole test suite: formatting, vet, every test under the race detector
# against a real redis-server, short fuzz runs of the redis.conf and INFO
# parsers, and the end-to-end tests against a real kube-apiserver and etcd
# (e2e/, its own module; its first compile takes several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/ensure-redis.sh
hack/ensure-clients.sh
hack/ensure-node.sh
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
go test -race -count=1 -timeout 20m ./...
# Counts rather than durations: Go 1.26's fuzz coordinator can fail a run
# with "context deadline exceeded" as a duration ends on a busy machine
# (golang/go#75804, fixed in Go 1.27). About 20 s and 10 s here.
go test -run '^$' -fuzz FuzzParseFragment -fuzztime "${FUZZTIME:-100000x}" .
go test -run '^$' -fuzz FuzzParseInfo -fuzztime "${FUZZTIME:-50000x}" .
cd e2e
go vet ./...
go test -count=1 -timeout 30m ./...
