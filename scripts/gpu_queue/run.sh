#!/usr/bin/env bash
# Runs scripts/gpu_queue/NAME.sh for each NAME[:CAP] given (CAP: wall-clock seconds, default 300), each with
# OUT=$OUT/r/NAME, prints each one's tail, and packs everything into $OUT/results.tgz (the device tool returns at most
# 8 files). Run from the repository root on the GPU machine; scripts/gpu_queue/README.md gives the order and carries.
set -uo pipefail
export PYTHONUNBUFFERED=1
root=${OUT:-/tmp/gpu_queue_out}; mkdir -p "$root/r"
# The device copy's git metadata can be stale: the lead writes the commit into gpu_queue_run/COMMIT (git-ignored).
echo "commit $(cat gpu_queue_run/COMMIT 2>/dev/null || git rev-parse --short HEAD) $(date -u)"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
for item in "$@"; do
  name=${item%%:*}; cap=${item#*:}; [ "$cap" = "$item" ] && cap=300
  mkdir -p "$root/r/$name"; echo "=== $name (cap $cap s) $(date -u +%T)"
  start=$(date +%s)
  OUT="$root/r/$name" timeout "$cap" bash "scripts/gpu_queue/$name.sh" > "$root/r/$name/stdout.log" 2>&1
  echo "=== $name exit $? in $(( $(date +%s) - start )) s"; tail -25 "$root/r/$name/stdout.log"
done
tar -czf "$root/results.tgz" -C "$root" r && rm -rf "$root/r"
