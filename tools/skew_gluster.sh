#!/bin/bash
# The clock-skew scenarios of tools/skew_kept_disks.py on GlusterFS.
#
#   skew_gluster.sh STATE
#
# Starts a volume with tools/gluster.sh (its state in STATE), mounts it
# once with a client on the right time and, for each skew, once with a
# client running under that skew (libfaketime), as a host whose clock is
# off has: GlusterFS stamps files with the client's time. Runs the
# scenarios between the two mounts, then tears it all down. Exits
# non-zero if any scenario is not ok. Run as root.
set -uo pipefail

state=$1
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/gluster.sh" libfaketime > /dev/null || exit 2
bash "$here/gluster.sh" up "$state" || exit 2
trap 'bash "$here/gluster.sh" down "$state"' EXIT
mounts=$(mktemp -d /tmp/skew-gluster.XXXXXX)
bash "$here/gluster.sh" mount "$state" "$mounts/right" || exit 2
rc=0
for skew in +10m -10m +2h -2h; do
    skewed="$mounts/skewed$skew"
    CLIENT_SKEW=$skew bash "$here/gluster.sh" mount "$state" "$skewed" \
        < /dev/null || exit 2
    (cd "$here/.." && python -m tools.skew_kept_disks --dir "$mounts/right" \
        --skewed-client "$skewed" --skew="$skew") || rc=1
    bash "$here/gluster.sh" umount "$skewed"
done
bash "$here/gluster.sh" umount "$mounts/right"
rmdir "$mounts"/* "$mounts" 2> /dev/null
exit $rc
