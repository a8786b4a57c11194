#!/bin/bash
# Runs inside private UTS and mount namespaces (see cloud.sh libvirt_up):
# name the host, give libvirt directories of its own, start virtlogd and
# libvirtd. libvirtd stays in the foreground so cloud.sh can stop it.
set -euo pipefail
host=$1
dir=$2
hostname "$host"
mount --bind "$dir/run" /run/libvirt
mount --bind "$dir/lib" /var/lib/libvirt
mount --bind "$dir/cache" /var/cache/libvirt
mount --bind "$dir/log" /var/log/libvirt
mount --bind "$dir/etc" /etc/libvirt
virtlogd -d --pid-file "$dir/virtlogd.pid"
exec libvirtd --pid-file "$dir/libvirtd.pid"
