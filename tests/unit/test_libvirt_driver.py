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

"""Decisions of PartialOffloadLibvirtDriver, on Nova's fake libvirt.

The driver is built as Nova's own libvirt unit tests build theirs; its
instance storage is a temporary directory holding real disks.
"""

import dataclasses
import math
import os
import shutil
from unittest import mock

import fixtures
import os_resource_classes as orc
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_utils import units

from nova.compute import provider_tree
from nova.compute import task_states
from nova.compute import vm_states
import nova.conf
from nova import context as nova_context
from nova import exception
from nova import objects
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import fake_instance
from nova.virt import fake

from nova_shelve_accel import shelved
from nova_shelve_accel.virt import libvirt
from tests.unit import disks

CONF = nova.conf.CONF
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
OLD_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000000'
NODE = 'compute-a'


class DriverTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.flags(instances_path=self.instances_path)
        self.flags(images_type='qcow2', group='libvirt')
        # Tests of the floor set their own; the others must not depend on
        # how full the test machine's disk is.
        self.flags(free_space_floor_percent=0, group='shelve_accel')
        self.useFixture(nova_fixtures.LibvirtFixture())
        self.context = nova_context.get_admin_context()
        self.flags_host = CONF.host
        self.drvr = libvirt.PartialOffloadLibvirtDriver(
            fake.FakeVirtAPI(), False)

    def instance(self, flavor=None, **updates):
        updates.setdefault('system_metadata',
                           {'shelved_image_id': SNAPSHOT})
        # The host that offloads the instance owns it.
        updates.setdefault('host', self.flags_host)
        return fake_instance.fake_instance_obj(
            self.context, flavor=flavor, expected_attrs=['system_metadata'],
            **updates)

    def keep(self, instance_uuid, snapshot_id=SNAPSHOT):
        """A real kept disk for the instance on the driver's storage."""
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        return self.drvr._kept_disks.keep(instance_uuid, snapshot_id,
                                          'qcow2')


class TestDriverStorage(DriverTestCase):

    def test_store_is_on_the_instances_path(self):
        store = self.drvr._kept_disks
        self.assertEqual(self.instances_path, store.instances_path)
        self.assertEqual(os.path.join(self.instances_path, '_shelve_kept'),
                         store.path)
        self.assertEqual(os.path.join(self.instances_path, '_base'),
                         store.base_dir)

    def test_store_uses_the_configured_subdirectory(self):
        self.flags(kept_disks_subdirectory='kept', group='shelve_accel')
        drvr = libvirt.PartialOffloadLibvirtDriver(fake.FakeVirtAPI(), False)
        self.assertEqual(os.path.join(self.instances_path, 'kept'),
                         drvr._kept_disks.path)

    def test_kept_disks_cannot_share_the_image_cache_directory(self):
        self.flags(kept_disks_subdirectory='_base', group='shelve_accel')
        error = self.assertRaises(
            exception.InvalidConfiguration,
            libvirt.PartialOffloadLibvirtDriver, fake.FakeVirtAPI(), False)
        self.assertIn('kept_disks_subdirectory', str(error))


class TestReasonNotToKeep(DriverTestCase):

    def reason(self, instance=None, block_device_info=None):
        return self.drvr._reason_not_to_keep(instance or self.instance(),
                                             block_device_info)

    def test_none_for_an_image_backed_instance(self):
        self.assertIsNone(self.reason())

    def test_partial_offload_disabled(self):
        self.flags(partial_offload=False, group='shelve_accel')
        self.assertIn('partial_offload = False', self.reason())

    def test_volume_backed(self):
        bdi = {'root_device_name': '/dev/vda',
               'block_device_mapping': [{
                   'boot_index': 0, 'mount_device': '/dev/vda',
                   'connection_info': {'driver_volume_type': 'iscsi'}}]}
        self.assertEqual('the instance is volume-backed',
                         self.reason(block_device_info=bdi))

    def test_none_for_an_image_backed_instance_with_a_data_volume(self):
        bdi = {'root_device_name': '/dev/vda',
               'block_device_mapping': [{
                   'boot_index': None, 'mount_device': '/dev/vdb',
                   'connection_info': {'driver_volume_type': 'iscsi'}}]}
        self.assertIsNone(self.reason(block_device_info=bdi))

    def test_rbd_images_type(self):
        self.flags(images_type='rbd', group='libvirt')
        self.assertIn('images_type = rbd', self.reason())

    def test_lvm_images_type(self):
        self.flags(images_type='lvm', group='libvirt')
        self.assertIn('images_type = lvm', self.reason())

    def test_none_for_raw_images_type(self):
        self.flags(images_type='raw', group='libvirt')
        self.assertIsNone(self.reason())

    def test_no_shelve_snapshot(self):
        instance = self.instance(system_metadata={})
        self.assertEqual('shelve took no snapshot of the instance',
                         self.reason(instance))

    def test_empty_shelve_snapshot(self):
        instance = self.instance(system_metadata={'shelved_image_id': ''})
        self.assertEqual('shelve took no snapshot of the instance',
                         self.reason(instance))

    def test_kernel_id(self):
        instance = self.instance(kernel_id=uuids.kernel)
        self.assertIn('separate kernel and ramdisk', self.reason(instance))

    def test_ramdisk_id(self):
        instance = self.instance(ramdisk_id=uuids.ramdisk)
        self.assertIn('separate kernel and ramdisk', self.reason(instance))

    def test_encrypted_ephemeral_disk(self):
        bdi = {'ephemerals': [{'device_name': '/dev/vdb', 'size': 1,
                               'encrypted': True}]}
        self.assertIn('encrypted ephemeral disks',
                      self.reason(block_device_info=bdi))

    def test_vtpm_flavor(self):
        flavor = objects.Flavor(
            id=1, name='vtpm', flavorid='vtpm', memory_mb=256, vcpus=1,
            root_gb=1, ephemeral_gb=0, swap=0, extra_specs={
                'hw:tpm_version': '2.0', 'hw:tpm_model': 'tpm-crb'})
        self.assertIn('vTPM', self.reason(self.instance(flavor=flavor)))

    def test_below_the_free_space_floor(self):
        self.flags(free_space_floor_percent=100, group='shelve_accel')
        reason = self.reason()
        self.assertIn('the storage %s has' % self.instances_path, reason)
        self.assertIn('free_space_floor_percent = 100', reason)

    def test_floor_compares_with_the_free_share_of_the_storage(self):
        free = self.drvr._kept_disks.free_percent()
        self.flags(free_space_floor_percent=max(0, math.floor(free) - 1),
                   group='shelve_accel')
        self.assertIsNone(self.reason())
        self.flags(free_space_floor_percent=min(100, math.ceil(free) + 1),
                   group='shelve_accel')
        self.assertIn('below [shelve_accel] free_space_floor_percent',
                      self.reason())


class TestRootDiskFormat(DriverTestCase):

    def assert_format(self, expected, images_type, use_cow_images=True):
        self.flags(images_type=images_type, group='libvirt')
        self.flags(use_cow_images=use_cow_images)
        self.assertEqual(expected, libvirt.root_disk_format())

    def test_qcow2(self):
        self.assert_format('qcow2', 'qcow2')

    def test_raw_and_flat(self):
        self.assert_format('raw', 'raw')
        self.assert_format('raw', 'flat')

    def test_default_with_cow_images_is_qcow2(self):
        self.assert_format('qcow2', 'default', use_cow_images=True)

    def test_default_without_cow_images_is_raw(self):
        self.assert_format('raw', 'default', use_cow_images=False)

    def test_block_backends_have_no_file_format(self):
        self.assert_format(None, 'rbd')
        self.assert_format(None, 'lvm')

    def test_default_images_type_is_kept(self):
        self.flags(images_type='default', group='libvirt')
        self.flags(use_cow_images=False)
        self.assertIsNone(self.drvr._reason_not_to_keep(self.instance(),
                                                        None))


class TestUpdateProviderTree(DriverTestCase):

    def setUp(self):
        super().setUp()
        self.tree = provider_tree.ProviderTree()
        self.tree.new_root(NODE, uuids.node)

    def stub_parent(self, total, reserved, disk=True):
        """The stock driver reports this inventory; ours amends it."""
        def update_provider_tree(drvr, tree, nodename, allocations=None):
            inventory = {orc.VCPU: {
                'total': 8, 'reserved': 0, 'min_unit': 1, 'max_unit': 8,
                'step_size': 1, 'allocation_ratio': 16.0}}
            if disk:
                inventory[orc.DISK_GB] = {
                    'total': total, 'reserved': reserved, 'min_unit': 1,
                    'max_unit': total, 'step_size': 1,
                    'allocation_ratio': 1.0}
            tree.update_inventory(nodename, inventory)

        self.stub_out('nova.virt.libvirt.driver.LibvirtDriver.'
                      'update_provider_tree', update_provider_tree)

    def inventory(self):
        self.drvr.update_provider_tree(self.tree, NODE)
        return self.tree.data(NODE).inventory

    def test_reserved_unchanged_without_kept_disks(self):
        self.stub_parent(total=100, reserved=3)
        self.assertEqual(3, self.inventory()[orc.DISK_GB]['reserved'])

    def test_reserved_unchanged_with_an_empty_kept_directory(self):
        os.makedirs(self.drvr._kept_disks.path)
        self.stub_parent(total=100, reserved=3)
        self.assertEqual(3, self.inventory()[orc.DISK_GB]['reserved'])

    def test_kept_disk_reserves_a_whole_gib(self):
        self.keep(uuids.instance)
        self.assertGreater(self.drvr._kept_disks.used_bytes(), 0)
        self.stub_parent(total=100, reserved=3)
        self.assertEqual(4, self.inventory()[orc.DISK_GB]['reserved'])

    def test_reserved_grows_by_the_used_gib_rounded_up(self):
        # 1.2 GiB allocated in a kept disk: reserve 2 GiB, not 1.
        if shutil.disk_usage(self.instances_path).free < 4 * units.Gi:
            self.skipTest('needs 4 GiB free in %s' % self.instances_path)
        disks.make_raw_instance(self.instances_path, uuids.instance)
        disk = os.path.join(self.instances_path, uuids.instance, 'disk')
        fd = os.open(disk, os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, int(1.2 * units.Gi))
        finally:
            os.close(fd)
        self.drvr._kept_disks.keep(uuids.instance, SNAPSHOT, 'raw')
        used = self.drvr._kept_disks.used_bytes()
        self.assertEqual(2, math.ceil(used / units.Gi))

        self.stub_parent(total=100, reserved=3)
        self.assertEqual(5, self.inventory()[orc.DISK_GB]['reserved'])

    def test_reserved_is_clamped_to_total(self):
        self.keep(uuids.instance)
        self.stub_parent(total=10, reserved=10)
        disk = self.inventory()[orc.DISK_GB]
        self.assertEqual(10, disk['reserved'])
        self.assertEqual(10, disk['total'])

    def test_other_inventory_is_untouched(self):
        self.keep(uuids.instance)
        self.stub_parent(total=100, reserved=3)
        self.assertEqual(0, self.inventory()[orc.VCPU]['reserved'])

    def test_no_disk_inventory_is_left_alone(self):
        self.keep(uuids.instance)
        self.stub_parent(total=100, reserved=3, disk=False)
        self.assertNotIn(orc.DISK_GB, self.inventory())

    def test_repeated_updates_do_not_accumulate(self):
        self.keep(uuids.instance)
        self.stub_parent(total=100, reserved=3)
        self.inventory()
        self.assertEqual(4, self.inventory()[orc.DISK_GB]['reserved'])


class TestPeriodicPass(DriverTestCase):
    """The image cache pass: reclaim, protect, repair, on real files."""

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.PrivsepFixture())
        # The cell database, as far as the driver asks it.
        self.db = {}
        self.queries = []

        # MonkeyPatch keeps them classmethods, as the real ones are.
        def get_by_filters(cls, context, filters, expected_attrs=None):
            self.queries.append((filters, expected_attrs))
            self.assertEqual('yes', context.read_deleted)
            return objects.InstanceList(objects=[
                self.db[u] for u in filters['uuid'] if u in self.db])

        def get_by_host(cls, context, host, expected_attrs=None):
            return objects.InstanceList(objects=[
                i for i in self.db.values() if i.host == host])

        self.stub_out('nova.objects.InstanceList.get_by_filters',
                      get_by_filters)
        self.stub_out('nova.objects.InstanceList.get_by_host', get_by_host)
        self.saved = []
        self.stub_out('nova.objects.Instance.save',
                      lambda inst, expected_task_state=None:
                      self.saved.append((inst.uuid, expected_task_state)))

    def in_db(self, instance_uuid, shelved_image_id, marked=True, **updates):
        sysmeta = {}
        if shelved_image_id:
            sysmeta = {'shelved_image_id': shelved_image_id}
            if marked:
                sysmeta[shelved.KEPT_DISK_KEY] = shelved_image_id
        updates.setdefault('host', None)
        updates.setdefault('vm_state', vm_states.SHELVED_OFFLOADED
                           if shelved_image_id else vm_states.ACTIVE)
        self.db[instance_uuid] = self.instance(uuid=instance_uuid,
                                               system_metadata=sysmeta,
                                               **updates)
        return self.db[instance_uuid]

    def reclaim(self):
        return self.drvr._recovery.run(self.context, at_start=False)

    def kept(self):
        return sorted((r.instance_uuid, r.snapshot_id)
                      for r in self.drvr._kept_disks.list_kept())

    def test_kept_disk_of_a_deleted_instance_is_reclaimed(self):
        self.keep(uuids.deleted)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_a_soft_deleted_row_is_reclaimed(self):
        self.keep(uuids.deleted)
        self.in_db(uuids.deleted, SNAPSHOT, deleted=True)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_an_older_shelve_is_reclaimed(self):
        self.keep(uuids.reshelved, OLD_SNAPSHOT)
        self.in_db(uuids.reshelved, SNAPSHOT)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_an_unshelved_instance_is_reclaimed(self):
        self.keep(uuids.unshelved)
        self.in_db(uuids.unshelved, None)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_the_current_shelve_is_kept_and_returned(self):
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, SNAPSHOT)
        self.assertEqual([owner], self.reclaim())
        self.assertEqual([(uuids.shelved, SNAPSHOT)], self.kept())
        self.assertEqual([], self.saved)

    def test_backing_file_of_a_kept_disk_is_kept_young(self):
        record = self.keep(uuids.shelved)
        self.in_db(uuids.shelved, SNAPSHOT)
        base = os.path.join(self.drvr._kept_disks.base_dir,
                            record.backing_file)
        disks.age(base)
        before = os.stat(base).st_mtime

        self.reclaim()

        self.assertGreater(os.stat(base).st_mtime, before + 60)

    def test_one_query_decides_every_kept_disk(self):
        self.keep(uuids.deleted)
        self.keep(uuids.reshelved, OLD_SNAPSHOT)
        self.in_db(uuids.reshelved, SNAPSHOT)
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, SNAPSHOT)

        self.assertEqual([owner], self.reclaim())

        self.assertEqual([(uuids.shelved, SNAPSHOT)], self.kept())
        [(filters, expected_attrs)] = self.queries
        self.assertEqual(
            sorted([uuids.deleted, uuids.reshelved, uuids.shelved]),
            sorted(filters['uuid']))
        self.assertIn('system_metadata', expected_attrs)

    def test_no_kept_disks_no_query(self):
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.queries)

    def test_an_error_on_one_disk_does_not_stop_the_pass(self):
        # Base files owned by the QEMU user: touching them fails with
        # EACCES. The disk of the deleted instance is still reclaimed and
        # Nova's own image cache pass still runs.
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, SNAPSHOT)
        self.keep(uuids.deleted)
        nova_pass = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.manage_image_cache'))

        with mock.patch('nova.privsep.path.utime',
                        side_effect=PermissionError(13, 'Permission denied')):
            self.drvr.manage_image_cache(self.context, [])

        self.assertEqual([(uuids.shelved, SNAPSHOT)], self.kept())
        nova_pass.mock.assert_called_once_with(self.context, [])
        self.assertIn('Permission denied', self.stdlog.logger.output)
        del owner

    def test_a_kept_disk_without_its_marker_is_marked(self):
        # A restart between keeping the disk and saving the instance.
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, SNAPSHOT, marked=False)

        self.assertEqual([owner], self.reclaim())

        self.assertEqual(SNAPSHOT,
                         owner.system_metadata[shelved.KEPT_DISK_KEY])
        self.assertEqual([(uuids.shelved, [None])], self.saved)

    def test_a_busy_instance_is_not_marked(self):
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, SNAPSHOT, marked=False,
                   task_state=task_states.UNSHELVING)
        self.reclaim()
        self.assertEqual([], self.saved)

    def test_interrupted_reclaims_are_finished(self):
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, SNAPSHOT)
        trash = os.path.join(
            self.drvr._kept_disks.path, '.reclaiming-%s-1234abcd-%s.%s' % (
                self.drvr._kept_disks.host_tag, uuids.gone, SNAPSHOT))
        os.makedirs(trash)
        disks.add_files(trash, 'disk')

        self.drvr._recovery.run(self.context, at_start=True)

        self.assertFalse(os.path.exists(trash))
        self.assertEqual([(uuids.shelved, SNAPSHOT)], self.kept())

    def damage(self, instance_uuid, text):
        path = self.drvr._kept_disks.kept_dir(instance_uuid, SNAPSHOT)
        with open(os.path.join(path, 'kept.json'), 'w') as f:
            f.write(text)
        return path

    def test_a_damaged_kept_disk_is_reported_once_while_needed(self):
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, SNAPSHOT)
        path = self.damage(uuids.shelved, '{"broken')

        self.reclaim()
        self.reclaim()

        self.assertTrue(os.path.isdir(path))
        self.assertEqual(1, self.stdlog.logger.output.count(
            'Not reusing %s' % path))

    def test_a_damaged_kept_disk_is_reclaimed_once_not_needed(self):
        self.keep(uuids.deleted)
        path = self.damage(uuids.deleted, '{"broken')
        self.reclaim()
        self.assertFalse(os.path.exists(path))
        self.assertEqual([], os.listdir(self.drvr._kept_disks.path))

    def test_a_record_naming_another_instance_is_reclaimed_by_its_name(self):
        record = self.keep(uuids.deleted)
        path = self.damage(uuids.deleted, dataclasses.replace(
            record, instance_uuid=uuids.victim).to_json())
        self.in_db(uuids.victim, SNAPSHOT)
        self.reclaim()
        self.assertFalse(os.path.exists(path))

    def test_a_record_left_in_a_running_instance_dir_is_removed(self):
        self.keep(uuids.running)
        self.drvr._kept_disks.claim(uuids.running, SNAPSHOT)
        self.in_db(uuids.running, None, host=CONF.host)
        record_file = os.path.join(self.instances_path, uuids.running,
                                   'kept.json')

        self.reclaim()

        self.assertFalse(os.path.exists(record_file))
        self.assertTrue(os.path.exists(os.path.join(
            self.instances_path, uuids.running, 'disk')))


class TestUnshelveOnKeptDisk(DriverTestCase):
    """spawn() on a claimed disk: real files, the stock spawn stubbed."""

    def setUp(self):
        super().setUp()
        self.stock_spawn = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.spawn')).mock
        self.store = self.drvr._kept_disks
        self.inst_dir = os.path.join(self.instances_path, uuids.instance)

    def offloaded(self, **updates):
        return self.instance(
            uuid=uuids.instance, vm_state=vm_states.SHELVED_OFFLOADED,
            system_metadata={'shelved_image_id': SNAPSHOT,
                             shelved.KEPT_DISK_KEY: SNAPSHOT}, **updates)

    def spawn(self, instance):
        self.drvr.spawn(self.context, instance, None, [], None, {})

    def test_claims_and_spawns_on_the_kept_disk(self):
        self.keep(uuids.instance)
        instance = self.offloaded()
        self.spawn(instance)
        self.assertEqual(['disk', 'disk.info'], sorted(os.listdir(
            self.inst_dir)))
        self.assertEqual([], os.listdir(self.store.path))
        self.assertNotIn(shelved.KEPT_DISK_KEY, instance.system_metadata)

    def assert_not_claimed(self, images_type, use_cow_images=True):
        self.flags(images_type=images_type, group='libvirt')
        self.flags(use_cow_images=use_cow_images)
        self.spawn(self.offloaded())
        self.assertTrue(os.path.isdir(self.store.kept_dir(uuids.instance,
                                                          SNAPSHOT)))
        self.assertFalse(os.path.exists(self.inst_dir))
        self.stock_spawn.assert_called_once()
        self.assertIn('stores root disks as', self.stdlog.logger.output)

    def test_a_raw_kept_disk_is_not_claimed_by_a_qcow2_host(self):
        # A guest that wrote a qcow2 header into its raw disk must not get
        # a backing file of its choice opened on the host.
        disks.make_raw_instance(self.instances_path, uuids.instance)
        self.store.keep(uuids.instance, SNAPSHOT, 'raw')
        self.assert_not_claimed('qcow2')

    def test_a_qcow2_kept_disk_is_not_claimed_by_a_flat_host(self):
        self.keep(uuids.instance)
        self.assert_not_claimed('flat')
        self.assertIn('images_type = flat', self.stdlog.logger.output)

    def test_a_qcow2_kept_disk_is_not_claimed_without_cow_images(self):
        self.keep(uuids.instance)
        self.assert_not_claimed('default', use_cow_images=False)

    def test_a_kept_disk_is_not_claimed_by_an_rbd_host(self):
        self.keep(uuids.instance)
        self.assert_not_claimed('rbd')
        self.assertIn('stores root disks as no file',
                      self.stdlog.logger.output)

    def test_a_storage_this_host_may_not_read_falls_back(self):
        self.keep(uuids.instance)
        with mock.patch.object(self.store, 'find', side_effect=PermissionError(
                13, 'Permission denied')):
            self.spawn(self.offloaded())
        self.stock_spawn.assert_called_once()
        self.assertIn('Cannot look for a kept root disk',
                      self.stdlog.logger.output)

    def test_a_kept_disk_without_its_marker_is_still_claimed(self):
        self.keep(uuids.instance)
        instance = self.offloaded()
        del instance.system_metadata[shelved.KEPT_DISK_KEY]
        self.spawn(instance)
        self.assertFalse(os.path.exists(self.store.kept_dir(uuids.instance,
                                                            SNAPSHOT)))

    def test_a_record_that_cannot_be_removed_does_not_fail_the_unshelve(self):
        # The guest runs on the disk: failing now would leave it running
        # while the instance is offloaded again and its disk claimable.
        self.keep(uuids.instance)
        with mock.patch.object(self.store, 'finish_claim',
                               side_effect=OSError(5, 'NFS hiccup')):
            self.spawn(self.offloaded())
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir,
                                                    'kept.json')))
        self.assertEqual([], os.listdir(self.store.path))
        self.assertIn('NFS hiccup', self.stdlog.logger.output)

    def test_a_failed_spawn_removes_the_guest_then_gives_the_disk_back(self):
        self.keep(uuids.instance)
        self.stock_spawn.side_effect = ValueError('guest crashed')
        with mock.patch.object(self.drvr, 'remove_guest') as remove_guest:
            self.assertRaises(ValueError, self.spawn, self.offloaded())
        remove_guest.assert_called_once()
        self.assertIsNotNone(self.store.find(uuids.instance, SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))

    def test_a_guest_that_cannot_be_removed_quarantines_the_disk(self):
        # Never two writers: neither a claim nor a stock spawn may find a
        # disk whose guest may still run.
        self.keep(uuids.instance)
        self.stock_spawn.side_effect = ValueError('guest crashed')
        with mock.patch.object(self.drvr, 'remove_guest',
                               side_effect=ValueError('libvirt is stuck')):
            self.assertRaises(ValueError, self.spawn, self.offloaded())
        self.assertIsNone(self.store.find(uuids.instance, SNAPSHOT))
        self.assertFalse(self.store.claim(uuids.instance, SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))
        [quarantined] = os.listdir(self.store.path)
        self.assertTrue(quarantined.startswith('.quarantine-'))
        self.assertTrue(os.path.isfile(os.path.join(
            self.store.path, quarantined, 'disk')))

    def test_a_disk_swapped_for_a_link_after_the_claim_is_given_back(self):
        self.keep(uuids.instance)
        secret = os.path.join(self.instances_path, 'host-secret')
        disks.add_files(os.path.dirname(secret), 'host-secret')
        real_claim = self.store.claim

        def claim_then_swap(*args):
            won = real_claim(*args)
            os.unlink(os.path.join(self.inst_dir, 'disk'))
            os.symlink(secret, os.path.join(self.inst_dir, 'disk'))
            return won

        with mock.patch.object(self.store, 'claim', claim_then_swap):
            self.spawn(self.offloaded())
        # The stock path ran, on a fresh instance directory.
        self.stock_spawn.assert_called_once()
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertIn('changed under us', self.stdlog.logger.output)
        self.assertIn('Gave the kept root disk back (it changed after it '
                      'was claimed)', self.stdlog.logger.output)


class TestKeepAtOffload(DriverTestCase):

    def test_a_host_that_does_not_own_the_instance_does_not_keep(self):
        # A restarted host cleaning up an instance evacuated away from it,
        # while the instance is being shelved on its new host.
        instance = self.instance(host='elsewhere',
                                 task_state=task_states.SHELVING_OFFLOADING)
        self.assertIn('belongs to host elsewhere',
                      self.drvr._reason_not_to_keep(instance, None))

    def test_an_offload_run_again_adopts_the_disk_and_says_so(self):
        self.keep(uuids.instance)
        instance = self.instance(uuid=uuids.instance)
        self.drvr._keep_root_disk(None, instance)
        self.assertEqual(SNAPSHOT,
                         instance.system_metadata[shelved.KEPT_DISK_KEY])
        self.assertNotIn('will download', self.stdlog.logger.output)

    def test_not_keeping_again_names_the_disk_kept_for_this_shelve(self):
        self.keep(uuids.instance)
        self.drvr._log_not_kept(self.instance(uuid=uuids.instance),
                                'partial offload is disabled')
        self.assertIn('stays in %s' % self.drvr._kept_disks.kept_dir(
            uuids.instance, SNAPSHOT), self.stdlog.logger.output)
        self.assertNotIn('will download', self.stdlog.logger.output)
