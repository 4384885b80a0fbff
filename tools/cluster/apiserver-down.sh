#!/usr/bin/env bash
# Stops the control plane started by apiserver-up.sh and removes its state: no process or file is left behind.
source "$(dirname "$0")/../lib.sh"
STATE="$ROOT/.tools/cluster"
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pidfile="$STATE/pids/$name"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done # gone before its files go
  fi
done
rm -rf "$STATE"
log "control plane stopped"
