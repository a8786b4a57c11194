# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Named cut points between the steps that move a kept disk.

The fault matrix (``tools/fault_matrix.py``) starts one nova-compute with
``NOVA_SHELVE_ACCEL_CRASH_AT=<point>`` to make it kill itself with SIGKILL
at that point, exactly as ``kill -9`` from outside would at that instant,
with ``NOVA_SHELVE_ACCEL_FAIL_AT=<point>`` to make the step raise, or with
``NOVA_SHELVE_ACCEL_STOP_AT=<point>`` to make it stop itself (SIGSTOP)
there until someone sends SIGCONT: the matrix breaks the host's storage
client meanwhile, so that the step goes on against a dead mount. The
variables are read once, when this module is imported; without them every
cut point is a comparison with None and nothing else. Nothing in
``nova.conf`` can turn them on.
"""

import os
import signal

CRASH_ENV = 'NOVA_SHELVE_ACCEL_CRASH_AT'
FAIL_ENV = 'NOVA_SHELVE_ACCEL_FAIL_AT'
STOP_ENV = 'NOVA_SHELVE_ACCEL_STOP_AT'

# Every cut point, in the order a disk passes them. The fault matrix checks
# its rows against this list, so a renamed point fails it loudly.
POINTS = (
    # shelve-offload: the root disk becomes a kept disk
    'keep.record_written',      # kept.json written in the instance dir
    'keep.staged',              # instance dir renamed to staging
    'keep.pruned',              # swap, ephemerals, logs deleted
    'keep.moved_in',            # kept disk visible, marker not saved yet
    # unshelve on a host of the storage
    'claim.verified',           # record and disk checked, not renamed yet
    'claim.staged',             # kept disk renamed to this host's staging
    'claim.renamed',            # kept disk renamed into the instance dir
    'spawn.guest_started',      # libvirt spawn returned, kept.json remains
    'spawn.finished',           # kept.json marked unshelved, Nova not told
    'spawn.snapshot_deleted',   # Nova deleted the snapshot, instance not
                                # saved ACTIVE yet
    # a failed spawn gives the disk back
    'release.guest_removed',    # guest destroyed, disk not moved yet
    'release.staged',           # instance dir renamed to staging
    'release.pruned',           # swap, ephemerals, logs deleted again
    # periodic pass
    'reclaim.trashed',          # kept disk renamed to trash, not deleted
    'recover.rekept',           # interrupted unshelve rolled back on disk
    # snapshot_upload = after_offload: shelve skips the snapshot and the
    # kept disk is uploaded into the queued image after the offload
    'upload.snapshot_skipped',  # shelve skipped the snapshot, disk in place
    'upload.started',           # lease taken, disk being converted
    'upload.converted',         # full copy in the snapshots directory
    'upload.finished',          # Glance took the data, not checked yet
    'upload.activated',         # image seen active, kept.json still pending
    'upload.record_updated',    # kept.json says uploaded, sysmeta pending
)

_CRASH_AT = os.environ.get(CRASH_ENV)
_FAIL_AT = os.environ.get(FAIL_ENV)
_STOP_AT = os.environ.get(STOP_ENV)


class InjectedFault(Exception):
    """Raised at the cut point named by NOVA_SHELVE_ACCEL_FAIL_AT."""


def cut_point(name):
    """Crash, fail or stop here if the fault matrix asked, else nothing."""
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    if name == _STOP_AT:
        # Every thread of the process stops until SIGCONT.
        os.kill(os.getpid(), signal.SIGSTOP)
    if name == _FAIL_AT:
        raise InjectedFault('fault injected at %s (%s)' % (name, FAIL_ENV))
