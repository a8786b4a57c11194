#!/bin/bash
# A bare Debian bookworm on this machine, to run the README's commands where
# nothing is preinstalled: a debootstrapped chroot (variant minbase, plus
# git) entered with its own network, mount and process namespaces, so that
# the services it starts (MariaDB, RabbitMQ, GlusterFS, the cloud) are its
# own and end with it. As root.
#
#   tools/bare-bookworm.sh make DIR        debootstrap DIR (a few minutes)
#   tools/bare-bookworm.sh run DIR 'CMD'   run CMD in DIR as root, in bash -l
#   tools/bare-bookworm.sh net-down        remove the network of 'run'
#
# For example, the README's test command in a fresh clone:
#
#   tools/bare-bookworm.sh make /srv/bare
#   git clone . /srv/bare/root/nova-shelve-accel
#   tools/bare-bookworm.sh run /srv/bare 'cd /root/nova-shelve-accel && bash .ci/run'
#
# The chroot's network is a veth pair (10.201.0.1 here, 10.201.0.2 there)
# masqueraded through this machine's default route. Where this machine
# reaches the package registries through a TLS-inspecting proxy, 'make'
# gives the chroot the certificates this machine added for it
# (/usr/local/share/ca-certificates) and pip's use of the system store: a
# machine on the open internet needs neither.
set -euo pipefail

NETNS=bare-bookworm
HOST_IF=vbb0
PEER_IF=vbb1
HOST_ADDR=10.201.0.1
PEER_ADDR=10.201.0.2
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { printf 'bare-bookworm: %s\n' "$*" >&2; exit 1; }

# The interface of this machine's default route, which the chroot's traffic
# is masqueraded through.
uplink() {
    ip route show default | awk '{print $5; exit}'
}

# The tools this script runs on this machine, checked before it changes
# anything.
need_tools() {
    local tool missing=()
    for tool in debootstrap iptables ip unshare; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (as root:" \
        "apt-get install -y debootstrap iptables iproute2 util-linux)"
}

make_root() {
    local root=$1
    [ ! -e "$root" ] || die "$root exists: give a new directory"
    need_tools
    debootstrap --variant=minbase bookworm "$root" "$MIRROR"
    local extra=(/usr/local/share/ca-certificates/*.crt)
    if [ -e "${extra[0]}" ]; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp "${extra[@]}" "$root/usr/local/share/ca-certificates/"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' \
            > "$root/etc/pip.conf"
    fi
    run_in "$root" 'apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q git ca-certificates &&
        update-ca-certificates'
}

net_up() {
    local out
    ip netns list | grep -qw "$NETNS" || ip netns add "$NETNS"
    if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
        ip link add "$HOST_IF" type veth peer name "$PEER_IF"
        ip link set "$PEER_IF" netns "$NETNS"
        ip addr add "$HOST_ADDR/24" dev "$HOST_IF"
    fi
    ip link set "$HOST_IF" up
    ip netns exec "$NETNS" sh -c "
        ip addr replace $PEER_ADDR/24 dev $PEER_IF
        ip link set $PEER_IF up
        ip link set lo up
        ip route replace default via $HOST_ADDR"
    echo 1 > /proc/sys/net/ipv4/ip_forward
    out=$(uplink)
    [ -n "$out" ] || die "this machine has no default route"
    iptables -t nat -C POSTROUTING -s "$HOST_ADDR/24" -o "$out" \
        -j MASQUERADE 2>/dev/null ||
        iptables -t nat -A POSTROUTING -s "$HOST_ADDR/24" -o "$out" \
            -j MASQUERADE
}

net_down() {
    local out
    out=$(uplink)
    iptables -t nat -D POSTROUTING -s "$HOST_ADDR/24" -o "$out" \
        -j MASQUERADE 2>/dev/null || true
    ip link del "$HOST_IF" 2>/dev/null || true
    ip netns del "$NETNS" 2>/dev/null || true
}

# run_in ROOT CMD: CMD as root in ROOT. The new pid namespace ends every
# process CMD left (the cloud's daemons too) when CMD returns; the new mount
# namespace ends its mounts. ROOT becomes the namespace's root (pivot_root,
# not chroot): a process that enters a mount namespace made inside (as
# nova-compute enters its libvirtd's) is put at that namespace's root, which
# after a mere chroot is this machine's. The namespace's first process, which
# adopts every orphan (daemonized QEMU), is a bash that runs CMD as its child
# and reaps: were CMD itself first (bash execs a command line's last
# command, and tools/benchmark.sh execs Python), a killed QEMU would stay a
# zombie and libvirt would wait for it to end, 80 s per destroy.
run_in() {
    local root=$1 command=$2
    need_tools
    net_up
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    ip netns exec "$NETNS" unshare --mount --pid --fork --propagation private \
        bash -c '
        root=$1 command=$2
        mount --bind "$root" "$root"
        mount --rbind /dev "$root/dev"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        for dir in run tmp dev/shm; do
            mount -t tmpfs tmpfs "$root/$dir"
        done
        mkdir -p "$root/.old-root"
        cd "$root"
        pivot_root . .old-root
        exec /usr/sbin/chroot . /bin/sh -c '"'"'
            umount -l /.old-root && rmdir /.old-root
            exec /usr/bin/env -i HOME=/root TERM=xterm LANG=C.UTF-8 \
                PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
                bash -c "bash -lc \"\$0\" & wait \$!" "$0"'"'"' "$command"' \
        bare-bookworm "$root" "$command"
}

case ${1:-} in
    make) [ $# = 2 ] || die "usage: bare-bookworm.sh make DIR"; make_root "$2" ;;
    run) [ $# = 3 ] || die "usage: bare-bookworm.sh run DIR 'CMD'"
         run_in "$2" "$3" ;;
    net-down) net_down ;;
    *) die "usage: bare-bookworm.sh make DIR | run DIR 'CMD' | net-down" ;;
esac
