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

"""Eviction of kept disks that are still needed, for space or for age.

A kept disk whose snapshot is ``active`` in Glance is a cache: deleting it
costs the instance's next unshelve a download, as in stock Nova, and loses
nothing. Reclaim (in ``recovery``) deletes the disks no instance can use;
eviction deletes usable ones:

* under storage pressure, when the storage's free share falls below
  ``free_space_floor_percent + eviction_margin_percent``: the oldest first,
  one at a time, until it is above that again;
* by age, at the image cache pass, once ``max_kept_age`` is set.

A disk is evicted only while its instance is shelved-offloaded with nothing
under way and its snapshot is ``active``: never the only copy of the data.
An unshelve that claims the disk at the same moment wins or loses the same
atomic rename as against a reclaim; if it loses, it downloads the snapshot.
"""

import time

from oslo_log import log as logging
from oslo_utils import timeutils

from nova.compute import vm_states
from nova import exception
from nova.image import glance

from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import notifications
from nova_shelve_accel import shelved
from nova_shelve_accel.virt.libvirt import upload

CONF = accel_conf.CONF
LOG = logging.getLogger(__name__)

# Between two looks at the storage's free share.
PRESSURE_CHECK_SECONDS = 60


class Evictor:
    """The evictions of one compute host."""

    def __init__(self, store, find_instance=None):
        """The evictions on ``store``.

        ``find_instance(uuid)`` reads an instance with its system metadata,
        or gives None (by default from this host's cell).
        """
        self._store = store
        self._find_instance = find_instance or upload.instance_of
        self._image_api = glance.API()
        self._last_check = None

    def evict_if_pressed(self):
        """Evict for space, at most every PRESSURE_CHECK_SECONDS.

        One statvfs when the storage has room; the kept disks are listed
        only when it has not.
        """
        now = time.monotonic()
        if self._last_check is not None and (
                now - self._last_check < PRESSURE_CHECK_SECONDS):
            return
        self._last_check = now
        target = (CONF.shelve_accel.free_space_floor_percent +
                  CONF.shelve_accel.eviction_margin_percent)
        try:
            if self._store.free_percent() >= target:
                return
            evictable = sorted(self._evictable(), key=_kept_at)
        except OSError:
            LOG.exception('Cannot look for kept disks to evict in %s.',
                          self._store.path)
            return
        for record in evictable:
            free = self._store.free_percent()
            if free >= target:
                return
            self.evict(record, 'the storage has %.1f%% free, below '
                       'free_space_floor_percent + eviction_margin_percent '
                       '= %d%%' % (free, target))

    def evict_old(self):
        """Evict the disks kept longer than max_kept_age, if it is set."""
        max_age = CONF.shelve_accel.max_kept_age
        if not max_age:
            return
        now = timeutils.utcnow()
        try:
            evictable = self._evictable()
        except OSError:
            LOG.exception('Cannot look for kept disks to evict in %s.',
                          self._store.path)
            return
        for record in evictable:
            age = (now - _kept_at(record)).total_seconds()
            if age > max_age:
                self.evict(record, 'kept for %d s, longer than '
                           '[shelve_accel] max_kept_age = %d'
                           % (age, max_age))

    def _evictable(self):
        # A pending disk is the instance's only copy.
        return [r for r in self._store.list_kept() if not r.snapshot_pending]

    def evict(self, record, why):
        """Evict that kept disk if it may be; True if it was."""
        try:
            instance = self._find_instance(record.instance_uuid)
            refusal = self._refusal(instance, record)
        except Exception as e:
            refusal = 'its instance or snapshot cannot be read: %s' % e
        if refusal:
            LOG.info('Not evicting the kept root disk %s (%s): %s.',
                     self._store.kept_dir(record.instance_uuid,
                                          record.snapshot_id), why, refusal,
                     instance_uuid=record.instance_uuid)
            return False
        if not self._store.reclaim(record, 'evicted: %s' % why):
            return False        # claimed or reclaimed meanwhile
        self._forget_marker(instance, record.snapshot_id)
        LOG.info('Evicted the kept root disk of snapshot %s (%s); the next '
                 'unshelve downloads the snapshot.', record.snapshot_id, why,
                 instance=instance)
        notifications.notify(
            'shelve_accel.disk.evicted', record.instance_uuid,
            project_id=instance.project_id, snapshot_id=record.snapshot_id,
            disk_bytes=record.allocated_bytes, reason=why,
            kept_at=record.kept_at)
        return True

    def _refusal(self, instance, record):
        """Why this disk must not be evicted now, or None."""
        if instance is None:
            return 'its instance is not in the database of this cell'
        if shelved.reason_to_reclaim(instance, record.snapshot_id):
            return 'no instance needs it; the image cache pass reclaims it'
        if (instance.vm_state != vm_states.SHELVED_OFFLOADED or
                instance.task_state is not None):
            return 'the instance is %s, task %s' % (
                instance.vm_state, instance.task_state)
        if shelved.pending_snapshot_id(instance):
            return 'its snapshot is still waiting for its data'
        status = self._image_api.get(upload.service_context(),
                                     record.snapshot_id).get('status')
        if status != 'active':
            return 'snapshot %s is %s in Glance, not active; the kept disk ' \
                   'may be the only copy' % (record.snapshot_id, status)
        return None

    @staticmethod
    def _forget_marker(instance, snapshot_id):
        # Without its disk the marker would only send the next unshelve to
        # the group for nothing.
        if instance.system_metadata.get(shelved.KEPT_DISK_KEY) != snapshot_id:
            return
        del instance.system_metadata[shelved.KEPT_DISK_KEY]
        try:
            instance.save(expected_task_state=[None])
        except (exception.UnexpectedTaskStateError,
                exception.InstanceNotFound):
            pass


def _kept_at(record):
    """When the disk was kept; now if the record does not say it clearly.

    A disk of unknown age is evicted last for space and never for age.
    """
    try:
        return timeutils.normalize_time(
            timeutils.parse_isotime(record.kept_at))
    except (ValueError, TypeError):
        return timeutils.utcnow()
