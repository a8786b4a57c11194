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
Nova's ``LibvirtDriver`` except at four points:

* shelve-offload of an image-backed instance keeps the root disk on the
  instance storage instead of deleting it (``destroy``);
* unshelve on a host whose storage holds that disk claims it and spawns on it
  without downloading the Glance snapshot (``spawn``);
* the image cache pass protects the backing files of kept disks and reclaims
  the kept disks no instance can use any more (``manage_image_cache``);
* the space kept disks use is reserved DISK_GB in Placement
  (``update_provider_tree``).

Wherever a kept disk cannot be used the stock code path runs unchanged.
"""

import os_resource_classes as orc
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import excutils
from oslo_utils import units

from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova.compute import vm_states
import nova.conf
from nova import exception
from nova import objects
from nova.virt import driver as virt_driver
from nova.virt import hardware
from nova.virt.libvirt import driver as libvirt_driver

from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import shelved
from nova_shelve_accel import storage

CONF = nova.conf.CONF
accel_conf.register_opts(CONF)
LOG = logging.getLogger(__name__)

# Nova's images_type values that store the root disk as a file, and the
# format of that file.
_FILE_FORMATS = {'qcow2': 'qcow2', 'raw': 'raw', 'flat': 'raw'}

# Task states of an instance whose destroy is a shelve-offload: the API
# offloads a volume-backed instance straight from SHELVING.
_OFFLOADING = (task_states.SHELVING_OFFLOADING, task_states.SHELVING)


class PartialOffloadLibvirtDriver(libvirt_driver.LibvirtDriver):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        # The storage this host sees is the one it was started with.
        self._kept_disks = storage.KeptDiskStore(
            CONF.instances_path, CONF.shelve_accel.kept_disks_subdirectory,
            CONF.image_cache.subdirectory_name)
        # Instances whose instance directory is kept instead of deleted by
        # the destroy in progress.
        self._keeping = set()
        # Instances being spawned on a claimed kept disk.
        self._reusing = set()

    # -- shelve-offload ----------------------------------------------------

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        if destroy_disks and instance.task_state in _OFFLOADING:
            reason = self._reason_not_to_keep(instance, block_device_info)
            if reason:
                LOG.info('Not keeping the root disk at shelve-offload: %s. '
                         'Unshelve will download the snapshot.', reason,
                         instance=instance)
            else:
                self._keeping.add(instance.uuid)
        try:
            super().destroy(context, instance, network_info,
                            block_device_info=block_device_info,
                            destroy_disks=destroy_disks,
                            destroy_secrets=destroy_secrets)
        finally:
            self._keeping.discard(instance.uuid)

    def _reason_not_to_keep(self, instance, block_device_info):
        """Why the root disk must not be kept, or None if it may be."""
        if not CONF.shelve_accel.partial_offload:
            return 'partial offload is disabled ([shelve_accel] ' \
                   'partial_offload = False)'
        if self._is_booted_from_volume(block_device_info):
            return 'the instance is volume-backed'
        if self._root_disk_format() is None:
            return ('[libvirt] images_type = %s does not store the root disk '
                    'as a file' % CONF.libvirt.images_type)
        if not instance.system_metadata.get('shelved_image_id'):
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

    def _root_disk_format(self):
        images_type = CONF.libvirt.images_type
        if images_type == 'default':
            images_type = 'qcow2' if CONF.use_cow_images else 'flat'
        return _FILE_FORMATS.get(images_type)

    def delete_instance_files(self, instance):
        if instance.uuid in self._keeping:
            self._keep_root_disk(instance)
        return super().delete_instance_files(instance)

    def _keep_root_disk(self, instance):
        snapshot_id = instance.system_metadata['shelved_image_id']
        try:
            self._kept_disks.keep(instance.uuid, snapshot_id,
                                  self._root_disk_format(), CONF.host)
        except (storage.KeepRefused, OSError,
                processutils.ProcessExecutionError) as e:
            # The snapshot holds the data: deleting the disk as stock Nova
            # does loses nothing.
            LOG.warning('Not keeping the root disk at shelve-offload: %s. '
                        'Unshelve will download snapshot %s.', e,
                        snapshot_id, instance=instance)
            return
        instance.system_metadata[shelved.KEPT_DISK_KEY] = snapshot_id
        LOG.info('Kept the root disk in %s for unshelve.',
                 self._kept_disks.kept_dir(instance.uuid, snapshot_id),
                 instance=instance)

    # -- unshelve ----------------------------------------------------------

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        args = (context, instance, image_meta, injected_files,
                admin_password, allocations)
        kwargs = dict(network_info=network_info,
                      block_device_info=block_device_info,
                      power_on=power_on, accel_info=accel_info)
        snapshot_id = self._unshelving_kept_snapshot(instance)
        if not snapshot_id or not self._claim_kept_disk(instance, snapshot_id):
            super().spawn(*args, **kwargs)
            instance.system_metadata.pop(shelved.KEPT_DISK_KEY, None)
            return

        self._reusing.add(instance.uuid)
        try:
            super().spawn(*args, **kwargs)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._release_kept_disk(instance, snapshot_id)
        finally:
            self._reusing.discard(instance.uuid)
        self._kept_disks.finish_claim(instance.uuid)
        instance.system_metadata.pop(shelved.KEPT_DISK_KEY, None)
        LOG.info('Unshelved on the kept root disk; no image data was '
                 'downloaded.', instance=instance)

    @staticmethod
    def _unshelving_kept_snapshot(instance):
        if instance.vm_state != vm_states.SHELVED_OFFLOADED:
            return None
        return shelved.kept_snapshot_id(instance)

    def _claim_kept_disk(self, instance, snapshot_id):
        """Take the kept disk of this shelve if it is here and sound."""
        record = self._kept_disks.find(instance.uuid, snapshot_id)
        if record is None:
            LOG.info('No kept root disk for snapshot %s on storage %s; '
                     'unshelving from the snapshot.', snapshot_id,
                     self._kept_disks.path, instance=instance)
            return False
        try:
            self._kept_disks.verify(record, instance.uuid, snapshot_id)
            claimed = self._kept_disks.claim(instance.uuid, snapshot_id)
        except (storage.VerificationFailed, OSError,
                processutils.ProcessExecutionError) as e:
            LOG.warning('Not reusing the kept root disk: %s. Unshelving from '
                        'snapshot %s instead; the kept disk is reclaimed '
                        'once the instance runs.', e, snapshot_id,
                        instance=instance)
            return False
        if not claimed:
            LOG.info('Another host claimed the kept root disk first; '
                     'unshelving from the snapshot.', instance=instance)
        return claimed

    def _release_kept_disk(self, instance, snapshot_id):
        # A guest left behind by the failed spawn must not keep writing to
        # the disk once it is claimable again.
        try:
            self._destroy(instance)
            self._undefine_domain(instance)
        except Exception:
            LOG.exception('Could not remove the guest of the failed spawn; '
                          'the kept disk stays in %s for the operator.',
                          self._kept_disks.instance_dir(instance.uuid),
                          instance=instance)
            return
        try:
            self._kept_disks.release(instance.uuid, snapshot_id)
        except (storage.VerificationFailed, OSError) as e:
            LOG.error('Could not give the kept root disk back to the '
                      'storage: %s. The snapshot %s still holds the data; '
                      'the next unshelve downloads it.', e, snapshot_id,
                      instance=instance)
            return
        LOG.info('Spawn failed; the kept root disk is back in %s for the '
                 'next unshelve.',
                 self._kept_disks.kept_dir(instance.uuid, snapshot_id),
                 instance=instance)

    def _create_and_inject_local_root(self, context, instance, disk_mapping,
                                      booted_from_volume, suffix, disk_images,
                                      injection_info, fallback_from_host):
        # The claimed disk is the root disk: nothing to fetch, copy, resize or
        # rebase, and Nova's image cache would look for the snapshot's base
        # file, which this host does not have.
        if instance.uuid in self._reusing and not suffix:
            return False
        return super()._create_and_inject_local_root(
            context, instance, disk_mapping, booted_from_volume, suffix,
            disk_images, injection_info, fallback_from_host)

    # -- periodic ----------------------------------------------------------

    def manage_image_cache(self, context, all_instances):
        still_kept = self._reclaim_unusable_kept_disks(context)
        # An offloaded instance has no host, so Nova counts it as using no
        # image: passing it in keeps the base of its image_ref alive, and
        # the reclaim above touched each kept disk's actual backing file.
        super().manage_image_cache(context, list(all_instances) + still_kept)

    def _reclaim_unusable_kept_disks(self, context):
        """Reclaim kept disks no instance can use; return their owners."""
        self._kept_disks.empty_trash()
        records = self._kept_disks.list_kept()
        if not records:
            return []
        instances = {
            inst.uuid: inst for inst in objects.InstanceList.get_by_filters(
                context, {'uuid': [r.instance_uuid for r in records],
                          'deleted': False},
                expected_attrs=['system_metadata'])}
        owners = []
        for record in records:
            instance = instances.get(record.instance_uuid)
            if instance is None:
                self._kept_disks.reclaim(record, 'the instance was deleted')
            elif instance.system_metadata.get(
                    'shelved_image_id') != record.snapshot_id:
                self._kept_disks.reclaim(
                    record, 'the instance is no longer shelved with '
                    'snapshot %s' % record.snapshot_id)
            else:
                self._kept_disks.protect_backing_file(record)
                owners.append(instance)
        return owners

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        super().update_provider_tree(provider_tree, nodename,
                                     allocations=allocations)
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
