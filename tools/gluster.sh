#!/bin/bash
# A one-brick GlusterFS volume on this machine, and clients of it: a real
# network filesystem for the tests of the storage a group of hosts shares.
#
#   gluster.sh up STATE        install GlusterFS if missing, start glusterd
#                              (its working directory, brick and logs in
#                              STATE) and the volume "shelve"
#   gluster.sh mount STATE DIR [NAME]
#                              mount the volume on DIR with a client of its
#                              own (one glusterfs process per mount, as each
#                              host of a storage group has its own); with
#                              NAME, the client's log is STATE/log/client-
#                              NAME.log and its pid is in STATE/client-
#                              NAME.pid (for mounts at the same DIR in
#                              different mount namespaces); with
#                              CLIENT_SKEW=OFFSET in the environment (a
#                              libfaketime offset: +10m, -2h), the client
#                              runs with its clock off by OFFSET, as the
#                              client of a host whose clock is off would:
#                              GlusterFS stamps files with the client's time
#   gluster.sh umount DIR      unmount a client
#   gluster.sh down STATE      unmount every client of the volume, stop the
#                              volume and glusterd, delete STATE
#   gluster.sh libfaketime     print the path of libfaketime (LD_PRELOAD);
#                              fail saying how to install it
#
# The volume and its clients are set up for coherence between clients: by
# default a GlusterFS client keeps seeing a name that another client renamed
# or deleted, and a stale size, for about a second. The kept-disk storage
# relies on a rename being seen at once by every host, so the volume turns
# off stat-prefetch, quick-read and open-behind, and each client mounts with
# entry, attribute and negative timeouts of 0 and fopen-keep-cache off.
# mount.glusterfs does not pass that last option through: this script runs
# glusterfs itself.
#
# Run as root on Debian bookworm.
set -euo pipefail

VOLUME=shelve
# glusterd refuses localhost and 127.0.0.1 as a brick's host: a name of our
# own that resolves to 127.0.0.1.
BRICK_HOST=shelve-gluster-brick

die() { echo "gluster.sh: $*" >&2; exit 1; }

install_if_missing() {
    if ! command -v glusterd > /dev/null || ! command -v glusterfs \
            > /dev/null; then
        # Package lists may be missing or stale on a fresh machine.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            glusterfs-server glusterfs-client > /dev/null || {
            apt-get update -q > /dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                glusterfs-server glusterfs-client > /dev/null
        }
    fi
}

gluster_cli() { gluster --mode=script "$@"; }

libfaketime() {
    local lib
    lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2> /dev/null | head -1)
    [ -n "$lib" ] || die "libfaketime is missing (as root: apt-get install" \
        "faketime)"
    echo "$lib"
}

up() {
    local state=$1
    install_if_missing
    grep -qw "$BRICK_HOST" /etc/hosts ||
        echo "127.0.0.1 $BRICK_HOST" >> /etc/hosts
    mkdir -p "$state/lib" "$state/brick" "$state/log" /var/log/glusterfs
    state=$(cd "$state" && pwd)
    if [ -f "$state/glusterd.pid" ] &&
            kill -0 "$(cat "$state/glusterd.pid")" 2> /dev/null; then
        echo "glusterd already runs (pid $(cat "$state/glusterd.pid"))"
    elif pgrep -x glusterd > /dev/null; then
        # One glusterd per machine: it owns port 24007 and the CLI socket.
        die "another glusterd runs (pid $(pgrep -x glusterd | head -1)):" \
            "stop it (gluster.sh down with its STATE) or use its STATE"
    else
        # Its own volfile: working directory in STATE, listening on
        # loopback only.
        cat > "$state/glusterd.vol" << EOF
volume management
    type mgmt/glusterd
    option working-directory $state/lib
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
EOF
        glusterd -f "$state/glusterd.vol" -p "$state/glusterd.pid" \
            -l "$state/log/glusterd.log"
    fi
    local i
    for i in $(seq 60); do
        gluster_cli volume list > /dev/null 2>&1 && break
        sleep 0.5
    done
    gluster_cli volume list > /dev/null ||
        die "glusterd did not answer; see $state/log/glusterd.log"
    if ! gluster_cli volume info "$VOLUME" > /dev/null 2>&1; then
        # force: the brick is on the root filesystem, which glusterd
        # otherwise refuses.
        gluster_cli volume create "$VOLUME" \
            "$BRICK_HOST:$state/brick/$VOLUME" force > /dev/null
        local option
        for option in performance.stat-prefetch performance.quick-read \
                performance.open-behind; do
            gluster_cli volume set "$VOLUME" "$option" off > /dev/null
        done
    fi
    gluster_cli volume start "$VOLUME" force > /dev/null
    echo "volume $VOLUME up (state in $state)"
}

do_mount() {
    local state=$1 dir=$2 name=${3:-}
    mkdir -p "$dir"
    if mountpoint -q "$dir"; then
        die "$dir is already a mount point"
    fi
    [ -n "$name" ] || name=$(echo "$dir" | tr / -)
    local clock=()
    if [ -n "${CLIENT_SKEW:-}" ]; then
        clock=(env "LD_PRELOAD=$(libfaketime)" "FAKETIME=$CLIENT_SKEW")
    fi
    "${clock[@]}" glusterfs --volfile-server="$BRICK_HOST" \
        --volfile-id="$VOLUME" \
        --entry-timeout=0 --attribute-timeout=0 --negative-timeout=0 \
        --fopen-keep-cache=off --pid-file="$state/client-$name.pid" \
        --log-file="$state/log/client-$name.log" "$dir"
    local i
    for i in $(seq 60); do
        mountpoint -q "$dir" && return 0
        sleep 0.5
    done
    die "the client did not mount $dir; see $state/log"
}

do_umount() {
    local dir=$1
    if mountpoint -q "$dir"; then
        umount "$dir" || umount -l "$dir"
    fi
}

down() {
    local state=$1
    local mount
    # Every client of this volume in this mount namespace.
    awk -v vol="$BRICK_HOST:$VOLUME" '$1 == vol {print $2}' /proc/mounts |
        while read -r mount; do do_umount "$mount"; done
    if command -v gluster > /dev/null &&
            gluster_cli volume info "$VOLUME" > /dev/null 2>&1; then
        gluster_cli volume stop "$VOLUME" force > /dev/null || true
        gluster_cli volume delete "$VOLUME" > /dev/null || true
    fi
    local pidfile
    for pidfile in /var/run/gluster/vols/"$VOLUME"/*.pid \
            "$state/glusterd.pid"; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2> /dev/null || true
        rm -f "$pidfile"
    done
    rm -rf "$state"
}

case "${1:-}" in
    up) [ $# -eq 2 ] || die "usage: gluster.sh up STATE"; up "$2" ;;
    mount) [ $# -eq 3 ] || [ $# -eq 4 ] ||
            die "usage: gluster.sh mount STATE DIR [NAME]"
        do_mount "$2" "$3" "${4:-}" ;;
    umount) [ $# -eq 2 ] || die "usage: gluster.sh umount DIR"
        do_umount "$2" ;;
    down) [ $# -eq 2 ] || die "usage: gluster.sh down STATE"; down "$2" ;;
    libfaketime) libfaketime ;;
    *) die "usage: gluster.sh up|mount|umount|down|libfaketime ..." ;;
esac
