#!/bin/bash
# Nova's own Tempest tests against the loopback cloud, in each of its modes.
#
#   tools/tempest.sh [--tests shelve|regression] [--modes MODE[,MODE]...]
#                    [--concurrency N] [--out DIR]
#
# --tests shelve (default) runs Nova's shelve tests (tools/tempest/
# shelve.txt); --tests regression runs every compute API test of servers
# and of the admin API (tools/tempest/regression.txt). Both leave out the
# tests of tools/tempest/skip.txt, each with its reason. --modes (default
# stock,plugin,fast-shelve) are 'tools/cloud/cloud.sh mode' names: stock
# Nova, the plugin with snapshot_upload = at_shelve, and with after_offload.
# --concurrency: Tempest's workers (default 2). --out (default
# tempest-results): for each mode MODE.log (Tempest's output) and
# MODE.subunit (every test's result); report.txt compares the modes
# (tools/tempest/report.py).
#
# Needs a cloud that is up ('tools/cloud/cloud.sh up'); puts it back in the
# mode it was in. Installs Tempest 47.0.0 (pinned in upper-constraints.txt)
# into its own virtualenv, SHELVE_ACCEL_TEMPEST_VENV (default
# /opt/nova-shelve-accel/tempest-venv), and keeps its workspace in the
# cloud's state directory. Exit status 1 when a test failed in any mode.
# Run as root.
set -euo pipefail

TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$TOOLS/.." && pwd)
STATE=${SHELVE_ACCEL_STATE:-/var/lib/nova-shelve-accel-cloud}
# The cloud's virtualenv, as 'cloud.sh up' chose it.
VENV=${SHELVE_ACCEL_VENV:-$(cat "$STATE/venv" 2>/dev/null ||
                            echo /opt/nova-shelve-accel/venv)}
TEMPEST_VENV=${SHELVE_ACCEL_TEMPEST_VENV:-/opt/nova-shelve-accel/tempest-venv}
WORKSPACE=$STATE/tempest
CLOUD=$TOOLS/cloud/cloud.sh
TESTS=shelve
MODES=stock,plugin,fast-shelve
CONCURRENCY=2
OUT=tempest-results

say() { echo "[tempest] $*"; }
die() { echo "[tempest] ERROR: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
    --tests) TESTS=${2:?--tests needs shelve or regression}; shift 2;;
    --modes) MODES=${2:?--modes needs a list}; shift 2;;
    --concurrency) CONCURRENCY=${2:?--concurrency needs a number}; shift 2;;
    --out) OUT=${2:?--out needs a directory}; shift 2;;
    *) die "unknown argument '$1' (see the top of $0)";;
    esac
done
INCLUDE=$TOOLS/tempest/$TESTS.txt
[ -f "$INCLUDE" ] || die "--tests $TESTS: no $INCLUDE (shelve or regression)"
[[ $CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "--concurrency $CONCURRENCY"
IFS=, read -r -a mode_list <<< "$MODES"
for mode in "${mode_list[@]}"; do
    case $mode in stock|plugin|fast-shelve) ;;
    *) die "unknown mode '$mode': use stock, plugin or fast-shelve";;
    esac
done
[ -f "$STATE/mode" ] ||
    die "no cloud is up: run 'bash tools/cloud/cloud.sh up' first"

install_tempest() {
    local stamp=$TEMPEST_VENV/.shelve-accel-constraints
    if [ ! -x "$TEMPEST_VENV/bin/tempest" ] ||
            ! cmp -s "$REPO/upper-constraints.txt" "$stamp"; then
        say "pip: Tempest into $TEMPEST_VENV"
        python3 -m venv "$TEMPEST_VENV"
        # pip warns about every package that a site-wide find-links
        # directory lacks: keep the warnings that say something else.
        "$TEMPEST_VENV/bin/pip" install -q -c "$REPO/upper-constraints.txt" \
            tempest 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || :; }
        cp "$REPO/upper-constraints.txt" "$stamp"
    fi
    "$TEMPEST_VENV/bin/tempest" --version
}

configure() {
    if [ ! -f "$WORKSPACE/.stestr.conf" ]; then
        rm -rf "$WORKSPACE"
        "$TEMPEST_VENV/bin/tempest" init "$WORKSPACE" >/dev/null
    fi
    mkdir -p "$WORKSPACE/logs" "$WORKSPACE/lock"
    "$VENV/bin/python" "$TOOLS/tempest/configure.py" shelve-accel \
        "$WORKSPACE" "$WORKSPACE/etc/tempest.conf" \
        "$STATE/etc/nova/nova.conf" "$STATE/etc/nova/mode.conf"
}

# How many unshelves reused a kept root disk, by every compute's log.
reused_disks() {
    cat "$STATE"/logs/nova-compute-*.log |
        grep -c 'Unshelved on the kept root disk' || :
}

run_mode() {
    local mode=$1 rc=0 reused
    say "mode $mode: $TESTS tests"
    bash "$CLOUD" mode "$mode"
    configure
    reused=$(reused_disks)
    (cd "$WORKSPACE" &&
        "$TEMPEST_VENV/bin/tempest" run --concurrency "$CONCURRENCY" \
            --include-list "$INCLUDE" \
            --exclude-list "$TOOLS/tempest/skip.txt") \
        </dev/null > "$OUT/$mode.log" 2>&1 || rc=$?
    (cd "$WORKSPACE" && "$TEMPEST_VENV/bin/stestr" last --subunit) \
        > "$OUT/$mode.subunit"
    grep -E '^ - (Passed|Failed|Skipped):|^Sum of execute time' \
        "$OUT/$mode.log" | sed "s/^/[tempest] $mode: /" || true
    reused=$(( $(reused_disks) - reused ))
    say "$mode: $reused unshelves reused a kept root disk"
    echo "$reused" > "$OUT/$mode.reused"
    return "$rc"
}

install_tempest
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
first_mode=$(cat "$STATE/mode")
restore_mode() {
    [ "$(cat "$STATE/mode" 2>/dev/null)" = "$first_mode" ] ||
        bash "$CLOUD" mode "$first_mode" >/dev/null || true
}
trap restore_mode EXIT
rc=0
for mode in "${mode_list[@]}"; do
    run_mode "$mode" || rc=1
done
"$TEMPEST_VENV/bin/python" "$TOOLS/tempest/report.py" "$OUT" \
    "${mode_list[@]}" | tee "$OUT/report.txt"
exit "$rc"
