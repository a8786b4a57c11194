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

"""What an instance's system metadata says about its kept root disk, and
what a compute host reports about its storage.

Shared by the compute driver, which writes them, and the scheduler filter,
which reads them; it imports nothing of libvirt.
"""

# Compute node stat: free share of the filesystem holding instances_path,
# in percent, read at the host's last resource update. The filter's floor
# is about the storage's real fill; Nova's own free disk figure counts every
# instance at its flavor's full disk, which a reused kept disk does not add.
STORAGE_FREE_STAT = 'shelve_accel_storage_free_percent'

# Set at offload to the id of the snapshot the kept disk matches. A kept disk
# is trusted only while this equals ``shelved_image_id``, which Nova replaces
# at every shelve and removes at unshelve, so a stale value is harmless.
KEPT_DISK_KEY = 'shelve_accel_kept_snapshot'


# Set when shelve skipped the snapshot upload because the disk is kept
# (``[shelve_accel] snapshot_upload = after_offload``): the Glance image is
# still queued and the kept disk is the instance's only copy. Removed once
# the kept disk has been uploaded into the image. Trusted only while it
# equals ``shelved_image_id``.
PENDING_UPLOAD_KEY = 'shelve_accel_snapshot_pending'


# Set, with vm_state ERROR, when a failed unshelve left the claimed kept disk
# in the instance directory and neither the guest could be removed from the
# host (its value) nor the directory be moved away: no spawn may use the
# directory while that guest may run. That host's recovery pass removes the
# guest, gives the disk back and the instance is shelved-offloaded again.
FENCED_KEY = 'shelve_accel_fenced_by'


def pending_snapshot_id(instance):
    """The snapshot id still waiting for the kept disk's data, or None."""
    return _shelved_image_named_by(instance, PENDING_UPLOAD_KEY)


def kept_snapshot_id(instance):
    """The snapshot id the instance's kept root disk matches, or None."""
    return _shelved_image_named_by(instance, KEPT_DISK_KEY)


def _shelved_image_named_by(instance, key):
    sysmeta = instance.system_metadata
    snapshot_id = sysmeta.get('shelved_image_id')
    if snapshot_id and sysmeta.get(key) == snapshot_id:
        return snapshot_id
    return None


def reason_to_reclaim(instance, snapshot_id):
    """Why a disk kept at ``snapshot_id`` is of no use any more, or None.

    ``instance`` is the instance the disk was kept for, as read from its
    cell's database, deleted or not. A kept disk is needed exactly while
    its instance exists and is still shelved with that snapshot: Nova
    replaces ``shelved_image_id`` at every shelve and removes it at
    unshelve. An instance that was not found is no such knowledge: the
    caller decides what it knows then (see ARCHIVED).
    """
    if instance.deleted:
        return 'the instance was deleted'
    if instance.system_metadata.get('shelved_image_id') != snapshot_id:
        return 'the instance is no longer shelved with snapshot %s' % (
            snapshot_id)
    return None


# Why a disk is not needed when its instance is in no database while the
# host that kept it is known there: deleted, then archived with nova-manage
# db archive_deleted_rows.
ARCHIVED = ('the instance was deleted and archived: it is in no database '
            'while host %s that kept the disk is')
