#!/usr/bin/env bash
# Every benchmark, side by side with Redis's FAILOVER TO and Redis Sentinel,
# and docs/BENCHMARKS.md written from the results (e2e/benchreport). ONLY=a,b
# runs some of them again and keeps the others' last results. Run it on an
# otherwise idle machine: about 25 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/ensure-redis.sh
# The switchover comparison's Sentinels: Debian's, as users would run them.
# (Installing the package also starts a sentinel service where an init
# system runs; the benchmark's own listen on ports of their own.)
if ! command -v redis-sentinel >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-sentinel
fi
cd e2e
exec go run ./benchreport -root .. ${ONLY:+-only "$ONLY"}
