#!/usr/bin/env bash
# One bench/run.py pass of commit REV on a Redis, and the CPU that redis-server spent meanwhile
# (INFO cpu, used_cpu_user + used_cpu_sys, before and after): the worker's CPU per job alone does
# not show a cost that moved into Lua scripts.
#   bench/redis_cpu.sh REV [PORT]     (PORT defaults to 6391: a private redis-server, never the shared one)
set -euo pipefail
cd "$(dirname "$0")/.."
rev="$1"; port="${2:-6391}"
cpu() { redis-cli -p "$port" info cpu | awk -F: '/used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'; }
before=$(cpu)
.venv/bin/python bench/run.py --url "redis://127.0.0.1:$port/0" --repeats 1 --commit "$rev"
after=$(cpu)
echo "$rev: redis-server CPU $(python3 -c "print(round($after - $before, 3))") s"
