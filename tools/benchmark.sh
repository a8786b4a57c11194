#!/bin/bash
# The project's main job: bring the loopback test cloud up (unless it is
# already up) and run the shelve/unshelve benchmark, stock Nova against
# nova-shelve-accel with snapshot_upload = at_shelve and = after_offload,
# printing the tables. As root, Debian bookworm.
#
#   tools/benchmark.sh [--sizes 256M,1G,4G] [--rounds 2] [--burst 30]
#                      [--burst-size 64M] [--out bench-results]
#                      [--modes stock,plugin,fast-shelve] [--no-debug]
#                      [--profile] [--drop-caches]
#
# The cloud stays up afterwards; 'tools/cloud/cloud.sh down' stops it and
# removes its state.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${SHELVE_ACCEL_STATE:-/var/lib/nova-shelve-accel-cloud}

if [ ! -f "$STATE/mode" ]; then
    bash tools/cloud/cloud.sh up
fi
# The cloud's virtualenv and constraints, as 'cloud.sh up' chose them.
VENV=${SHELVE_ACCEL_VENV:-$(cat "$STATE/venv")}
"$VENV/bin/pip" install -q -c "$(cat "$STATE/constraints")" \
    -r tools/bench-requirements.txt
exec "$VENV/bin/python" -m tools.bench_shelve "$@"
