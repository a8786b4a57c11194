#!/bin/bash
# Runs inside private UTS and mount namespaces (see cloud.sh libvirt_up):
# name the host, give libvirt directories of its own, start virtlogd and
# libvirtd. libvirtd stays in the foreground so cloud.sh can stop it.
#
#   libvirt-host.sh HOST DIR [GLUSTER_STATE INSTANCES]
#
# With GLUSTER_STATE, the host's own GlusterFS client mounts the volume on
# INSTANCES in this namespace first (tools/gluster.sh): the host's
# nova-compute, which cloud.sh starts in this namespace too, and its guests
# see the shared storage through that client only. CLIENT_SKEW, if set,
# is the offset of the host's clock, for its client (gluster.sh); libvirtd
# does not get it.
set -euo pipefail
host=$1
dir=$2
hostname "$host"
if [ -n "${3:-}" ]; then
    bash "$(dirname "$0")/../gluster.sh" mount "$3" "$4" "$host"
fi
mount --bind "$dir/run" /run/libvirt
mount --bind "$dir/lib" /var/lib/libvirt
mount --bind "$dir/cache" /var/cache/libvirt
mount --bind "$dir/log" /var/log/libvirt
mount --bind "$dir/etc" /etc/libvirt
virtlogd -d --pid-file "$dir/virtlogd.pid"
unset CLIENT_SKEW
exec libvirtd --pid-file "$dir/libvirtd.pid"
