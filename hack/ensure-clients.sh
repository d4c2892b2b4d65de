#!/usr/bin/env bash
# Installs the real client libraries the tests of the discovery port drive,
# when missing: redis-py (Debian's python3-redis) and ioredis (npm, into
# testdata/clients/node_modules, at the version its package.json pins).
# Node.js 20 must be on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo
if ! /usr/bin/python3 -c 'import redis' 2>/dev/null; then
  echo "installing python3-redis from the distribution" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-redis >/dev/null ||
    { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-redis >/dev/null; }
fi
if [ ! -d testdata/clients/node_modules/ioredis ]; then
  command -v npm >/dev/null || { echo "npm is needed for the ioredis tests: install Node.js 20" >&2; exit 1; }
  echo "installing ioredis from npm into testdata/clients" >&2
  npm install --prefix testdata/clients --no-audit --no-fund --silent >/dev/null
fi
