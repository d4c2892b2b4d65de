#!/usr/bin/env bash
# Installs Debian's redis-server and redis-tools when redis-server is missing,
# and checks for unshare (util-linux), which the PID 1 test uses.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v unshare >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} from the distribution" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
