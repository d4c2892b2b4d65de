#!/usr/bin/env bash
# Brings up three instances of the manager on this machine from
# examples/local/cluster.yaml (local mode: no Kubernetes), or takes them down.
#   hack/local-cluster.sh [up|down]
set -euo pipefail
cd "$(dirname "$0")/.."
state=.local
down() {
  for i in 0 1 2; do
    pidfile=$state/cache-$i.pid
    [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
  done
  for i in 0 1 2; do
    pidfile=$state/cache-$i.pid
    [ -f "$pidfile" ] || continue
    while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.2; done
    rm -f "$pidfile"
  done
  echo "local cluster stopped; its data stays in $state/ (remove it for a fresh start)"
}
if [ "${1:-up}" = down ]; then down; exit 0; fi

hack/ensure-redis.sh
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
mkdir -p bin $state
go build -o bin/redis-operator \
  -ldflags "-X main.version=$(git describe --always --dirty 2>/dev/null || echo dev) -X main.commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" .
[ -f $state/cluster.yaml ] || cp examples/local/cluster.yaml $state/cluster.yaml
for i in 0 1 2; do
  pidfile=$state/cache-$i.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "cache-$i is already running (pid $(cat "$pidfile"))"
    continue
  fi
  nohup bin/redis-operator instance --cluster cache --pod-name cache-$i \
    --cluster-file $state/cluster.yaml --data-dir $state/cache-$i \
    --redis-port $((6380 + i)) --http-addr 127.0.0.1:$((8001 + i)) --announce-host 127.0.0.1 \
    --sentinel-port $((26380 + i)) \
    >$state/cache-$i.log 2>&1 </dev/null &
  echo $! >"$pidfile"
done
echo -n "waiting for the three instances to be ready"
for _ in $(seq 1 120); do
  ready=0
  for i in 0 1 2; do
    curl -fs -o /dev/null http://127.0.0.1:$((8001 + i))/readyz && ready=$((ready + 1))
  done
  [ $ready -eq 3 ] && break
  echo -n .
  sleep 0.5
done
echo
if [ $ready -ne 3 ]; then
  echo "only $ready of 3 instances became ready; see $state/cache-*.log" >&2
  exit 1
fi
password=$(sed -n 's/^  password: //p' $state/cluster.yaml)
target=$(sed -n 's/^  targetPrimary: //p' $state/cluster.yaml)
cat <<TXT
A three-instance Redis cluster runs on this machine: ${target:-cache-0} is the primary.

  instance  redis            sentinel (discovery)  manager HTTP           log
  cache-0   127.0.0.1:6380   127.0.0.1:26380       http://127.0.0.1:8001  $state/cache-0.log
  cache-1   127.0.0.1:6381   127.0.0.1:26381       http://127.0.0.1:8002  $state/cache-1.log
  cache-2   127.0.0.1:6382   127.0.0.1:26382       http://127.0.0.1:8003  $state/cache-2.log

A Sentinel-aware client finds the primary through any of the three
sentinels, with the master name cache (see README, "Discovery"):
  redis-cli -p 26380 -a $password --no-auth-warning SENTINEL get-master-addr-by-name cache

  redis-cli -p 6380 -a $password --no-auth-warning SET hello world
  redis-cli -p 6381 -a $password --no-auth-warning GET hello
  curl -s http://127.0.0.1:8001/v1/status
  cat $state/cluster.yaml.status/cache-1.json

Edit $state/cluster.yaml and the managers follow, e.g. a switchover:
  sed -i 's/targetPrimary: .*/targetPrimary: cache-1/' $state/cluster.yaml
Stop it with: hack/local-cluster.sh down
TXT
