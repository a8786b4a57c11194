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

"""Bring kept disks back to a known state after crashes and failures.

Runs when nova-compute starts (before Nova looks at the host's instances)
and in every image cache pass. Each half-finished state on the storage is
resolved from the instance's state in the database:

* trash left by an interrupted reclaim is deleted;
* an interrupted keep or release is published as a kept disk when the
  instance is still shelved with that snapshot, and deleted otherwise;
* an unshelve that a restart interrupted on this host is rolled back: the
  guest is removed, the disk kept again, the instance shelved-offloaded
  again with no allocation, ready for the next unshelve;
* a shelve-offload that a restart interrupted after the plugin moved the
  disk is sent again to this host, which finishes it on the kept disk;
* a record left in the directory of an instance that runs is removed;
* a disk quarantined after a failed spawn is kept again (or deleted) once
  its guest is gone;
* kept disks no instance can use any more, damaged ones included, are
  reclaimed; a kept disk whose instance lost its marker gets it back;
* a disk whose snapshot is still pending (``snapshot_upload =
  after_offload``) is the only copy of the instance: whatever state a crash
  left it in, it is kept again rather than deleted while the instance needs
  it, and the pending mark of an instance whose disk was uploaded is
  cleared.

Each decision is logged at INFO with the instance. An error on one item is
logged for that item and the pass goes on with the next.
"""

from oslo_log import log as logging

from nova.compute import rpcapi as compute_rpcapi
from nova.compute import task_states
from nova.compute import vm_states
import nova.conf
from nova import context as nova_context
from nova import exception
from nova import objects
import nova.privsep.path

from nova_shelve_accel import faults
from nova_shelve_accel import notifications
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel.virt import upload

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)


class Recovery:

    def __init__(self, driver, store, disk_format):
        self._driver = driver
        self._store = store
        # The format this host's image backend gives root disks.
        self._disk_format = disk_format

    def run(self, context, at_start, busy=frozenset()):
        """Resolve what is left; return the instances that own kept disks.

        ``busy`` are instances this host is keeping or unshelving right now.
        """
        try:
            kept, damaged, in_flight = self._store.inventory()
            abandoned = self._store.abandoned(in_flight, at_start)
        except OSError:
            LOG.exception('Cannot read the kept-disks directory %s; kept '
                          'disks are neither reused nor reclaimed until it '
                          'can be read.', self._store.path)
            return []
        local = objects.InstanceList.get_by_host(
            context, CONF.host, expected_attrs=['system_metadata'])
        instances = self._instances(context, {
            item.instance_uuid for item in kept + damaged + abandoned})
        instances.update({inst.uuid: inst for inst in local})

        for item in abandoned:
            self._guarded(item.path, self._resolve_in_flight, context, item,
                          instances.get(item.instance_uuid))
        for instance in local:
            if instance.uuid not in busy:
                self._guarded(instance.uuid, self._resolve_local, context,
                              instance, at_start)
        owners = []
        for record in kept:
            instance = instances.get(record.instance_uuid)
            if self._guarded(self._store.kept_dir(record.instance_uuid,
                                                  record.snapshot_id),
                             self._resolve_kept, instance, record):
                owners.append(instance)
        for item in damaged:
            self._guarded(item.path, self._resolve_damaged,
                          instances.get(item.instance_uuid), item)
        return owners

    @staticmethod
    def _guarded(what, function, *args):
        try:
            return function(*args)
        except Exception:
            LOG.exception('Could not resolve %s; the next pass tries again.',
                          what)
            return None

    # -- the database ------------------------------------------------------

    @staticmethod
    def _instances(context, uuids):
        """Instances by uuid, deleted ones included (their guests may not)."""
        if not uuids:
            return {}
        ctxt = nova_context.get_admin_context(read_deleted='yes')
        ctxt.request_id = context.request_id
        found = objects.InstanceList.get_by_filters(
            ctxt, {'uuid': sorted(uuids)},
            expected_attrs=['system_metadata'])
        return {inst.uuid: inst for inst in found}

    @staticmethod
    def _shelved_with(instance, snapshot_id):
        return (instance is not None and not instance.deleted and
                instance.vm_state in (vm_states.SHELVED,
                                      vm_states.SHELVED_OFFLOADED) and
                instance.system_metadata.get('shelved_image_id') ==
                snapshot_id)

    # -- interrupted work --------------------------------------------------

    def _resolve_in_flight(self, context, item, instance):
        if item.kind == storage.TRASH:
            LOG.info('Deleting %s, left by an interrupted reclaim.',
                     item.path, instance_uuid=item.instance_uuid)
            storage.remove_tree(item.path)
        elif item.kind == storage.STAGING:
            if (self._shelved_with(instance, item.snapshot_id) or
                    _pending_for(instance, item.snapshot_id)) and (
                    self._store.finish_staging(item)):
                LOG.info('Finished an interrupted keep of the root disk: it '
                         'is kept in %s.', self._store.kept_dir(
                             item.instance_uuid, item.snapshot_id),
                         instance_uuid=item.instance_uuid)
            else:
                LOG.info('Deleting %s, left by an interrupted keep of a '
                         'disk that instance %s no longer needs.',
                         item.path, item.instance_uuid,
                         instance_uuid=item.instance_uuid)
                storage.remove_tree(item.path)
        else:
            self._resolve_quarantine(item, instance)

    def _resolve_quarantine(self, item, instance):
        if instance is not None:
            # Raises while the guest cannot be removed: it stays.
            self._driver.remove_guest(instance)
        only_copy = _pending_for(instance, item.snapshot_id)
        if only_copy or instance is not None and instance.vm_state == (
                vm_states.SHELVED_OFFLOADED) and self._shelved_with(
                    instance, item.snapshot_id):
            self._store.keep(item.instance_uuid, item.snapshot_id,
                             source=item.path, snapshot_pending=only_copy)
            LOG.info('The guest of the failed spawn is gone; the quarantined '
                     'root disk is kept again for unshelve.',
                     instance_uuid=item.instance_uuid)
        else:
            LOG.info('Deleting quarantined disk %s: the instance no longer '
                     'needs it.', item.path,
                     instance_uuid=item.instance_uuid)
            storage.remove_tree(item.path)

    def _resolve_local(self, context, instance, at_start):
        """Finish what a restart interrupted for an instance of this host."""
        offloaded = instance.vm_state == vm_states.SHELVED_OFFLOADED
        if at_start and offloaded and (
                instance.task_state == task_states.SPAWNING):
            self._roll_back_unshelve(context, instance)
        elif at_start and instance.vm_state == vm_states.SHELVED and (
                instance.task_state == task_states.SHELVING_OFFLOADING):
            self._offload_again(context, instance)
        elif not offloaded and self._store.claimed_record(instance.uuid):
            LOG.info('The instance runs on its once-kept root disk; removing '
                     'the %s left in its directory.', storage.RECORD_NAME,
                     instance=instance)
            self._store.finish_claim(instance.uuid)

    def _roll_back_unshelve(self, context, instance):
        """Undo an unshelve on a kept disk that a restart cut short.

        Nova would set the instance to ERROR; its data is whole on the
        storage, so it is put back as the failed spawn would have left it.
        """
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        if not snapshot_id:
            return
        inst_dir = self._store.instance_dir(instance.uuid)
        claimed = self._store.claimed_record(instance.uuid) is not None
        if storage.is_real_dir(inst_dir):
            if not claimed and not shelved.kept_snapshot_id(instance):
                return      # a stock unshelve: Nova's business
            self._driver.remove_guest(instance)
            self._store.keep(
                instance.uuid, snapshot_id,
                snapshot_pending=_pending_for(instance, snapshot_id))
        elif self._store.find(instance.uuid, snapshot_id) is None:
            return          # nothing of ours to go back to
        faults.cut_point('recover.rekept')
        self._driver.virtapi.reportclient.delete_allocation_for_instance(
            context, instance.uuid, force=True)
        base_image = instance.system_metadata.get('image_base_image_ref')
        if instance.image_ref == snapshot_id and base_image:
            instance.image_ref = base_image
        instance.host = None
        instance.node = None
        instance.compute_id = None
        instance.launched_on = None
        instance.task_state = None
        instance.system_metadata[shelved.KEPT_DISK_KEY] = snapshot_id
        instance.save(expected_task_state=[task_states.SPAWNING])
        LOG.info('Rolled back an unshelve that a restart of this host '
                 'interrupted: the root disk is kept in %s and the instance '
                 'is shelved-offloaded again; unshelve it again.',
                 self._store.kept_dir(instance.uuid, snapshot_id),
                 instance=instance)

    def _offload_again(self, context, instance):
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        if not snapshot_id or not (
                self._store.find(instance.uuid, snapshot_id) or
                self._store.claimed_record(instance.uuid)):
            return          # the plugin had not touched the disk yet
        LOG.info('A restart interrupted the shelve-offload after the root '
                 'disk was kept; offloading again.', instance=instance)
        compute_rpcapi.ComputeAPI().shelve_offload_instance(
            context, instance, clean_shutdown=False, accel_uuids=[])

    # -- kept disks --------------------------------------------------------

    def _resolve_kept(self, instance, record):
        """True if ``instance`` still owns the kept disk of ``record``."""
        reason = shelved.reason_to_reclaim(instance, record.snapshot_id)
        if reason:
            if self._store.reclaim(record, reason):
                _notify_reclaimed(instance, record.instance_uuid,
                                  record.snapshot_id, reason,
                                  disk_bytes=record.allocated_bytes)
            return False
        self._store.protect_backing_file(record, nova.privsep.path.utime)
        if not record.snapshot_pending and _pending_for(
                instance, record.snapshot_id):
            self._clear_pending_mark(instance, record)
        if (instance.vm_state == vm_states.SHELVED_OFFLOADED and
                instance.task_state is None and
                shelved.kept_snapshot_id(instance) is None):
            self._mark_kept(instance, record)
        return True

    def _mark_kept(self, instance, record):
        # Without the marker the scheduler would not send the unshelve to
        # the storage group, and the disk would hold space for nothing.
        instance.system_metadata[shelved.KEPT_DISK_KEY] = record.snapshot_id
        try:
            instance.save(expected_task_state=[None])
        except (exception.UnexpectedTaskStateError,
                exception.InstanceNotFound):
            return
        LOG.info('The root disk kept in %s had lost its marker (a restart '
                 'during shelve-offload); marked it for unshelve.',
                 self._store.kept_dir(record.instance_uuid,
                                      record.snapshot_id),
                 instance=instance)

    @staticmethod
    def _clear_pending_mark(instance, record):
        # The upload finished, but a restart came before the mark was
        # cleared: the scheduler may fall back to the snapshot again.
        if upload.clear_pending_mark(instance, record.snapshot_id):
            LOG.info('Snapshot %s was uploaded from the kept disk before a '
                     'restart; cleared its pending mark.',
                     record.snapshot_id, instance=instance)

    def _resolve_damaged(self, instance, item):
        if shelved.reason_to_reclaim(instance, item.snapshot_id):
            reason = ('it was never usable (%s) and the instance no longer '
                      'needs it' % item.problem)
            if self._store.reclaim_path(item.path, item.instance_uuid,
                                        item.snapshot_id, reason):
                _notify_reclaimed(instance, item.instance_uuid,
                                  item.snapshot_id, reason)
        else:
            self._store.report_damaged(item)


def _notify_reclaimed(instance, instance_uuid, snapshot_id, reason,
                      disk_bytes=None):
    notifications.notify(
        'shelve_accel.disk.reclaimed', instance_uuid,
        project_id=instance.project_id if instance else None,
        snapshot_id=snapshot_id, reason=reason, disk_bytes=disk_bytes)


def _pending_for(instance, snapshot_id):
    """True while the instance's snapshot waits for this kept disk's data."""
    return (instance is not None and not instance.deleted and
            shelved.pending_snapshot_id(instance) == snapshot_id)
