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

"""The libvirt driver with partial offload.

Load it with ``compute_driver =
nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver``. It behaves as
Nova's ``LibvirtDriver`` except at these points:

* shelve-offload of an image-backed instance keeps the root disk on the
  instance storage instead of deleting it (``destroy``);
* with ``snapshot_upload = after_offload``, shelve skips the snapshot of an
  instance whose disk will be kept (``snapshot``) and the kept disk is
  uploaded into the snapshot image after the offload (see ``upload``);
* unshelve on a host whose storage holds that disk claims it and spawns on it
  without downloading the Glance snapshot (``spawn``);
* at start-up and in the image cache pass, work that a crash interrupted is
  resolved, the backing files of kept disks are protected and the kept disks
  no instance can use any more are reclaimed (``init_host``,
  ``manage_image_cache``, see ``recovery``);
* the space kept disks use is reserved DISK_GB in Placement
  (``update_provider_tree``).

Wherever a kept disk cannot be used the stock code path runs unchanged.
"""

import dataclasses
import inspect
import os
import time
import types

import os_resource_classes as orc
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova.compute import vm_states
from nova import context as nova_context
from nova import exception
from nova import objects
from nova.virt import driver as virt_driver
from nova.virt import hardware
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import utils as libvirt_utils

from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import faults
from nova_shelve_accel import notifications
from nova_shelve_accel import safe_files
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import storage_groups
from nova_shelve_accel.virt.libvirt import eviction
from nova_shelve_accel.virt.libvirt import recovery
from nova_shelve_accel.virt.libvirt import upload

CONF = accel_conf.CONF
LOG = logging.getLogger(__name__)

# Set to 1 in nova-compute's environment (never in nova.conf), the driver
# is loaded but every Nova method it overrides is Nova's own again: the
# benchmark's 'inert' mode, which tells the cost of loading the plugin from
# the cost of its hooks. Kept disks are then neither kept, claimed,
# uploaded nor reclaimed.
INERT_ENV = 'NOVA_SHELVE_ACCEL_INERT'

# Nova's images_type values that store the root disk as a file, and the
# format of that file.
_FILE_FORMATS = {'qcow2': 'qcow2', 'raw': 'raw', 'flat': 'raw'}

# How many times Nova's image cache pass lists the storage before a disk
# that keeps moving away fails it.
IMAGE_CACHE_LISTINGS = 3

# Task states of an instance whose destroy is a shelve-offload: the API
# offloads a volume-backed instance straight from SHELVING.
_OFFLOADING = (task_states.SHELVING_OFFLOADING, task_states.SHELVING)


def root_disk_format():
    """The file format this host's image backend gives root disks, or None.

    None for backends that do not keep the root disk in a file of the
    instance directory (rbd, lvm, ploop).
    """
    images_type = CONF.libvirt.images_type
    if images_type == 'default':
        images_type = 'qcow2' if CONF.use_cow_images else 'flat'
    return _FILE_FORMATS.get(images_type)


@dataclasses.dataclass(frozen=True)
class _Offload:
    """What ``destroy`` decided for the ``delete_instance_files`` it causes.

    Nova calls ``delete_instance_files`` several frames below ``destroy``
    (destroy -> cleanup -> _cleanup), without the request's context and
    after the guest is gone, but before the domain is undefined.
    """

    context: object
    # Keep the root disk; otherwise it is deleted as in stock Nova (after
    # an upload, when shelve skipped the snapshot).
    keep: bool
    # The root disk's driver type in the instance's libvirt domain.
    domain_format: str | None


def _this_hosts_store():
    """The kept disks of the storage this host was started with."""
    return storage.KeptDiskStore(
        CONF.instances_path, CONF.shelve_accel.kept_disks_subdirectory,
        CONF.image_cache.subdirectory_name, CONF.host)


def _refuse_inert_over_kept_disks():
    """Refuse to go inert while this host's storage holds kept disks.

    An inert host runs Nova's own image cache pass, which counts no kept
    disk as using its backing file and deletes that file once it looks
    unused: the kept disk, possibly its instance's only copy, would lose
    its data.
    """
    store = _this_hosts_store()
    kept, damaged, in_flight = store.inventory()
    # A disk being reclaimed is no one's any more.
    held = len(kept) + len(damaged) + len(
        [item for item in in_flight if item.kind != storage.TRASH])
    if held:
        raise exception.InvalidConfiguration(
            '%s=1 makes the plugin\'s driver inert, but %s holds %d kept '
            'disk(s) or disk(s) in flight: an inert host\'s image cache '
            'pass would delete the base files they are backed by. Remove '
            '%s from nova-compute\'s environment, or unshelve or delete '
            'their instances first (nova-shelve-accel kept list).'
            % (INERT_ENV, store.path, held, INERT_ENV))


class PartialOffloadLibvirtDriver(libvirt_driver.LibvirtDriver):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        if os.environ.get(INERT_ENV) == '1':
            _refuse_inert_over_kept_disks()
            self._become_inert()
            return
        if CONF.shelve_accel.kept_disks_subdirectory == (
                CONF.image_cache.subdirectory_name):
            raise exception.InvalidConfiguration(
                '[shelve_accel] kept_disks_subdirectory and [image_cache] '
                'subdirectory_name are both %r: kept disks and the image '
                'cache need directories of their own; set another '
                'kept_disks_subdirectory on every host of the storage.'
                % CONF.image_cache.subdirectory_name)
        # The storage this host sees is the one it was started with.
        self._kept_disks = _this_hosts_store()
        self._recovery = recovery.Recovery(self, self._kept_disks)
        self._uploads = upload.SnapshotUploader(
            self._kept_disks, spawns_in_progress=self.spawns_in_progress)
        self._evictor = eviction.Evictor(self._kept_disks)
        # The shelve-offloads in progress: instance uuid -> _Offload.
        self._offloads = {}
        # Instances being spawned on a claimed kept disk.
        self._reusing = set()
        # What the last look at the hosts sharing the storage found wrong.
        self._sharing_reported = None
        # Instances being spawned here, on a kept disk or not.
        self._spawning = set()
        # Instances whose unshelve on a kept disk returned from spawn, until
        # Nova asks for their power state (after deleting the snapshot):
        # the fault matrix's cut point between those two steps.
        self._spawned = set()

    def _become_inert(self):
        """Bind Nova's own method in place of every one overridden here."""
        for name in vars(PartialOffloadLibvirtDriver):
            nova_own = inspect.getattr_static(libvirt_driver.LibvirtDriver,
                                              name, None)
            if name != '__init__' and inspect.isfunction(nova_own):
                setattr(self, name, types.MethodType(nova_own, self))
        LOG.warning('%s=1: the plugin\'s driver is loaded but inert; this '
                    'host runs Nova\'s LibvirtDriver code only and keeps, '
                    'reuses, uploads and reclaims no kept disk, and its '
                    'image cache pass no longer protects the backing files '
                    'of kept disks on its storage. For benchmarks only: '
                    'remove it from nova-compute\'s environment.',
                    INERT_ENV)

    def init_host(self, host):
        super().init_host(host)
        # Before Nova looks at this host's instances: an unshelve that a
        # crash interrupted is rolled back here rather than set to ERROR.
        self._recovery.run(nova_context.get_admin_context(), at_start=True)
        self._leave_probe()
        # Uploads this host ran when it stopped, and any a dead host left.
        self._uploads.clean_scratch(at_start=True)
        if (CONF.shelve_accel.partial_offload and
                CONF.shelve_accel.snapshot_upload == 'after_offload'):
            upload.check_service_user()
        self._uploads.scan(at_start=True)

    def cleanup_host(self, host):
        self._uploads.stop()
        super().cleanup_host(host)

    # -- shelve ------------------------------------------------------------

    def snapshot(self, context, instance, image_id, update_task_state):
        if self._skips_snapshot(context, instance, image_id):
            # Saved by the manager with the shelve: from here on the
            # scheduler keeps the instance in its storage group.
            instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = image_id
            faults.cut_point('upload.snapshot_skipped')
            LOG.info('Shelve skips the snapshot: the root disk will be kept '
                     'and uploaded into image %s after the offload '
                     '([shelve_accel] snapshot_upload = after_offload).',
                     image_id, instance=instance)
            return
        instance.system_metadata.pop(shelved.PENDING_UPLOAD_KEY, None)
        super().snapshot(context, instance, image_id, update_task_state)

    def _skips_snapshot(self, context, instance, image_id):
        """Whether this is a shelve whose snapshot the kept disk replaces."""
        if (CONF.shelve_accel.snapshot_upload != 'after_offload' or
                instance.task_state != task_states.SHELVING):
            return False
        if CONF.shelved_offload_time != 0:
            LOG.debug('Taking the snapshot at shelve: the instance is not '
                      'offloaded at once ([DEFAULT] shelved_offload_time = '
                      '%d).', CONF.shelved_offload_time, instance=instance)
            return False
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            context, instance.uuid)
        reason = self._reason_not_to_keep(
            instance, virt_driver.get_block_device_info(instance, bdms),
            image_id)
        if not reason:
            reason = self._no_peer_to_resume_upload(context)
        if not reason:
            # The checks the offload's keep will make: a disk it would refuse
            # would have to be uploaded before the offload deletes it.
            try:
                self._kept_disks.check_keepable(
                    instance.uuid, image_id,
                    domain_format=self._domain_disk_format(instance))
            except (accel_exc.KeepRefused, OSError,
                    processutils.ProcessExecutionError) as e:
                reason = str(e)
        if reason:
            LOG.info('Taking the snapshot at shelve: the root disk will not '
                     'be kept (%s).', reason, instance=instance)
            return False
        return True

    @staticmethod
    def _no_peer_to_resume_upload(context):
        """Why no other host could finish this host's uploads, or None.

        Skipping the snapshot makes the kept disk the only copy until the
        upload: were this host to stop for good, another plugin host of its
        storage group must resume it.
        """
        try:
            _groups, peers = storage_groups.this_host.get(context, CONF.host)
        except Exception as e:
            return 'the storage groups of this host cannot be read: %s' % e
        if not peers:
            return ('no other host shares its storage group, to finish the '
                    'upload should this host stop ([shelve_accel] '
                    'snapshot_upload = after_offload needs a storage group '
                    'of two hosts or more)')
        return None

    def _domain_disk_format(self, instance):
        """The root disk's driver type in the instance's domain, or None.

        The format QEMU opened the disk with; None where the domain cannot
        be read (disk.info alone then says it).
        """
        try:
            path, disk_format = libvirt_utils.find_disk(
                self._host.get_guest(instance))
        except Exception as e:
            LOG.debug('Cannot read the root disk of the domain: %s', e,
                      instance=instance)
            return None
        if path != os.path.join(self._kept_disks.instance_dir(instance.uuid),
                                storage.ROOT_DISK):
            return None
        return disk_format

    # -- shelve-offload ----------------------------------------------------

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        if destroy_disks and instance.task_state in _OFFLOADING:
            self._offloads[instance.uuid] = _Offload(
                context, self._decide_keep(context, instance,
                                           block_device_info),
                self._domain_disk_format(instance))
        try:
            super().destroy(context, instance, network_info,
                            block_device_info=block_device_info,
                            destroy_disks=destroy_disks,
                            destroy_secrets=destroy_secrets)
        finally:
            self._offloads.pop(instance.uuid, None)

    def _decide_keep(self, context, instance, block_device_info):
        """Whether the offload under way keeps the root disk."""
        if self._kept_for_this_shelve(instance):
            # An offload run again after a crash: it finishes on the disk
            # kept the first time, whatever keeping would decide now.
            LOG.info('The root disk is kept already for this shelve; '
                     'finishing the offload on it.', instance=instance)
            return True
        reason = self._reason_not_to_keep(instance, block_device_info)
        if reason:
            LOG.info('Not keeping the root disk at shelve-offload: %s.%s',
                     reason, '' if self._snapshot_skipped(instance) else
                     ' Unshelve will download the snapshot.',
                     instance=instance)
            self._notify_not_kept(context, instance, reason)
            return False
        return True

    def _kept_for_this_shelve(self, instance):
        snapshot_id = instance.system_metadata.get('shelved_image_id')
        if instance.host != CONF.host or not snapshot_id:
            return False
        try:
            return self._kept_disks.find(instance.uuid,
                                         snapshot_id) is not None
        except OSError:
            return False

    @staticmethod
    def _snapshot_skipped(instance):
        """Whether the disk of this host's shelve is its only copy."""
        return instance.host == CONF.host and bool(
            shelved.pending_snapshot_id(instance))

    def _reason_not_to_keep(self, instance, block_device_info,
                            snapshot_id=None):
        """Why the root disk must not be kept, or None if it may be.

        ``snapshot_id`` is that of the shelve under way, by default the one
        in the instance's system metadata.
        """
        snapshot_id = snapshot_id or instance.system_metadata.get(
            'shelved_image_id')
        if not CONF.shelve_accel.partial_offload:
            return 'partial offload is disabled ([shelve_accel] ' \
                   'partial_offload = False)'
        # The task state alone does not say whose disk this is: a host
        # cleaning up an instance evacuated away from it sees the task state
        # of a shelve running on the instance's new host.
        if instance.host != CONF.host:
            return ('the instance belongs to host %s, not to this host %s'
                    % (instance.host, CONF.host))
        if self._is_booted_from_volume(block_device_info):
            return 'the instance is volume-backed'
        if root_disk_format() is None:
            return ('[libvirt] images_type = %s does not store the root disk '
                    'as a file' % CONF.libvirt.images_type)
        if not snapshot_id:
            return 'shelve took no snapshot of the instance'
        if instance.kernel_id or instance.ramdisk_id:
            return 'the instance boots a separate kernel and ramdisk'
        if virt_driver.block_device_info_get_encrypted_disks(
                block_device_info):
            return 'the instance has encrypted ephemeral disks'
        try:
            vtpm = hardware.get_vtpm_constraint(instance.flavor,
                                                instance.image_meta)
        except exception.NovaException as e:
            return 'its vTPM settings are invalid (%s)' % e
        if vtpm:
            return 'the instance has a vTPM whose state is not kept'
        free = self._kept_disks.free_percent()
        floor = CONF.shelve_accel.free_space_floor_percent
        if free < floor:
            return ('the storage %s has %.1f%% free, below [shelve_accel] '
                    'free_space_floor_percent = %d'
                    % (self._kept_disks.instances_path, free, floor))
        return None

    @staticmethod
    def _notify_not_kept(context, instance, reason):
        notifications.notify(
            'shelve_accel.disk.not_kept', instance.uuid, context=context,
            project_id=instance.project_id,
            snapshot_id=instance.system_metadata.get('shelved_image_id'),
            reason=reason)

    def delete_instance_files(self, instance):
        offload = self._offloads.get(instance.uuid)
        if offload is not None:
            kept = offload.keep and self._keep_root_disk(
                offload.context, instance, offload.domain_format)
            if not kept and self._snapshot_skipped(instance):
                self._upload_before_delete(offload.context, instance,
                                           offload.domain_format)
        return super().delete_instance_files(instance)

    def _keep_root_disk(self, context, instance, domain_format):
        """Keep the root disk; False if it stays in the instance dir."""
        snapshot_id = instance.system_metadata['shelved_image_id']
        pending = self._snapshot_skipped(instance)
        if pending:
            self._protect_pending_snapshot(context, instance, snapshot_id)
        try:
            record = self._kept_disks.keep(instance.uuid, snapshot_id,
                                           snapshot_pending=pending,
                                           domain_format=domain_format)
        except (accel_exc.KeepRefused, OSError,
                processutils.ProcessExecutionError) as e:
            if pending:
                LOG.warning('Cannot keep the root disk at shelve-offload: '
                            '%s. Shelve skipped the snapshot: the disk is '
                            'uploaded into it before it is deleted.', e,
                            instance=instance)
            else:
                # The snapshot holds the data: deleting the disk as stock
                # Nova does loses nothing.
                LOG.warning('Not keeping the root disk at shelve-offload: '
                            '%s. Unshelve will download snapshot %s.', e,
                            snapshot_id, instance=instance)
            self._notify_not_kept(context, instance, str(e))
            return False
        faults.cut_point('keep.moved_in')
        instance.system_metadata[shelved.KEPT_DISK_KEY] = snapshot_id
        path = self._kept_disks.kept_dir(instance.uuid, snapshot_id)
        LOG.info('Kept the root disk in %s for unshelve.', path,
                 instance=instance)
        notifications.notify(
            'shelve_accel.disk.kept', instance.uuid, context=context,
            project_id=instance.project_id, snapshot_id=snapshot_id,
            path=path, disk_bytes=record.allocated_bytes,
            disk_format=record.disk_format,
            snapshot_pending=record.snapshot_pending)
        if record.snapshot_pending:
            self._uploads.schedule(
                context, instance.uuid, snapshot_id,
                delay=CONF.shelve_accel.snapshot_upload_delay)
        return True

    def _protect_pending_snapshot(self, context, instance, snapshot_id):
        """Keep the queued image of a skipped snapshot from being deleted.

        Until the upload it is the only image of the data: Glance refuses
        to delete a protected image. Done at the offload, once the shelve
        recorded the image in the instance (a crash before leaves an image
        nothing names, which must stay deletable, as in stock Nova).
        """
        if not upload.protect_snapshot(self._image_api, context,
                                       snapshot_id, True, instance):
            LOG.warning('Snapshot %s could not be protected: if it is '
                        'deleted before the kept disk is uploaded into it, '
                        '"nova-shelve-accel kept restore %s" makes another '
                        'from the disk.', snapshot_id, instance.uuid,
                        instance=instance)

    def _upload_before_delete(self, context, instance, domain_format):
        """Upload the skipped snapshot from the instance dir, or raise.

        Raising fails the offload with the disk still in place: shelve
        skipped the snapshot, so the disk is the only copy of the data.
        """
        snapshot_id = instance.system_metadata['shelved_image_id']
        disk = os.path.join(self._kept_disks.instance_dir(instance.uuid),
                            storage.ROOT_DISK)
        if not safe_files.is_regular_file(disk):
            raise exception.NovaException(
                'The root disk %s is not there to upload into snapshot %s; '
                'nothing was deleted. If a staging directory of this '
                'instance is in %s, the recovery pass keeps it.'
                % (disk, snapshot_id, self._kept_disks.path))
        try:
            disk_format = self._kept_disks.recorded_format(
                instance.uuid, domain_format=domain_format)
        except accel_exc.KeepRefused as e:
            raise exception.NovaException(
                'Cannot upload the root disk %s into snapshot %s: %s. '
                'Nothing was deleted: the disk is the only copy of the '
                'instance. Record its format in disk.info, then shelve-'
                'offload the instance again.' % (disk, snapshot_id, e))
        LOG.warning('Shelve skipped the snapshot but the root disk cannot '
                    'be kept: uploading %s (%s) into snapshot %s before the '
                    'offload deletes it.', disk, disk_format, snapshot_id,
                    instance=instance)
        image = self._image_api.get(context, snapshot_id)
        self._uploads.upload(context, instance, image, disk, disk_format,
                             check=lambda: None)
        instance.system_metadata.pop(shelved.PENDING_UPLOAD_KEY, None)

    # -- unshelve ----------------------------------------------------------

    def spawns_in_progress(self):
        """Whether this host is starting a guest (background work yields)."""
        return bool(self._spawning)

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        self._spawning.add(instance.uuid)
        try:
            self._spawn(context, instance, image_meta, injected_files,
                        admin_password, allocations, network_info=network_info,
                        block_device_info=block_device_info,
                        power_on=power_on, accel_info=accel_info)
        finally:
            self._spawning.discard(instance.uuid)

    def _spawn(self, context, instance, image_meta, injected_files,
               admin_password, allocations, network_info=None,
               block_device_info=None, power_on=True, accel_info=None):
        args = (context, instance, image_meta, injected_files,
                admin_password, allocations)
        kwargs = dict(network_info=network_info,
                      block_device_info=block_device_info,
                      power_on=power_on, accel_info=accel_info)
        snapshot_id = self._unshelving_snapshot(instance)
        if not snapshot_id:
            super().spawn(*args, **kwargs)
            self._forget_kept_disk(instance)
            return
        try:
            self._claim_kept_disk(instance, snapshot_id)
        except accel_exc.NotReused as e:
            self._spawn_from_snapshot(context, instance, snapshot_id, str(e),
                                      args, kwargs)
            return

        started = time.monotonic()
        self._reusing.add(instance.uuid)
        try:
            super().spawn(*args, **kwargs)
            faults.cut_point('spawn.guest_started')
        except Exception:
            with excutils.save_and_reraise_exception():
                self._release_kept_disk(instance, snapshot_id)
        finally:
            self._reusing.discard(instance.uuid)
        # The guest runs on the disk: from here on the unshelve succeeds,
        # and a restart is to finish it, not undo it (see recovery).
        try:
            self._kept_disks.mark_unshelved(instance.uuid)
        except OSError as e:
            LOG.warning('Could not mark the claim in the instance directory '
                        'as unshelved: %s. The image cache pass removes its '
                        'record once the instance is active.', e,
                        instance=instance)
        faults.cut_point('spawn.finished')
        self._spawned.add(instance.uuid)
        if shelved.pending_snapshot_id(instance):
            # Nova deletes the queued snapshot once spawn returns: it is
            # needed no more, and must not stay protected.
            upload.protect_snapshot(self._image_api, context, snapshot_id,
                                    False, instance)
        self._forget_kept_disk(instance)
        LOG.info('Unshelved on the kept root disk; no image data was '
                 'downloaded.', instance=instance)
        notifications.notify(
            'shelve_accel.disk.reused', instance.uuid, context=context,
            project_id=instance.project_id, snapshot_id=snapshot_id,
            duration_s=round(time.monotonic() - started, 3))

    def _spawn_from_snapshot(self, context, instance, snapshot_id, why,
                             args, kwargs):
        """The unshelve as stock Nova's: the kept disk cannot serve it."""
        self._refuse_claim_left_behind(instance)
        if shelved.pending_snapshot_id(instance):
            self._refuse_queued_snapshot(context, instance, snapshot_id)
        if (shelved.kept_snapshot_id(instance) or
                shelved.pending_snapshot_id(instance)):
            notifications.notify(
                'shelve_accel.unshelve.fallback', instance.uuid,
                context=context, project_id=instance.project_id,
                snapshot_id=snapshot_id, reason=why)
        super().spawn(*args, **kwargs)
        self._forget_kept_disk(instance)

    def get_info(self, instance, use_cache=True):
        if instance.uuid in self._spawned:
            # After spawn, Nova deletes the snapshot, then reads the power
            # state here, then saves the instance ACTIVE.
            self._spawned.discard(instance.uuid)
            faults.cut_point('spawn.snapshot_deleted')
        return super().get_info(instance, use_cache=use_cache)

    def _refuse_claim_left_behind(self, instance):
        """Keep a stock spawn off a claim that a failed unshelve left.

        Nova's image backend would start the guest on the disk it finds in
        the instance directory, while the recovery pass may move it, or, if
        the instance was fenced, its failed guest still run on it.
        """
        try:
            left = self._kept_disks.claimed_record(instance.uuid)
        except OSError:
            left = None
        if left is None:
            return
        raise exception.InstanceUnacceptable(
            instance_id=instance.uuid,
            reason='a failed unshelve left its kept root disk in %s; the '
                   'image cache pass of a host of its storage gives it back '
                   'to the storage. Unshelve again once that has run.'
                   % self._kept_disks.instance_dir(instance.uuid))

    @staticmethod
    def _forget_kept_disk(instance):
        instance.system_metadata.pop(shelved.KEPT_DISK_KEY, None)
        instance.system_metadata.pop(shelved.PENDING_UPLOAD_KEY, None)

    def _refuse_queued_snapshot(self, context, instance, snapshot_id):
        """Fail the unshelve rather than spawn from a snapshot with no data.

        The upload may have finished just before this unshelve began, with
        no chance to clear the mark: then the snapshot is good to use.
        """
        if self._image_api.get(context, snapshot_id).get('status') == (
                'active'):
            return
        raise exception.ImageUnacceptable(
            image_id=snapshot_id,
            reason='the snapshot is still being uploaded from the kept root '
                   'disk, which cannot be used on this host (see the log '
                   'line above); the data is safe in %s. Unshelve again '
                   'once the image is active.' % self._kept_disks.kept_dir(
                       instance.uuid, snapshot_id))

    @staticmethod
    def _unshelving_snapshot(instance):
        # The marker is what the scheduler routes by; a disk kept by a
        # shelve whose marker a crash lost is still this shelve's disk.
        if instance.vm_state != vm_states.SHELVED_OFFLOADED:
            return None
        return instance.system_metadata.get('shelved_image_id')

    def _claim_kept_disk(self, instance, snapshot_id):
        """Take the kept disk of this shelve if it is here and sound.

        Returns its record once it is claimed, moved into the instance
        directory; raises NotReused, saying why, when it was not.
        """
        try:
            record = self._kept_disks.find(instance.uuid, snapshot_id)
        except OSError as e:
            LOG.warning('Cannot look for a kept root disk in %s: %s. '
                        'Unshelving from snapshot %s.', self._kept_disks.path,
                        e, snapshot_id, instance=instance)
            raise accel_exc.NotReused('cannot read %s: %s' % (
                self._kept_disks.path, e))
        if record is None:
            if shelved.kept_snapshot_id(instance):
                LOG.info('No kept root disk for snapshot %s on storage %s; '
                         'unshelving from the snapshot.', snapshot_id,
                         self._kept_disks.path, instance=instance)
            raise accel_exc.NotReused(
                'no kept root disk for snapshot %s in %s' % (
                    snapshot_id, self._kept_disks.path))
        host_format = root_disk_format()
        if host_format != record.disk_format:
            LOG.warning('Not reusing the kept root disk in %s: it is a %s '
                        'disk and this host ([libvirt] images_type = %s) '
                        'stores root disks as %s. Unshelving from snapshot '
                        '%s; the kept disk is reclaimed once the instance '
                        'runs.', self._kept_disks.kept_dir(instance.uuid,
                                                           snapshot_id),
                        record.disk_format, CONF.libvirt.images_type,
                        host_format or 'no file', snapshot_id,
                        instance=instance)
            raise accel_exc.NotReused(
                'the kept disk is %s and this host stores root disks as %s'
                % (record.disk_format, host_format or 'no file'))
        try:
            self._kept_disks.verify(record, instance.uuid, snapshot_id)
            faults.cut_point('claim.verified')
            claimed = self._kept_disks.claim(instance.uuid, snapshot_id)
        except (accel_exc.VerificationFailed, OSError,
                processutils.ProcessExecutionError) as e:
            LOG.warning('Not reusing the kept root disk: %s. Unshelving from '
                        'snapshot %s instead; the kept disk is reclaimed '
                        'once the instance runs.', e, snapshot_id,
                        instance=instance)
            raise accel_exc.NotReused('verification failed: %s' % e)
        if not claimed:
            LOG.info('Another host claimed the kept root disk first; '
                     'unshelving from the snapshot.', instance=instance)
            raise accel_exc.NotReused(
                'another host claimed the kept disk first')
        faults.cut_point('claim.renamed')
        try:
            self._kept_disks.check_claimed(record, instance.uuid, snapshot_id)
        except (accel_exc.VerificationFailed, OSError,
                processutils.ProcessExecutionError) as e:
            LOG.warning('The claimed root disk changed under us: %s. Giving '
                        'it back and unshelving from snapshot %s.', e,
                        snapshot_id, instance=instance)
            self._give_back(instance, snapshot_id, 'it changed after it was '
                            'claimed')
            raise accel_exc.NotReused(
                'the kept disk changed after it was claimed: %s' % e)
        return record

    def _release_kept_disk(self, instance, snapshot_id):
        """After a failed spawn: remove the guest, then give the disk back.

        Never two writers on one disk: if the guest cannot be removed, the
        disk is quarantined where neither a claim nor a stock spawn can
        find it, until this host has removed the guest; if it cannot even
        be moved there, the instance is fenced off (ERROR) until then.
        """
        try:
            self.remove_guest(instance)
        except Exception:
            LOG.exception('Could not remove the guest of the failed spawn.',
                          instance=instance)
            if not self._quarantine(instance, snapshot_id):
                self._fence(instance)
            return
        faults.cut_point('release.guest_removed')
        self._give_back(instance, snapshot_id, 'the spawn failed')

    def _fence(self, instance):
        """Keep every spawn off a disk a guest of this host may still use.

        ERROR: no unshelve, so no spawn on any host of the storage, until
        this host's recovery pass has removed the guest, given the disk
        back and shelved-offloaded the instance again.
        """
        instance.vm_state = vm_states.ERROR
        instance.system_metadata[shelved.FENCED_KEY] = CONF.host
        instance.save(expected_task_state=[task_states.SPAWNING])
        LOG.error('The failed guest could not be removed nor its disk moved '
                  'away from %s: the instance is set to ERROR so that no '
                  'spawn uses that disk while the guest may run. The image '
                  'cache pass of this host removes the guest and shelves '
                  'the instance again; to do it now, destroy the domain '
                  'here (virsh destroy %s) and restart nova-compute.',
                  self._kept_disks.instance_dir(instance.uuid),
                  instance.name, instance=instance)

    def remove_guest(self, instance):
        """Destroy and undefine the instance's domain here, if it has one."""
        self._destroy(instance)
        self._undefine_domain(instance)

    def _give_back(self, instance, snapshot_id, why):
        try:
            self._kept_disks.release(instance.uuid, snapshot_id)
        except (accel_exc.VerificationFailed, OSError) as e:
            LOG.error('Could not give the kept root disk back to the '
                      'storage: %s. It stays in the instance directory, '
                      'which the image cache pass of a host of the storage '
                      'gives back; no spawn uses it meanwhile.', e,
                      instance=instance)
            return
        LOG.info('Gave the kept root disk back (%s): it is in %s for the '
                 'next unshelve.', why,
                 self._kept_disks.kept_dir(instance.uuid, snapshot_id),
                 instance=instance)

    def _quarantine(self, instance, snapshot_id):
        """Move the claimed disk out of every spawn's way; False if not."""
        try:
            path = self._kept_disks.quarantine(instance.uuid, snapshot_id)
        except OSError:
            LOG.exception('Could not quarantine the instance directory %s.',
                          self._kept_disks.instance_dir(instance.uuid),
                          instance=instance)
            return False
        LOG.error('The root disk is quarantined in %s until this host has '
                  'removed the guest of the failed spawn; %s', path,
                  'its snapshot %s is uploaded from there, then the next '
                  'unshelve downloads it.' % snapshot_id
                  if shelved.pending_snapshot_id(instance) else
                  'the next unshelve downloads snapshot %s.' % snapshot_id,
                  instance=instance)
        return True

    def _create_and_inject_local_root(self, context, instance, disk_mapping,
                                      booted_from_volume, suffix, disk_images,
                                      injection_info, fallback_from_host):
        # Nova 34 calls this from _create_image, in spawn for the root disk
        # (suffix ''), in rescue and finish_migration; _spawn marks the
        # instance in _reusing around its spawn. The claimed disk is the
        # root disk: nothing to fetch, copy, resize or rebase, and Nova's
        # image cache would look for the snapshot's base file, which this
        # host does not have.
        if instance.uuid in self._reusing and not suffix:
            return False
        return super()._create_and_inject_local_root(
            context, instance, disk_mapping, booted_from_volume, suffix,
            disk_images, injection_info, fallback_from_host)

    # -- periodic ----------------------------------------------------------

    def manage_image_cache(self, context, all_instances):
        still_kept = self._recovery.run(context, at_start=False,
                                        busy=self._reusing | set(
                                            self._offloads))
        self._evictor.evict_old()
        self._uploads.clean_scratch(at_start=False)
        if self._leave_probe():
            self._check_sharing(context)
        # An offloaded instance has no host, so Nova counts it as using no
        # image: passing it in keeps the base of its image_ref alive, and
        # the pass above touched each kept disk's actual backing file.
        self._nova_image_cache_pass(context,
                                    list(all_instances) + still_kept)

    def _leave_probe(self):
        """Leave this host's probe on its storage; False if it cannot."""
        try:
            self._kept_disks.leave_probe()
        except (OSError, accel_exc.KeepRefused) as e:
            LOG.warning('Could not leave the probe of this host in %s: %s. '
                        'The other hosts of its storage group will report '
                        'it as not sharing their storage; check the mount '
                        'and its permissions.', self._kept_disks.path, e)
            return False
        return True

    def _check_sharing(self, context):
        """Warn when the storage group and the storage's hosts disagree.

        Each is logged when it changes, not at every pass.
        """
        try:
            _groups, peers = storage_groups.this_host.get(context, CONF.host)
            sharing = self._kept_disks.hosts_sharing()
        except Exception as e:
            LOG.debug('Not comparing the storage group with the probes on '
                      'the storage: %s', e)
            return
        found = storage.sharing_problems(CONF.host, peers, sharing)
        if found == self._sharing_reported:
            return
        self._sharing_reported = found
        missing, outside = found
        if missing:
            LOG.warning('Hosts %(hosts)s are in the storage group of this '
                        'host but leave no probe in %(path)s: they do not '
                        'mount this host\'s storage at instances_path, or '
                        'have not started with the plugin\'s driver. '
                        'Unshelves sent between them and this host find no '
                        'kept disk and download the snapshot. Mount the '
                        'storage there, or remove them from the aggregates '
                        'of the group.',
                        {'hosts': ', '.join(missing),
                         'path': self._kept_disks.path})
        if outside:
            LOG.warning('Hosts %(hosts)s share the storage of this host '
                        '(their probes are in %(path)s) but are in none of '
                        'its storage groups: the filter does not send the '
                        'unshelves of the disks they keep to this host, nor '
                        'this host\'s to them. Add them to the aggregate of '
                        'the group.',
                        {'hosts': ', '.join(outside),
                         'path': self._kept_disks.path})
        if not (missing or outside):
            LOG.info('Every host of the storage group of this host leaves '
                     'its probe in %s.', self._kept_disks.path)

    def _nova_image_cache_pass(self, context, instances):
        """Nova's image cache pass, listed again if a disk moves meanwhile.

        Nova lists every instance directory of the storage and reads each
        disk's backing file; a directory that a keep on any host moves away
        between the two makes it raise DiskNotFound and abort, skipping the
        rest of the pass. Stock Nova has the same race with deleted
        instances; keeps make it frequent. Listed again, the directory is
        not there any more.
        """
        for attempt in range(1, IMAGE_CACHE_LISTINGS + 1):
            try:
                return super().manage_image_cache(context, instances)
            except exception.DiskNotFound as e:
                if attempt == IMAGE_CACHE_LISTINGS:
                    raise
                LOG.info("%s While Nova's image cache pass listed the "
                         "instance directories, it moved away (a keep or "
                         "a delete); listing them again.",
                         e.format_message())

    def get_available_resource(self, nodename):
        # The resource tracker's periodic, outside its lock: also the time
        # to pick up uploads that a stopped or dead host left pending, and
        # to make room on a storage that runs short.
        self._uploads.scan_if_due()
        self._evictor.evict_if_pressed()
        data = super().get_available_resource(nodename)
        data.setdefault('stats', {})[shelved.STORAGE_FREE_STAT] = (
            '%.1f' % self._kept_disks.free_percent())
        return data

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        super().update_provider_tree(provider_tree, nodename,
                                     allocations=allocations)
        # From the last inventory: this runs under the resource tracker's
        # lock and must not walk the storage.
        kept_gb = compute_utils.convert_mb_to_ceil_gb(
            self._kept_disks.used_bytes() / units.Mi)
        inventory = provider_tree.data(nodename).inventory
        disk = inventory.get(orc.DISK_GB)
        if not kept_gb or not disk:
            return
        # Placement rejects reserved > total; a full storage is also what
        # the free-space floor exists to prevent.
        disk['reserved'] = min(disk['total'], disk['reserved'] + kept_gb)
        provider_tree.update_inventory(nodename, inventory)
