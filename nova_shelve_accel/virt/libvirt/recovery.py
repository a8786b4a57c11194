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
* an interrupted keep or release is published as a kept disk while its
  instance needs it;
* an unshelve that a restart interrupted on this host is rolled back when
  its guest had not started yet: the guest and what the unshelve acquired
  (allocations, port bindings, volume connections) are freed, the disk
  kept again and the instance shelved-offloaded again. Once the guest had
  started on the disk it is rolled forward instead, as Nova would have
  finished it: Nova may have deleted the snapshot already;
* a shelve-offload that a restart interrupted after the plugin moved the
  disk is sent again to this host, which finishes it on the kept disk; so
  is one that failed after the disk was kept (Nova left the instance
  shelved on this host, without a disk to start from);
* a record left in the directory of an instance that runs is removed;
* a disk quarantined after a failed spawn is kept again once its guest is
  gone, by the host that quarantined it; any host deletes it once no
  instance needs it and that host is down;
* a claim left in an instance directory by a failed unshelve is given back
  to the storage; a claim fenced off because its guest could not be
  removed is given back by its host once it has removed the guest;
* kept disks no instance can use any more, damaged ones included, are
  reclaimed; a kept disk whose instance lost its marker gets it back;
* the backing file of every directory that may hold an instance's data is
  kept young for the image cache, whoever made the directory.

Nothing is deleted without positive knowledge that no instance needs it:
the instance is deleted (or archived: in no database while the host that
kept the disk is known there), or shelved with another snapshot. A record
that cannot be read, an instance this cell does not know, a lookup that
fails: the directory stays, and is reported once.

Each decision is logged at INFO with the instance. An error on one item is
logged for that item and the pass goes on with the next.
"""

import os

from oslo_log import log as logging
from oslo_utils import timeutils

from nova.accelerator import cyborg
from nova.compute import power_state
from nova.compute import rpcapi as compute_rpcapi
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova.compute import vm_states
import nova.conf
from nova import context as nova_context
from nova import exception
from nova.image import glance
from nova.network import neutron
from nova import objects
import nova.privsep.path
from nova import servicegroup
from nova.virt import configdrive
from nova.virt import driver as virt_driver
from nova.volume import cinder

from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import faults
from nova_shelve_accel import notifications
from nova_shelve_accel import safe_files
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel.virt.libvirt import upload

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)


class Recovery:

    def __init__(self, driver, store):
        self._driver = driver
        self._store = store
        self._image_api = glance.API()
        # Paths already reported as kept for want of knowledge: once each.
        self._reported = set()

    def run(self, context, at_start, busy=frozenset()):
        """Resolve what is left; return the instances that own kept disks.

        ``busy`` are instances this host is keeping or unshelving right now.
        """
        try:
            kept, damaged, in_flight = self._store.inventory()
            abandoned = self._store.abandoned(in_flight, at_start)
            claimed = self._store.claimed_dirs()
        except OSError:
            LOG.exception('Cannot read the kept-disks directory %s; kept '
                          'disks are neither reused nor reclaimed until it '
                          'can be read.', self._store.path)
            return []
        local = objects.InstanceList.get_by_host(
            context, CONF.host, expected_attrs=['system_metadata'])
        instances = self._instances(context, {
            item.instance_uuid for item in kept + damaged + abandoned} |
            set(claimed))
        instances.update({inst.uuid: inst for inst in local})
        known = _Knowledge(context, instances)

        for item in abandoned:
            self._guarded(item.path, self._resolve_in_flight, context, item,
                          known)
        for instance in local:
            if instance.uuid not in busy:
                self._guarded(instance.uuid, self._resolve_local, context,
                              instance, at_start)
        for instance_uuid in claimed:
            if instance_uuid not in busy:
                self._guarded(self._store.instance_dir(instance_uuid),
                              self._resolve_claimed_dir, instance_uuid, known)
        owners = []
        for record in kept:
            if self._guarded(self._store.kept_dir(record.instance_uuid,
                                                  record.snapshot_id),
                             self._resolve_kept, record, known):
                owners.append(instances[record.instance_uuid])
        for item in damaged:
            self._guarded(item.path, self._resolve_damaged, item, known)
        return owners

    @staticmethod
    def _guarded(what, function, *args):
        try:
            return function(*args)
        except Exception:
            LOG.exception('Could not resolve %s; the next pass tries again.',
                          what)
            return None

    def _report_kept(self, path, instance_uuid, why):
        """Say once that ``path`` stays for want of positive knowledge."""
        if path in self._reported:
            return
        self._reported.add(path)
        LOG.warning('Leaving %s in place: %s. It may hold the only copy of '
                    'instance %s; "nova-shelve-accel kept list" shows it.',
                    path, why, instance_uuid, instance_uuid=instance_uuid)

    def _protect(self, directory, instance_uuid):
        """Keep young the base file of a directory that may hold data."""
        try:
            self._store.protect_backing_of(directory, instance_uuid,
                                           nova.privsep.path.utime)
        except Exception as e:
            LOG.warning('Cannot protect the backing file of %s: %s',
                        directory, e, instance_uuid=instance_uuid)

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

    # -- interrupted work --------------------------------------------------

    def _resolve_in_flight(self, context, item, known):
        if item.kind == storage.TRASH:
            LOG.info('Deleting %s, left by an interrupted reclaim.',
                     item.path, instance_uuid=item.instance_uuid)
            safe_files.remove_tree(item.path)
        elif item.kind == storage.STAGING:
            self._resolve_staging(item, known)
        else:
            self._resolve_quarantine(item, known)

    def _resolve_staging(self, item, known):
        record = _record_of(item.path, item.instance_uuid, item.snapshot_id)
        instance = known.instance(item.instance_uuid)
        if record is not None and _needs(instance, item.snapshot_id):
            if not self._store.finish_staging(item):
                raise accel_exc.VerificationFailed(
                    'cannot publish %s' % item.path)
            LOG.info('Finished an interrupted keep of the root disk: it is '
                     'kept in %s.', self._store.kept_dir(
                         item.instance_uuid, item.snapshot_id),
                     instance_uuid=item.instance_uuid)
            return
        why = known.why_not_needed(item.instance_uuid, item.snapshot_id,
                                   record and record.kept_by)
        if why:
            LOG.info('Deleting %s, left by an interrupted keep: %s.',
                     item.path, why, instance_uuid=item.instance_uuid)
            safe_files.remove_tree(item.path)
            return
        self._protect(item.path, item.instance_uuid)
        self._report_kept(item.path, item.instance_uuid, known.doubt(
            item.instance_uuid, record, 'its record cannot be read'))

    def _resolve_quarantine(self, item, known):
        """A disk whose failed guest could not be removed at the time.

        Only the host that quarantined it can remove that guest, then keep
        the disk again. Others delete it once no instance needs it and that
        host is down (its guest with it); a pending one meanwhile is
        uploaded by any host (see upload).
        """
        record = _record_of(item.path, item.instance_uuid, item.snapshot_id)
        instance = known.instance(item.instance_uuid)
        why = known.why_not_needed(item.instance_uuid, item.snapshot_id,
                                   record and record.kept_by)
        mine = item.host_tag == self._store.host_tag
        if mine and instance is not None:
            # Raises while the guest cannot be removed: it stays.
            self._driver.remove_guest(instance)
        if why and (mine or known.host_down(item.host_tag)):
            LOG.info('Deleting quarantined disk %s: %s.', item.path, why,
                     instance_uuid=item.instance_uuid)
            safe_files.remove_tree(item.path)
        elif mine and record is not None and _needs(instance,
                                                    item.snapshot_id):
            self._store.keep(item.instance_uuid, item.snapshot_id,
                             record.disk_format, source=item.path,
                             snapshot_pending=_pending_for(
                                 instance, item.snapshot_id))
            LOG.info('The guest of the failed spawn is gone; the quarantined '
                     'root disk is kept again for unshelve.',
                     instance_uuid=item.instance_uuid)
        else:
            self._protect(item.path, item.instance_uuid)
            if not why:
                self._report_kept(item.path, item.instance_uuid, known.doubt(
                    item.instance_uuid, record, 'its record cannot be read'))

    def _resolve_local(self, context, instance, at_start):
        """Finish what a restart interrupted for an instance of this host."""
        offloaded = instance.vm_state == vm_states.SHELVED_OFFLOADED
        if at_start and offloaded and (
                instance.task_state == task_states.SPAWNING):
            if self._store.unshelved(instance.uuid):
                self._roll_forward_unshelve(context, instance)
            else:
                self._roll_back_unshelve(context, instance)
        elif at_start and instance.vm_state == vm_states.SHELVED and (
                instance.task_state == task_states.SHELVING_OFFLOADING):
            self._offload_again(context, instance)
        elif (instance.vm_state == vm_states.SHELVED and
                instance.task_state is None and
                self._offload_failed_after_keep(instance)):
            # Nova reverted the task of an offload that failed once the disk
            # had left the instance directory (its storage client died, say):
            # started again, the shelved instance would find no disk.
            instance.task_state = task_states.SHELVING_OFFLOADING
            instance.save(expected_task_state=[None])
            self._offload_again(context, instance, 'The shelve-offload '
                                'failed after the root disk was kept')
        elif not offloaded and (
                self._store.claimed_record(instance.uuid) or
                self._store.unshelved(instance.uuid)):
            LOG.info('The instance runs on its once-kept root disk; removing '
                     'what its claim left in its directory.',
                     instance=instance)
            self._store.finish_claim(instance.uuid)

    def _offload_failed_after_keep(self, instance):
        """Whether the shelved instance's disk is kept, not in its dir."""
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        return bool(snapshot_id) and not safe_files.is_regular_file(
            os.path.join(self._store.instance_dir(instance.uuid),
                         storage.ROOT_DISK)) and (
            self._store.find(instance.uuid, snapshot_id) is not None)

    def _roll_back_unshelve(self, context, instance):
        """Undo an unshelve on a kept disk that a restart cut short.

        Nova would set the instance to ERROR; its data is whole on the
        storage, so it is put back as the failed spawn would have left it,
        and what the unshelve acquired is freed as Nova frees it when an
        unshelve fails (and the port bindings, which it does not).
        """
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        if not snapshot_id:
            return
        inst_dir = self._store.instance_dir(instance.uuid)
        claimed = self._store.claimed_record(instance.uuid)
        if safe_files.is_real_dir(inst_dir):
            if claimed is None and not shelved.kept_snapshot_id(instance):
                return      # a stock unshelve: Nova's business
            self._free_host_resources(context, instance)
            self._store.keep(
                instance.uuid, snapshot_id,
                claimed.disk_format if claimed else None,
                snapshot_pending=_pending_for(instance, snapshot_id))
        elif self._store.find(instance.uuid, snapshot_id) is None:
            return          # nothing of ours to go back to
        else:
            self._free_host_resources(context, instance)
        faults.cut_point('recover.rekept')
        self._driver.virtapi.reportclient.delete_allocation_for_instance(
            context, instance.uuid, force=True)
        _restore_scrubbed(instance, snapshot_id)
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

    def _free_host_resources(self, context, instance):
        """Free what an unshelve acquired on this host, as offload does.

        The guest and its host side (VIFs, volume connections), the port
        bindings and the volume attachments' connections.
        """
        network_info = instance.get_network_info()
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            context, instance.uuid)
        self._driver.destroy(
            context, instance, network_info,
            block_device_info=virt_driver.get_block_device_info(instance,
                                                                bdms),
            destroy_disks=False, destroy_secrets=False)
        ports = [vif['id'] for vif in network_info]
        if ports:
            neutron.API().unbind_ports(context, ports, detach=False)
        _terminate_volume_connections(context, self._driver, instance, bdms)

    def _roll_forward_unshelve(self, context, instance):
        """Finish an unshelve whose guest had started on the kept disk.

        The restart came after the spawn returned: Nova may have deleted
        the snapshot since, so rolling back would leave a shelved-offloaded
        instance whose image is gone. What Nova does after the spawn is done
        here: the snapshot is deleted, the scrubbed fields restored and the
        instance saved ACTIVE on this host.
        """
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        self._delete_snapshot(instance, snapshot_id)
        _restore_scrubbed(instance, snapshot_id)
        try:
            state = self._driver.get_info(instance, use_cache=False).state
        except exception.InstanceNotFound:
            state = power_state.NOSTATE
        instance.power_state = state
        instance.vm_state = vm_states.ACTIVE
        instance.task_state = None
        configdrive.update_instance(instance)
        instance.launched_at = timeutils.utcnow()
        compute_utils.remove_shelved_keys_from_system_metadata(instance)
        instance.system_metadata.pop(shelved.KEPT_DISK_KEY, None)
        instance.system_metadata.pop(shelved.PENDING_UPLOAD_KEY, None)
        instance.save(expected_task_state=[task_states.SPAWNING])
        self._store.finish_claim(instance.uuid)
        LOG.info('Finished an unshelve that a restart of this host '
                 'interrupted after its guest started on the kept root disk: '
                 'the instance is active here.', instance=instance)

    def _delete_snapshot(self, instance, snapshot_id):
        """Delete the snapshot as Nova does after an unshelve."""
        if not snapshot_id:
            return
        # No request behind a recovery: the service's own credentials.
        context = upload.service_context()
        if shelved.pending_snapshot_id(instance):
            upload.protect_snapshot(self._image_api, context, snapshot_id,
                                    False, instance)
        try:
            self._image_api.delete(context, snapshot_id)
        except (exception.ImageNotFound, exception.ImageNotAuthorized) as e:
            LOG.info('Snapshot %s of the unshelved instance: %s',
                     snapshot_id, e.format_message(), instance=instance)

    def _offload_again(self, context, instance,
                       why='A restart interrupted the shelve-offload after '
                           'the root disk was kept'):
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        if not snapshot_id or not (
                self._store.find(instance.uuid, snapshot_id) or
                self._store.claimed_record(instance.uuid)):
            return          # the plugin had not touched the disk yet
        LOG.info('%s; offloading again.', why, instance=instance)
        # As the API does: the accelerators the offload must free.
        accel_uuids = []
        if instance.flavor.extra_specs.get('accel:device_profile'):
            accel_uuids = cyborg.get_client(
                context).get_arq_uuids_for_instance(instance)
        compute_rpcapi.ComputeAPI().shelve_offload_instance(
            context, instance, clean_shutdown=False, accel_uuids=accel_uuids)

    # -- claims left in instance directories -------------------------------

    def _resolve_claimed_dir(self, instance_uuid, known):
        """A claim's record in the directory of an instance no host runs.

        Left by an unshelve whose spawn failed and whose disk could not be
        given back: the disk is given back to the storage. A directory
        fenced off (the failed guest could not be removed) waits for the
        host named in the fence, which removes the guest first.
        """
        instance = known.instance(instance_uuid)
        inst_dir = self._store.instance_dir(instance_uuid)
        record = _record_of(inst_dir, instance_uuid)
        if instance is not None and instance.host:
            return          # its host resolves it (_resolve_local)
        fenced_by = instance and instance.system_metadata.get(
            shelved.FENCED_KEY)
        if fenced_by and fenced_by != CONF.host:
            self._protect(inst_dir, instance_uuid)
            return
        if fenced_by:
            # Raises while the guest cannot be removed: it stays fenced.
            self._driver.remove_guest(instance)
        why = record and known.why_not_needed(instance_uuid,
                                              record.snapshot_id,
                                              record.kept_by)
        if why and (instance is None or instance.deleted):
            LOG.info('Deleting %s, the root disk a failed unshelve left in '
                     'the instance directory: %s.', inst_dir, why,
                     instance_uuid=instance_uuid)
            safe_files.remove_tree(inst_dir)
        elif record is not None and not why and _idle_elsewhere(
                instance_uuid):
            self._give_back(instance, record, fenced=bool(fenced_by))
        else:
            self._protect(inst_dir, instance_uuid)
            self._report_kept(inst_dir, instance_uuid, known.doubt(
                instance_uuid, record, 'its claim record cannot be read')
                if instance is None or record is None else
                'a failed unshelve left it there and the instance is %s'
                % instance.vm_state)

    def _give_back(self, instance, record, fenced):
        self._store.release(instance.uuid, record.snapshot_id)
        instance.system_metadata.pop(shelved.FENCED_KEY, None)
        instance.system_metadata[shelved.KEPT_DISK_KEY] = record.snapshot_id
        if fenced:
            # The fence made it ERROR; the guest is gone now, and the
            # instance is what the failed unshelve would have left.
            instance.vm_state = vm_states.SHELVED_OFFLOADED
        instance.save(expected_task_state=[None])
        LOG.info('Gave back the root disk that a failed unshelve left in the '
                 'instance directory: it is kept in %s for the next '
                 'unshelve.', self._store.kept_dir(instance.uuid,
                                                   record.snapshot_id),
                 instance=instance)

    # -- kept disks --------------------------------------------------------

    def _resolve_kept(self, record, known):
        """True if the kept disk of ``record`` is still needed."""
        why = known.why_not_needed(record.instance_uuid, record.snapshot_id,
                                   record.kept_by)
        instance = known.instance(record.instance_uuid)
        if why:
            if record.snapshot_pending:
                self._delete_queued_snapshot(record)
            if self._store.reclaim(record, why):
                _notify_reclaimed(instance, record.instance_uuid,
                                  record.snapshot_id, why,
                                  disk_bytes=record.allocated_bytes)
            return False
        self._store.protect_backing_file(record, nova.privsep.path.utime)
        if instance is None:
            self._report_kept(
                self._store.kept_dir(record.instance_uuid,
                                     record.snapshot_id),
                record.instance_uuid, known.doubt(record.instance_uuid,
                                                  record))
            return False
        if not record.snapshot_pending and _pending_for(
                instance, record.snapshot_id):
            self._clear_pending_mark(instance, record)
        if (instance.vm_state == vm_states.SHELVED_OFFLOADED and
                instance.task_state is None and
                shelved.kept_snapshot_id(instance) is None):
            self._mark_kept(instance, record)
        return True

    def _delete_queued_snapshot(self, record):
        """The image of a pending disk no instance needs: never to be filled.

        Nova deletes the snapshot of a shelved instance it deletes, but the
        plugin protected this one meanwhile; an image with data is left.
        """
        context = upload.service_context()
        try:
            image = self._image_api.get(context, record.snapshot_id)
        except exception.ImageNotFound:
            return
        if image.get('status') != 'queued':
            return
        upload.protect_snapshot(self._image_api, context, record.snapshot_id,
                                False)
        try:
            self._image_api.delete(context, record.snapshot_id)
        except exception.ImageNotFound:
            pass
        LOG.info('Deleted the queued snapshot %s of the pending kept disk '
                 'no instance needs.', record.snapshot_id,
                 instance_uuid=record.instance_uuid)

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

    def _resolve_damaged(self, item, known):
        why = known.why_not_needed(item.instance_uuid, item.snapshot_id)
        if why:
            reason = ('it was never usable (%s) and no instance needs it: '
                      '%s' % (item.problem, why))
            if self._store.reclaim_path(item.path, item.instance_uuid,
                                        item.snapshot_id, reason):
                _notify_reclaimed(known.instance(item.instance_uuid),
                                  item.instance_uuid, item.snapshot_id,
                                  reason)
        else:
            self._protect(item.path, item.instance_uuid)
            self._store.report_damaged(item)


class _Knowledge:
    """What the database of this host's cell positively says."""

    def __init__(self, context, instances):
        self._context = context
        self._instances = instances
        self._cell_hosts = {}
        self._services = None

    def instance(self, instance_uuid):
        """The instance, deleted or not; None when this cell has no row."""
        return self._instances.get(instance_uuid)

    def why_not_needed(self, instance_uuid, snapshot_id, kept_by=None):
        """Why no instance needs data kept at ``snapshot_id``, or None.

        None unless it is known: the instance is deleted or no longer
        shelved with that snapshot, or it is in no database of this cell
        while ``kept_by``, the host that kept the disk, is a compute host
        of this cell (the instance was deleted and archived). An instance
        this cell does not know otherwise may belong to another cell
        sharing the storage.
        """
        instance = self._instances.get(instance_uuid)
        if instance is not None:
            return shelved.reason_to_reclaim(instance, snapshot_id)
        if kept_by and self._is_cell_host(kept_by):
            return shelved.ARCHIVED % kept_by
        return None

    def doubt(self, instance_uuid, record, unreadable=None):
        """Why what is kept for ``instance_uuid`` may still be needed."""
        if record is None and unreadable:
            return unreadable
        if self._instances.get(instance_uuid) is None:
            return ('instance %s is not in the database of this cell, and '
                    'host %s that kept it is not a compute host of this '
                    'cell: the instance may be of another cell sharing the '
                    'storage' % (instance_uuid, record and record.kept_by))
        return 'the instance still needs it'

    def _is_cell_host(self, host):
        if host not in self._cell_hosts:
            try:
                objects.Service.get_by_compute_host(self._context, host)
                self._cell_hosts[host] = True
            except exception.ComputeHostNotFound:
                self._cell_hosts[host] = False
        return self._cell_hosts[host]

    def host_down(self, host_tag):
        """Whether the compute host named by ``host_tag`` is not running.

        Down, or no compute service of this cell bears that tag (deleted).
        """
        if self._services is None:
            services = objects.ServiceList.get_by_binary(
                self._context, 'nova-compute', include_disabled=True)
            self._services = {storage.host_tag(s.host): s for s in services}
        service = self._services.get(host_tag)
        return service is None or not servicegroup.API().service_is_up(
            service)


def _record_of(directory, instance_uuid, snapshot_id=None):
    """The record in ``directory`` if it is one of that instance's."""
    record = storage.read_record(directory)
    if record is None or record.instance_uuid != instance_uuid or (
            snapshot_id and record.snapshot_id != snapshot_id):
        return None
    return record


def _idle_elsewhere(instance_uuid):
    """Whether the instance, read again now, is on no host and idle.

    Read right before a claim left behind is given back: an unshelve that
    started since the pass began would own the directory.
    """
    try:
        instance = objects.Instance.get_by_uuid(
            nova_context.get_admin_context(), instance_uuid,
            expected_attrs=['system_metadata'])
    except exception.InstanceNotFound:
        return False
    return instance.host is None and instance.task_state is None and (
        instance.vm_state in (vm_states.SHELVED_OFFLOADED, vm_states.ERROR))


def _needs(instance, snapshot_id):
    """Whether the instance, as read, needs data kept at ``snapshot_id``."""
    return instance is not None and not shelved.reason_to_reclaim(
        instance, snapshot_id)


def _restore_scrubbed(instance, snapshot_id):
    """Undo what Nova's unshelve saved before the spawn.

    It points image_ref at the snapshot and blanks key_data (the
    instance's key pair keeps the key) until its final save.
    """
    base_image = instance.system_metadata.get('image_base_image_ref')
    if instance.image_ref == snapshot_id and base_image:
        instance.image_ref = base_image
    if not instance.key_data and instance.key_name:
        keypairs = instance.keypairs
        if len(keypairs) == 1:
            instance.key_data = keypairs[0].public_key


def _terminate_volume_connections(context, driver, instance, bdms):
    """As Nova's compute manager does when an instance leaves a host."""
    volume_api = cinder.API()
    connector = None
    for bdm in bdms:
        if not bdm.is_volume:
            continue
        if bdm.attachment_id:
            # A new attachment without a connector replaces the one this
            # host used, as Nova does.
            attachment_id = volume_api.attachment_create(
                context, bdm.volume_id, instance.uuid)['id']
            volume_api.attachment_delete(context, bdm.attachment_id)
            bdm.attachment_id = attachment_id
            bdm.save()
        else:
            if connector is None:
                connector = driver.get_volume_connector(instance)
            volume_api.terminate_connection(context, bdm.volume_id,
                                            connector)


def _notify_reclaimed(instance, instance_uuid, snapshot_id, reason,
                      disk_bytes=None):
    notifications.notify(
        'shelve_accel.disk.reclaimed', instance_uuid,
        project_id=instance.project_id if instance else None,
        snapshot_id=snapshot_id, reason=reason, disk_bytes=disk_bytes,
        by_command=False)


def _pending_for(instance, snapshot_id):
    """True while the instance's snapshot waits for this kept disk's data."""
    return (instance is not None and not instance.deleted and
            shelved.pending_snapshot_id(instance) == snapshot_id)
