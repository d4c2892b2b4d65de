#!/usr/bin/env bash
# Installs from the distribution what the real-node test (e2e/node_test.go)
# needs and this machine lacks: containerd, runc, the CNI plugins and
# iptables (kube-proxy's rules). That test runs as root only (it skips
# otherwise), so nothing is installed for another user.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || exit 0
missing=()
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} from the distribution" >&2
env DEBIAN_FRONTEND=noninteractive apt-get update
env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
