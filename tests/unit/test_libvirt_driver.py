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
import json
import math
import os
import shutil
import time
from unittest import mock

import fixtures
import os_resource_classes as orc
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_utils import units

from nova.compute import provider_tree
from nova.compute import task_states
from nova.compute import vm_states
import nova.conf
from nova import exception
from nova.network import model as network_model
from nova import objects
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import fake_block_device
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver

from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import storage_groups
from nova_shelve_accel.virt.libvirt import driver as accel_driver
from tests.unit import disks
from tests.unit import driver_fixtures as fx

CONF = nova.conf.CONF


class TestDriverStorage(fx.DriverTestCase):

    def test_store_is_on_the_instances_path(self):
        store = self.drvr._kept_disks
        self.assertEqual(self.instances_path, store.instances_path)
        self.assertEqual(os.path.join(self.instances_path, '_shelve_kept'),
                         store.path)
        self.assertEqual(os.path.join(self.instances_path, '_base'),
                         store.base_dir)

    def test_store_uses_the_configured_subdirectory(self):
        self.flags(kept_disks_subdirectory='kept', group='shelve_accel')
        drvr = accel_driver.PartialOffloadLibvirtDriver(fake.FakeVirtAPI(),
                                                        False)
        self.assertEqual(os.path.join(self.instances_path, 'kept'),
                         drvr._kept_disks.path)

    def test_kept_disks_cannot_share_the_image_cache_directory(self):
        self.flags(kept_disks_subdirectory='_base', group='shelve_accel')
        error = self.assertRaises(
            exception.InvalidConfiguration,
            accel_driver.PartialOffloadLibvirtDriver, fake.FakeVirtAPI(),
            False)
        self.assertIn('kept_disks_subdirectory', str(error))


class TestInert(fx.DriverTestCase):
    """NOVA_SHELVE_ACCEL_INERT=1: loaded, but Nova's own code runs."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.EnvironmentVariable(
            accel_driver.INERT_ENV, '1'))
        self.inert = accel_driver.PartialOffloadLibvirtDriver(
            fake.FakeVirtAPI(), False)

    def test_every_override_is_nova_s_own_method(self):
        overridden = [
            name for name in vars(accel_driver.PartialOffloadLibvirtDriver)
            if name != '__init__' and callable(getattr(
                libvirt_driver.LibvirtDriver, name, None))]
        # The hooks the plugin lives by are among them.
        self.assertEqual(set(), {
            'destroy', 'delete_instance_files', 'spawn', 'snapshot',
            '_create_and_inject_local_root', 'manage_image_cache',
            'init_host', 'update_provider_tree'} - set(overridden))
        for name in overridden:
            self.assertIs(getattr(libvirt_driver.LibvirtDriver, name),
                          getattr(self.inert, name).__func__, name)

    def test_the_plugin_s_own_methods_stay_and_nothing_is_set_up(self):
        plugin = accel_driver.PartialOffloadLibvirtDriver
        self.assertIs(plugin._claim_kept_disk,
                      self.inert._claim_kept_disk.__func__)
        self.assertFalse(hasattr(self.inert, '_kept_disks'))
        self.assertFalse(hasattr(self.inert, '_uploads'))

    def test_refused_while_the_storage_holds_a_kept_disk(self):
        # self.drvr is the plugin's, made before the variable was set.
        self.keep(uuids.kept)
        e = self.assertRaises(exception.InvalidConfiguration,
                              accel_driver.PartialOffloadLibvirtDriver,
                              fake.FakeVirtAPI(), False)
        self.assertIn('%s holds 1 kept disk' % self.drvr._kept_disks.path,
                      str(e))
        self.assertIn('Remove %s' % accel_driver.INERT_ENV, str(e))
        # Nothing was touched: the kept disk is still there.
        self.assertIsNotNone(self.drvr._kept_disks.find(uuids.kept,
                                                        fx.SNAPSHOT))

    def test_a_driver_without_the_variable_runs_the_plugin(self):
        self.useFixture(fixtures.EnvironmentVariable(accel_driver.INERT_ENV))
        drvr = accel_driver.PartialOffloadLibvirtDriver(fake.FakeVirtAPI(),
                                                        False)
        self.assertIs(accel_driver.PartialOffloadLibvirtDriver.spawn,
                      drvr.spawn.__func__)


class TestReasonNotToKeep(fx.DriverTestCase):

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


class TestRootDiskFormat(fx.DriverTestCase):

    def assert_format(self, expected, images_type, use_cow_images=True):
        self.flags(images_type=images_type, group='libvirt')
        self.flags(use_cow_images=use_cow_images)
        self.assertEqual(expected, accel_driver.root_disk_format())

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


class TestStorageReport(fx.DriverTestCase):
    """The free share of the storage, for the filter's floor."""

    def stub_parent(self, stats):
        self.stub_out(
            'nova.virt.libvirt.driver.LibvirtDriver.get_available_resource',
            lambda drvr, nodename: {'local_gb': 7, 'stats': stats})

    def reported(self):
        data = self.drvr.get_available_resource(fx.NODE)
        return data['stats']

    def test_reports_the_free_share_of_the_instance_storage(self):
        self.stub_parent({'uptime': 'up 1 day'})
        stats = self.reported()
        # The statvfs of instances_path, as the floor at offload reads it.
        self.assertAlmostEqual(self.drvr._kept_disks.free_percent(),
                               float(stats[shelved.STORAGE_FREE_STAT]),
                               delta=0.1)
        self.assertEqual('up 1 day', stats['uptime'])

    def test_reports_it_when_the_stock_driver_gives_no_stats(self):
        self.stub_out(
            'nova.virt.libvirt.driver.LibvirtDriver.get_available_resource',
            lambda drvr, nodename: {'local_gb': 7})
        self.assertIn(shelved.STORAGE_FREE_STAT, self.reported())

    def test_a_full_storage_reports_zero(self):
        self.stub_parent({})
        self.useFixture(fixtures.MockPatch(
            'os.statvfs', return_value=mock.Mock(f_blocks=100, f_bavail=0)))
        self.assertEqual('0.0', self.reported()[shelved.STORAGE_FREE_STAT])


class TestUpdateProviderTree(fx.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.tree = provider_tree.ProviderTree()
        self.tree.new_root(fx.NODE, uuids.node)

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
        self.drvr.update_provider_tree(self.tree, fx.NODE)
        return self.tree.data(fx.NODE).inventory

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
        self.drvr._kept_disks.keep(uuids.instance, fx.SNAPSHOT, 'raw')
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


class TestPeriodicPass(fx.DriverTestCase):
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
        self.stub_out('nova.objects.Instance.get_by_uuid',
                      lambda cls, context, instance_uuid, expected_attrs=None:
                      self.db[instance_uuid])
        # The compute hosts of this cell, and those of them that are up.
        self.cell_hosts = {CONF.host}
        self.hosts_up = {CONF.host}

        def get_by_compute_host(cls, context, host):
            if host not in self.cell_hosts:
                raise exception.ComputeHostNotFound(host=host)
            return objects.Service(host=host, binary='nova-compute')

        self.stub_out('nova.objects.Service.get_by_compute_host',
                      get_by_compute_host)
        self.stub_out(
            'nova.objects.ServiceList.get_by_binary',
            lambda cls, context, binary, include_disabled=False:
            objects.ServiceList(objects=[
                objects.Service(host=h, binary=binary)
                for h in sorted(self.cell_hosts)]))
        self.stub_out('nova.servicegroup.API.service_is_up',
                      lambda api, service: service.host in self.hosts_up)

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

    def test_kept_disk_of_an_archived_instance_is_reclaimed(self):
        # In no database, while the host that kept it is a host of this
        # cell: deleted, then archived.
        self.keep(uuids.deleted)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_an_instance_of_another_cell_is_kept(self):
        # Not found is not deleted: a host of another cell sharing the
        # storage kept it, for an instance this cell cannot see.
        self.cell_hosts = set()
        for pending in (False, True):
            self.drvr._kept_disks._used_bytes = None
            instance_uuid = uuids.other_cell_pending if pending else (
                uuids.other_cell)
            disks.make_qcow2_instance(self.instances_path, instance_uuid)
            self.drvr._kept_disks.keep(instance_uuid, fx.SNAPSHOT,
                                       snapshot_pending=pending)

        self.assertEqual([], self.reclaim())
        self.reclaim()

        self.assertEqual(sorted([(uuids.other_cell, fx.SNAPSHOT),
                                 (uuids.other_cell_pending, fx.SNAPSHOT)]),
                         self.kept())
        output = self.stdlog.logger.output
        self.assertEqual(2, output.count('Leaving'))
        self.assertIn('is not in the database of this cell', output)

    def test_kept_disk_of_a_soft_deleted_row_is_reclaimed(self):
        self.keep(uuids.deleted)
        self.in_db(uuids.deleted, fx.SNAPSHOT, deleted=True)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_an_older_shelve_is_reclaimed(self):
        self.keep(uuids.reshelved, fx.OLD_SNAPSHOT)
        self.in_db(uuids.reshelved, fx.SNAPSHOT)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_an_unshelved_instance_is_reclaimed(self):
        self.keep(uuids.unshelved)
        self.in_db(uuids.unshelved, None)
        self.assertEqual([], self.reclaim())
        self.assertEqual([], self.kept())

    def test_kept_disk_of_the_current_shelve_is_kept_and_returned(self):
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, fx.SNAPSHOT)
        self.assertEqual([owner], self.reclaim())
        self.assertEqual([(uuids.shelved, fx.SNAPSHOT)], self.kept())
        self.assertEqual([], self.saved)

    def assert_pass_keeps_young(self, backing_file):
        """The backing file is touched by one pass, having been old."""
        base = os.path.join(self.drvr._kept_disks.base_dir, backing_file)
        disks.age(base)
        before = os.stat(base).st_mtime
        self.reclaim()
        self.assertGreater(os.stat(base).st_mtime, before + 60)

    def test_backing_file_of_a_kept_disk_is_kept_young(self):
        record = self.keep(uuids.shelved)
        self.in_db(uuids.shelved, fx.SNAPSHOT)
        self.assert_pass_keeps_young(record.backing_file)

    def test_one_query_decides_every_kept_disk(self):
        self.keep(uuids.deleted)
        self.keep(uuids.reshelved, fx.OLD_SNAPSHOT)
        self.in_db(uuids.reshelved, fx.SNAPSHOT)
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, fx.SNAPSHOT)

        self.assertEqual([owner], self.reclaim())

        self.assertEqual([(uuids.shelved, fx.SNAPSHOT)], self.kept())
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
        owner = self.in_db(uuids.shelved, fx.SNAPSHOT)
        self.keep(uuids.deleted)
        nova_pass = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.manage_image_cache'))

        with mock.patch('nova.privsep.path.utime',
                        side_effect=PermissionError(13, 'Permission denied')):
            self.drvr.manage_image_cache(self.context, [])

        self.assertEqual([(uuids.shelved, fx.SNAPSHOT)], self.kept())
        nova_pass.mock.assert_called_once_with(self.context, [])
        self.assertIn('Permission denied', self.stdlog.logger.output)
        del owner

    def test_a_disk_moved_during_novas_listing_does_not_abort_its_pass(
            self):
        # Seen during a burst of fast shelves: Nova listed an instance
        # directory whose disk a keep moved away a moment later, and its
        # whole pass aborted with DiskNotFound.
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, fx.SNAPSHOT)
        nova_pass = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.manage_image_cache',
            side_effect=[exception.DiskNotFound(location='/moved/disk'),
                         None])).mock
        recovery = self.useFixture(fixtures.MockPatchObject(
            self.drvr._recovery, 'run', return_value=[])).mock

        self.drvr.manage_image_cache(self.context, [])

        self.assertEqual(2, nova_pass.call_count)
        recovery.assert_called_once()
        self.assertIn('No disk at /moved/disk', self.stdlog.logger.output)

    def test_the_plugins_pass_does_not_depend_on_novas(self):
        # A pass of Nova's that fails still leaves the kept disks resolved.
        self.keep(uuids.deleted)
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.manage_image_cache',
            side_effect=exception.DiskNotFound(location='/moved/disk')))
        self.assertRaises(exception.DiskNotFound,
                          self.drvr.manage_image_cache, self.context, [])
        self.assertEqual([], self.kept())

    def test_a_kept_disk_without_its_marker_is_marked(self):
        # A restart between keeping the disk and saving the instance.
        self.keep(uuids.shelved)
        owner = self.in_db(uuids.shelved, fx.SNAPSHOT, marked=False)

        self.assertEqual([owner], self.reclaim())

        self.assertEqual(fx.SNAPSHOT,
                         owner.system_metadata[shelved.KEPT_DISK_KEY])
        self.assertEqual([(uuids.shelved, [None])], self.saved)

    def test_a_busy_instance_is_not_marked(self):
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, fx.SNAPSHOT, marked=False,
                   task_state=task_states.UNSHELVING)
        self.reclaim()
        self.assertEqual([], self.saved)

    def test_interrupted_reclaims_are_finished(self):
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, fx.SNAPSHOT)
        trash = os.path.join(
            self.drvr._kept_disks.path, '.reclaiming-%s-1234abcd-%s.%s' % (
                self.drvr._kept_disks.host_tag, uuids.gone, fx.SNAPSHOT))
        os.makedirs(trash)
        disks.add_files(trash, 'disk')

        self.drvr._recovery.run(self.context, at_start=True)

        self.assertFalse(os.path.exists(trash))
        self.assertEqual([(uuids.shelved, fx.SNAPSHOT)], self.kept())

    def damage(self, instance_uuid, text):
        path = self.drvr._kept_disks.kept_dir(instance_uuid, fx.SNAPSHOT)
        with open(os.path.join(path, 'kept.json'), 'w') as f:
            f.write(text)
        return path

    def test_a_damaged_kept_disk_is_reported_once_while_needed(self):
        self.keep(uuids.shelved)
        self.in_db(uuids.shelved, fx.SNAPSHOT)
        path = self.damage(uuids.shelved, '{"broken')

        self.reclaim()
        self.reclaim()

        self.assertTrue(os.path.isdir(path))
        self.assertEqual(1, self.stdlog.logger.output.count(
            'Not reusing %s' % path))

    def test_a_damaged_kept_disk_is_reclaimed_once_not_needed(self):
        self.keep(uuids.deleted)
        self.in_db(uuids.deleted, fx.SNAPSHOT, deleted=True)
        path = self.damage(uuids.deleted, '{"broken')
        self.reclaim()
        self.assertFalse(os.path.exists(path))
        self.assertEqual([], os.listdir(self.drvr._kept_disks.path))

    def test_a_damaged_disk_of_an_instance_not_found_is_kept(self):
        # Who kept it is in the record, which cannot be read: nothing says
        # the instance is gone. A record of a newer release is unreadable
        # too.
        record = self.keep(uuids.unknown)
        path = self.damage(uuids.unknown, json.dumps(dict(
            dataclasses.asdict(record), version=2)))
        self.reclaim()
        self.assertTrue(os.path.isdir(path))

    def test_a_damaged_disk_keeps_its_backing_file_young(self):
        record = self.keep(uuids.shelved)
        self.in_db(uuids.shelved, fx.SNAPSHOT)
        self.damage(uuids.shelved, '{"broken')
        self.assert_pass_keeps_young(record.backing_file)

    def test_a_record_naming_another_instance_is_reclaimed_by_its_name(self):
        record = self.keep(uuids.deleted)
        path = self.damage(uuids.deleted, dataclasses.replace(
            record, instance_uuid=uuids.victim).to_json())
        self.in_db(uuids.victim, fx.SNAPSHOT)
        self.in_db(uuids.deleted, fx.SNAPSHOT, deleted=True)
        self.reclaim()
        self.assertFalse(os.path.exists(path))

    def test_a_record_left_in_a_running_instance_dir_is_removed(self):
        self.keep(uuids.running)
        self.drvr._kept_disks.claim(uuids.running, fx.SNAPSHOT)
        self.in_db(uuids.running, None, host=CONF.host)
        record_file = os.path.join(self.instances_path, uuids.running,
                                   'kept.json')

        self.reclaim()

        self.assertFalse(os.path.exists(record_file))
        self.assertTrue(os.path.exists(os.path.join(
            self.instances_path, uuids.running, 'disk')))

    # -- snapshot_upload = after_offload ------------------------------------

    def pending_in_db(self, instance_uuid, **updates):
        instance = self.in_db(instance_uuid, fx.SNAPSHOT, **updates)
        instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = fx.SNAPSHOT
        return instance

    def quarantined(self, instance_uuid):
        self.keep(instance_uuid)
        self.drvr._kept_disks.claim(instance_uuid, fx.SNAPSHOT)
        return self.drvr._kept_disks.quarantine(instance_uuid, fx.SNAPSHOT)

    def test_a_quarantined_only_copy_is_kept_again_not_deleted(self):
        # The unshelve failed and the instance went to ERROR, but its
        # snapshot never got the data: the disk is all there is.
        path = self.quarantined(uuids.instance)
        instance = self.pending_in_db(uuids.instance,
                                      vm_state=vm_states.ERROR)
        with mock.patch.object(self.drvr, 'remove_guest') as remove_guest:
            self.reclaim()
        remove_guest.assert_called_once_with(instance)
        self.assertFalse(os.path.exists(path))
        self.assertTrue(self.drvr._kept_disks.find(
            uuids.instance, fx.SNAPSHOT).snapshot_pending)

    def test_a_quarantined_disk_of_an_instance_in_error_is_kept_again(self):
        # Still shelved with that snapshot: the disk may be all there is
        # (the snapshot may be gone, which is what made it ERROR).
        path = self.quarantined(uuids.instance)
        self.in_db(uuids.instance, fx.SNAPSHOT, vm_state=vm_states.ERROR)
        with mock.patch.object(self.drvr, 'remove_guest'):
            self.reclaim()
        self.assertFalse(os.path.exists(path))
        self.assertEqual([(uuids.instance, fx.SNAPSHOT)], self.kept())

    def test_a_quarantined_disk_of_a_deleted_instance_is_deleted(self):
        path = self.quarantined(uuids.instance)
        self.in_db(uuids.instance, fx.SNAPSHOT, deleted=True)
        with mock.patch.object(self.drvr, 'remove_guest'):
            self.reclaim()
        self.assertFalse(os.path.exists(path))
        self.assertEqual([], self.kept())

    def test_a_quarantined_disk_whose_guest_stays_is_left(self):
        path = self.quarantined(uuids.instance)
        self.pending_in_db(uuids.instance)
        with mock.patch.object(self.drvr, 'remove_guest',
                               side_effect=ValueError('libvirt is stuck')):
            self.reclaim()
        self.assertTrue(os.path.isdir(path))

    def quarantined_by(self, host, instance_uuid=uuids.instance):
        """A quarantine made by ``host`` (another compute of the storage)."""
        self.cell_hosts.add(host)
        other = disks.make_store(self.instances_path, host)
        self.keep(instance_uuid)
        other.claim(instance_uuid, fx.SNAPSHOT)
        return other.quarantine(instance_uuid, fx.SNAPSHOT)

    def test_another_hosts_quarantine_is_deleted_when_it_is_down(self):
        # Only its host can remove its guest; once that host is down and
        # no instance needs the disk, any host deletes it.
        path = self.quarantined_by('compute-b')
        self.in_db(uuids.instance, fx.SNAPSHOT, deleted=True)
        with mock.patch.object(self.drvr, 'remove_guest') as remove_guest:
            self.reclaim()
        remove_guest.assert_not_called()
        self.assertFalse(os.path.exists(path))

    def test_another_hosts_quarantine_waits_for_it_while_it_is_up(self):
        path = self.quarantined_by('compute-b')
        self.hosts_up.add('compute-b')
        self.in_db(uuids.instance, fx.SNAPSHOT, deleted=True)
        self.reclaim()
        self.assertTrue(os.path.isdir(path))

    def test_a_needed_quarantine_of_a_dead_host_is_kept_and_protected(self):
        # Nobody can say its guest is gone: it is not kept again, but its
        # base file must outlive its host (and its pending data is
        # uploaded from it, see the upload tests).
        path = self.quarantined_by('compute-b')
        self.pending_in_db(uuids.instance)
        self.assert_pass_keeps_young(storage.read_record(path).backing_file)
        self.assertTrue(os.path.isdir(path))

    def test_a_quarantine_of_an_instance_not_found_is_left(self):
        path = self.quarantined(uuids.instance)
        self.cell_hosts = set()
        self.reclaim()
        self.assertTrue(os.path.isdir(path))

    def stage(self, instance_uuid):
        """A kept pending disk put back where an interrupted keep left it."""
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        self.drvr._kept_disks.keep(instance_uuid, fx.SNAPSHOT, 'qcow2',
                                   snapshot_pending=True)
        staging = os.path.join(
            self.drvr._kept_disks.path, '.staging-%s-1234abcd-%s.%s' % (
                self.drvr._kept_disks.host_tag, instance_uuid, fx.SNAPSHOT))
        os.rename(self.drvr._kept_disks.kept_dir(instance_uuid, fx.SNAPSHOT),
                  staging)
        return staging

    def test_a_staged_only_copy_is_published(self):
        staging = self.stage(uuids.instance)
        self.pending_in_db(uuids.instance, vm_state=vm_states.ERROR)
        self.drvr._recovery.run(self.context, at_start=True)
        self.assertFalse(os.path.exists(staging))
        self.assertTrue(self.drvr._kept_disks.find(
            uuids.instance, fx.SNAPSHOT).snapshot_pending)

    def test_a_staged_disk_of_an_instance_in_error_is_published(self):
        # ERROR, still shelved with that snapshot: nothing says the data is
        # elsewhere.
        staging = self.stage(uuids.instance)
        self.in_db(uuids.instance, fx.SNAPSHOT, vm_state=vm_states.ERROR)
        self.drvr._recovery.run(self.context, at_start=True)
        self.assertFalse(os.path.exists(staging))
        self.assertEqual([(uuids.instance, fx.SNAPSHOT)], self.kept())

    def test_a_staged_disk_of_a_deleted_instance_is_deleted(self):
        staging = self.stage(uuids.instance)
        self.in_db(uuids.instance, fx.SNAPSHOT, deleted=True)
        self.drvr._recovery.run(self.context, at_start=True)
        self.assertFalse(os.path.exists(staging))
        self.assertEqual([], self.kept())

    def test_a_staged_only_copy_whose_record_cannot_be_read_stays(self):
        # One EIO at start-up, or a record of a newer release: the only
        # copy of a pending instance was deleted for that.
        staging = self.stage(uuids.instance)
        self.pending_in_db(uuids.instance)
        with open(os.path.join(staging, storage.RECORD_NAME), 'w') as f:
            f.write('{"version": 2}')
        before = disks.tree(staging)
        self.drvr._recovery.run(self.context, at_start=True)
        self.assertEqual(before, disks.tree(staging))
        self.assertIn('Leaving %s in place' % staging,
                      self.stdlog.logger.output)

    def test_a_staged_disk_survives_a_read_error(self):
        staging = self.stage(uuids.instance)
        self.pending_in_db(uuids.instance)
        with mock.patch.object(storage, '_load_record',
                               side_effect=OSError(5, 'Input/output error')):
            self.drvr._recovery.run(self.context, at_start=True)
        self.assertTrue(os.path.isdir(staging))

    def test_a_staged_disk_of_an_instance_not_found_stays(self):
        staging = self.stage(uuids.instance)
        self.cell_hosts = set()
        self.drvr._recovery.run(self.context, at_start=True)
        self.assertTrue(os.path.isdir(staging))

    def test_an_interrupted_unshelve_of_an_only_copy_is_kept_pending(self):
        # A restart during the spawn on the claimed disk: rolled back with
        # the disk kept again, still waiting for its upload.
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        self.drvr._kept_disks.keep(uuids.instance, fx.SNAPSHOT, 'qcow2',
                                   snapshot_pending=True)
        self.drvr._kept_disks.claim(uuids.instance, fx.SNAPSHOT)
        instance = self.pending_in_db(uuids.instance, host=CONF.host,
                                      task_state=task_states.SPAWNING)
        self.drvr.virtapi.reportclient = mock.Mock()
        with mock.patch.object(self.drvr._recovery,
                               '_free_host_resources') as free:
            self.drvr._recovery.run(self.context, at_start=True)
        free.assert_called_once_with(self.context, instance)
        self.assertTrue(self.drvr._kept_disks.find(
            uuids.instance, fx.SNAPSHOT).snapshot_pending)
        self.assertFalse(os.path.exists(os.path.join(self.instances_path,
                                                     uuids.instance)))
        self.assertEqual([(uuids.instance, [task_states.SPAWNING])],
                         self.saved)
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.PENDING_UPLOAD_KEY])

    # -- an unshelve a restart cut short -------------------------------------

    def spawning(self, guest_started, pending=False):
        """An unshelve on a claimed disk of this host, cut short."""
        store = self.drvr._kept_disks
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        store.keep(uuids.instance, fx.SNAPSHOT, snapshot_pending=pending)
        store.claim(uuids.instance, fx.SNAPSHOT)
        if guest_started:
            store.mark_unshelved(uuids.instance)
        instance = self.in_db(uuids.instance, fx.SNAPSHOT, host=CONF.host,
                              task_state=task_states.SPAWNING,
                              image_ref=fx.SNAPSHOT, key_data=None,
                              key_name='mykey')
        instance.system_metadata['image_base_image_ref'] = uuids.base_image
        instance.keypairs = objects.KeyPairList(objects=[
            objects.KeyPair(name='mykey', public_key='ssh-ed25519 AAAA')])
        if pending:
            instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = fx.SNAPSHOT
        self.drvr.virtapi.reportclient = mock.Mock()
        self.glance = self.useFixture(fx.FakeGlance())
        self.glance.add(fx.SNAPSHOT, status='queued' if pending else 'active')
        self.glance.deleted = []
        self.stub_out('nova.image.glance.API.delete',
                      lambda api, context, image_id:
                      self.glance.deleted.append(image_id))
        return instance

    def test_an_unshelve_cut_after_its_guest_started_is_finished(self):
        # Killed after Nova deleted the snapshot, before its final save:
        # rolled back, the instance would be offloaded naming a deleted
        # image, and the next unshelve would go to ERROR.
        instance = self.spawning(guest_started=True)
        with mock.patch.object(self.drvr, 'get_info') as get_info, \
                mock.patch.object(self.drvr._recovery,
                                  '_free_host_resources') as free:
            get_info.return_value.state = 1
            self.drvr._recovery.run(self.context, at_start=True)
        free.assert_not_called()
        self.assertEqual(vm_states.ACTIVE, instance.vm_state)
        self.assertIsNone(instance.task_state)
        self.assertEqual(1, instance.power_state)
        self.assertEqual(CONF.host, instance.host)
        self.assertEqual(uuids.base_image, instance.image_ref)
        self.assertEqual('ssh-ed25519 AAAA', instance.key_data)
        self.assertNotIn('shelved_image_id', instance.system_metadata)
        self.assertNotIn(shelved.KEPT_DISK_KEY, instance.system_metadata)
        self.assertEqual([(uuids.instance, [task_states.SPAWNING])],
                         self.saved)
        self.assertEqual([fx.SNAPSHOT], self.glance.deleted)
        self.drvr.virtapi.reportclient.delete_allocation_for_instance.\
            assert_not_called()
        inst_dir = os.path.join(self.instances_path, uuids.instance)
        self.assertEqual(['disk', 'disk.info'], sorted(os.listdir(inst_dir)))

    def test_a_finished_unshelve_of_a_pending_disk_unprotects_first(self):
        self.spawning(guest_started=True, pending=True)
        self.glance.images[fx.SNAPSHOT]['protected'] = True
        with mock.patch.object(self.drvr, 'get_info'):
            self.drvr._recovery.run(self.context, at_start=True)
        self.assertEqual([(fx.SNAPSHOT, False)], self.glance.protections)
        self.assertEqual([fx.SNAPSHOT], self.glance.deleted)

    def test_an_unshelve_cut_before_its_guest_started_is_undone(self):
        instance = self.spawning(guest_started=False)
        with mock.patch.object(self.drvr._recovery,
                               '_free_host_resources') as free:
            self.drvr._recovery.run(self.context, at_start=True)
        free.assert_called_once_with(self.context, instance)
        self.assertEqual(vm_states.SHELVED_OFFLOADED, instance.vm_state)
        self.assertIsNone(instance.host)
        self.assertEqual(uuids.base_image, instance.image_ref)
        self.assertEqual('ssh-ed25519 AAAA', instance.key_data)
        self.assertEqual([], self.glance.deleted)
        self.assertEqual([(uuids.instance, fx.SNAPSHOT)], self.kept())
        self.drvr.virtapi.reportclient.delete_allocation_for_instance.\
            assert_called_once_with(self.context, uuids.instance, force=True)

    def test_the_roll_back_frees_what_the_unshelve_acquired(self):
        # As Nova's failed unshelve and its offload free them: the guest
        # with its host side, the port bindings, the volume connections.
        instance = self.spawning(guest_started=False)
        instance.info_cache = objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo([
                network_model.VIF(id=uuids.port)]))
        volume = fake_block_device.fake_bdm_object(self.context, {
            'id': 1, 'source_type': 'volume', 'destination_type': 'volume',
            'volume_id': uuids.volume, 'attachment_id': uuids.attachment,
            'instance_uuid': uuids.instance, 'connection_info': '{}',
            'device_name': '/dev/vdb'})
        # Nova 31's fake_bdm_object leaves attachment_id out.
        volume.attachment_id = uuids.attachment
        self.stub_out(
            'nova.objects.BlockDeviceMappingList.get_by_instance_uuid',
            lambda cls, context, instance_uuid: (
                objects.BlockDeviceMappingList(objects=[volume])))
        self.stub_out('nova.objects.BlockDeviceMapping.save',
                      lambda bdm: None)
        neutron_api = self.useFixture(fixtures.MockPatch(
            'nova.network.neutron.API')).mock.return_value
        cinder_api = self.useFixture(fixtures.MockPatch(
            'nova.volume.cinder.API')).mock.return_value
        cinder_api.attachment_create.return_value = {'id': uuids.new}
        with mock.patch.object(self.drvr, 'destroy') as destroy:
            self.drvr._recovery.run(self.context, at_start=True)
        destroy.assert_called_once_with(
            self.context, instance, instance.get_network_info(),
            block_device_info=mock.ANY, destroy_disks=False,
            destroy_secrets=False)
        neutron_api.unbind_ports.assert_called_once_with(
            self.context, [uuids.port], detach=False)
        cinder_api.attachment_delete.assert_called_once_with(
            self.context, uuids.attachment)
        self.assertEqual(uuids.new, volume.attachment_id)
        self.assertEqual([(uuids.instance, fx.SNAPSHOT)], self.kept())

    def test_an_offload_run_again_frees_the_accelerators(self):
        # The API passes the instance's accelerator requests to the offload,
        # which deletes them; the re-run after a restart did not.
        self.keep(uuids.instance)
        self.in_db(uuids.instance, fx.SNAPSHOT, host=CONF.host,
                   vm_state=vm_states.SHELVED,
                   task_state=task_states.SHELVING_OFFLOADING,
                   flavor=objects.Flavor(extra_specs={
                       'accel:device_profile': 'gpu'}))
        cyborg = self.useFixture(fixtures.MockPatch(
            'nova.accelerator.cyborg.get_client')).mock.return_value
        cyborg.get_arq_uuids_for_instance.return_value = [uuids.arq]
        rpc = self.useFixture(fixtures.MockPatch(
            'nova.compute.rpcapi.ComputeAPI')).mock.return_value
        self.drvr._recovery.run(self.context, at_start=True)
        rpc.shelve_offload_instance.assert_called_once_with(
            self.context, self.db[uuids.instance], clean_shutdown=False,
            accel_uuids=[uuids.arq])

    def test_an_offload_that_failed_after_the_keep_is_run_again(self):
        # Its storage client died after the disk left the instance dir:
        # Nova reverted the task and left the instance shelved on this host,
        # the recovery published the disk. Started again, the instance
        # would find no disk; offloaded again, it is unshelved on it.
        self.keep(uuids.instance)
        instance, rpc = self.pass_over_shelved_instance()
        self.assertEqual(task_states.SHELVING_OFFLOADING, instance.task_state)
        self.assertIn((uuids.instance, [None]), self.saved)
        rpc.shelve_offload_instance.assert_called_once_with(
            self.context, instance, clean_shutdown=False, accel_uuids=[])
        self.assertIn('The shelve-offload failed after the root disk was '
                      'kept; offloading again.', self.stdlog.logger.output)
        self.assertNotIn('A restart interrupted', self.stdlog.logger.output)

    def test_a_shelved_instance_with_its_disk_in_place_is_left_alone(self):
        # Shelved, not offloaded, its disk where it runs from: a kept disk
        # of the same snapshot does not make it offload.
        self.keep(uuids.instance)
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        self.assert_left_alone(*self.pass_over_shelved_instance())

    def test_a_shelved_instance_without_a_kept_disk_is_left_alone(self):
        self.assert_left_alone(*self.pass_over_shelved_instance())

    def pass_over_shelved_instance(self):
        """(instance, compute RPC) after a pass over a SHELVED instance."""
        instance = self.in_db(uuids.instance, fx.SNAPSHOT, marked=False,
                              host=CONF.host, vm_state=vm_states.SHELVED)
        rpc = self.useFixture(fixtures.MockPatch(
            'nova.compute.rpcapi.ComputeAPI')).mock.return_value
        self.reclaim()
        return instance, rpc

    def assert_left_alone(self, instance, rpc):
        self.assertIsNone(instance.task_state)
        rpc.shelve_offload_instance.assert_not_called()

    # -- claims left in instance directories -------------------------------

    def left_behind(self, fenced_by=None, pending=False):
        """A claimed disk a failed unshelve could not give back."""
        store = self.drvr._kept_disks
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        store.keep(uuids.instance, fx.SNAPSHOT, snapshot_pending=pending)
        store.claim(uuids.instance, fx.SNAPSHOT)
        instance = self.in_db(uuids.instance, fx.SNAPSHOT,
                              vm_state=vm_states.ERROR if fenced_by else
                              vm_states.SHELVED_OFFLOADED)
        if fenced_by:
            instance.system_metadata[shelved.FENCED_KEY] = fenced_by
        if pending:
            instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = fx.SNAPSHOT
        return instance

    def test_a_claim_left_behind_is_given_back_by_any_host(self):
        instance = self.left_behind(pending=True)
        self.reclaim()
        self.assertTrue(self.drvr._kept_disks.find(
            uuids.instance, fx.SNAPSHOT).snapshot_pending)
        self.assertFalse(os.path.exists(os.path.join(self.instances_path,
                                                     uuids.instance)))
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.KEPT_DISK_KEY])

    def test_a_fence_of_this_host_is_lifted_once_the_guest_is_gone(self):
        instance = self.left_behind(fenced_by=CONF.host)
        with mock.patch.object(self.drvr, 'remove_guest') as remove_guest:
            self.reclaim()
        remove_guest.assert_called_once_with(instance)
        self.assertEqual(vm_states.SHELVED_OFFLOADED, instance.vm_state)
        self.assertNotIn(shelved.FENCED_KEY, instance.system_metadata)
        self.assertEqual([(uuids.instance, fx.SNAPSHOT)], self.kept())
        self.assertEqual([(uuids.instance, [None])], self.saved)

    def test_a_fence_stays_while_the_guest_cannot_be_removed(self):
        instance = self.left_behind(fenced_by=CONF.host)
        with mock.patch.object(self.drvr, 'remove_guest',
                               side_effect=ValueError('libvirt is stuck')):
            self.reclaim()
        self.assertEqual(vm_states.ERROR, instance.vm_state)
        self.assertIsNotNone(self.drvr._kept_disks.claimed_record(
            uuids.instance))
        self.assertEqual([], self.saved)

    def test_another_hosts_fence_is_left_to_it(self):
        self.left_behind(fenced_by='compute-b')
        with mock.patch.object(self.drvr, 'remove_guest') as remove_guest:
            self.reclaim()
        remove_guest.assert_not_called()
        self.assertIsNotNone(self.drvr._kept_disks.claimed_record(
            uuids.instance))

    def test_a_claim_left_behind_by_a_deleted_instance_is_deleted(self):
        instance = self.left_behind()
        instance.deleted = True
        self.reclaim()
        self.assertFalse(os.path.exists(os.path.join(self.instances_path,
                                                     uuids.instance)))

    def test_a_claim_of_an_instance_unshelving_again_is_left(self):
        self.left_behind().task_state = task_states.SPAWNING
        self.reclaim()
        self.assertIsNotNone(self.drvr._kept_disks.claimed_record(
            uuids.instance))

    def test_a_pending_mark_of_an_uploaded_disk_is_cleared(self):
        # The upload finished, the record says so, and a restart came
        # before the mark was cleared.
        self.keep(uuids.shelved)
        owner = self.pending_in_db(uuids.shelved)
        self.assertEqual([owner], self.reclaim())
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, owner.system_metadata)
        self.assertEqual([(uuids.shelved, [None])], self.saved)
        self.assertIn('cleared its pending mark', self.stdlog.logger.output)

    def test_the_pending_mark_of_a_pending_disk_stays(self):
        disks.make_qcow2_instance(self.instances_path, uuids.shelved)
        self.drvr._kept_disks.keep(uuids.shelved, fx.SNAPSHOT, 'qcow2',
                                   snapshot_pending=True)
        owner = self.pending_in_db(uuids.shelved)
        self.assertEqual([owner], self.reclaim())
        self.assertEqual(fx.SNAPSHOT,
                         owner.system_metadata[shelved.PENDING_UPLOAD_KEY])
        self.assertEqual([], self.saved)


class TestStorageSharing(fx.DriverTestCase):
    """Probes on the storage against the storage group of the aggregates."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.manage_image_cache'))
        self.useFixture(fixtures.MockPatchObject(
            self.drvr._recovery, 'run', return_value=[]))
        self.peers = ['compute-b']
        self.stub_out('nova_shelve_accel.storage_groups.storage_of_host',
                      lambda context, host: (['g1'], self.peers))
        storage_groups.this_host.forget()
        self.addCleanup(storage_groups.this_host.forget)

    def other_host_on_the_storage(self, host):
        storage.KeptDiskStore(self.instances_path, '_shelve_kept', '_base',
                              host).leave_probe()

    def passes(self, count=1):
        for _ in range(count):
            self.drvr.manage_image_cache(self.context, [])
            storage_groups.this_host.forget()

    def test_init_host_leaves_this_hosts_probe(self):
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.init_host'))
        self.drvr.init_host(fx.NODE)
        self.assertEqual([CONF.host],
                         self.drvr._kept_disks.hosts_sharing())

    def test_a_group_that_shares_the_storage_is_not_reported(self):
        self.other_host_on_the_storage('compute-b')
        self.passes()
        self.passes()
        self.assertEqual(sorted([CONF.host, 'compute-b']),
                         self.drvr._kept_disks.hosts_sharing())
        self.assertNotIn('leave no probe', self.stdlog.logger.output)
        # Said once, at the first pass.
        self.assertEqual(1, self.stdlog.logger.output.count(
            'Every host of the storage group of this host leaves its probe'))

    def test_a_host_of_the_group_missing_is_reported_once(self):
        self.passes(count=2)
        output = self.stdlog.logger.output
        self.assertEqual(1, output.count(
            'Hosts compute-b are in the storage group of this host but '
            'leave no probe in %s' % self.drvr._kept_disks.path))
        # Once it shares the storage, that is said, once.
        self.other_host_on_the_storage('compute-b')
        self.passes(count=2)
        self.assertEqual(1, self.stdlog.logger.output.count(
            'Every host of the storage group of this host leaves its probe'))

    def test_a_host_outside_the_group_on_the_storage_is_reported(self):
        self.other_host_on_the_storage('compute-b')
        self.other_host_on_the_storage('compute-x')
        self.passes()
        self.assertIn('Hosts compute-x share the storage of this host',
                      self.stdlog.logger.output)
        self.assertNotIn('compute-b', self.stdlog.logger.output)

    def test_groups_that_cannot_be_read_are_not_compared(self):
        self.stub_out('nova_shelve_accel.storage_groups.storage_of_host',
                      mock.Mock(side_effect=ValueError('conductor away')))
        self.passes()
        self.assertNotIn('Hosts', self.stdlog.logger.output)
        self.assertEqual([CONF.host], self.drvr._kept_disks.hosts_sharing())

    def test_a_storage_refusing_the_probe_is_logged_and_the_pass_goes_on(
            self):
        with mock.patch.object(self.drvr._kept_disks, 'leave_probe',
                               side_effect=PermissionError(
                                   13, 'Permission denied')):
            self.passes()
        self.assertIn('Could not leave the probe of this host in %s'
                      % self.drvr._kept_disks.path,
                      self.stdlog.logger.output)
        self.assertNotIn('are in the storage group', self.stdlog.logger.output)


class TestUnshelveOnKeptDisk(fx.DriverTestCase):
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
            system_metadata={'shelved_image_id': fx.SNAPSHOT,
                             shelved.KEPT_DISK_KEY: fx.SNAPSHOT}, **updates)

    def spawn(self, instance):
        self.drvr.spawn(self.context, instance, None, [], None, {})

    def test_claims_and_spawns_on_the_kept_disk(self):
        self.keep(uuids.instance)
        instance = self.offloaded()
        self.spawn(instance)
        # The claim's record says the guest started, until Nova saved the
        # instance (the recovery removes it then).
        self.assertEqual(['disk', 'disk.info', storage.UNSHELVED_MARK],
                         sorted(os.listdir(self.inst_dir)))
        self.assertTrue(self.store.unshelved(uuids.instance))
        self.assertEqual([], os.listdir(self.store.path))
        self.assertNotIn(shelved.KEPT_DISK_KEY, instance.system_metadata)

    def assert_not_claimed(self, images_type, use_cow_images=True):
        self.flags(images_type=images_type, group='libvirt')
        self.flags(use_cow_images=use_cow_images)
        self.spawn(self.offloaded())
        self.assertTrue(os.path.isdir(self.store.kept_dir(uuids.instance,
                                                          fx.SNAPSHOT)))
        self.assertFalse(os.path.exists(self.inst_dir))
        self.stock_spawn.assert_called_once()
        self.assertIn('stores root disks as', self.stdlog.logger.output)

    def test_a_raw_kept_disk_is_not_claimed_by_a_qcow2_host(self):
        # A guest that wrote a qcow2 header into its raw disk must not get
        # a backing file of its choice opened on the host.
        disks.make_raw_instance(self.instances_path, uuids.instance)
        self.store.keep(uuids.instance, fx.SNAPSHOT, 'raw')
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
                                                            fx.SNAPSHOT)))

    def test_a_record_that_cannot_be_removed_does_not_fail_the_unshelve(self):
        # The guest runs on the disk: failing now would leave it running
        # while the instance is offloaded again and its disk claimable.
        self.keep(uuids.instance)
        with mock.patch.object(self.store, 'mark_unshelved',
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
        self.assertIsNotNone(self.store.find(uuids.instance, fx.SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))

    def test_a_guest_that_cannot_be_removed_quarantines_the_disk(self):
        # Never two writers: neither a claim nor a stock spawn may find a
        # disk whose guest may still run.
        self.keep(uuids.instance)
        self.stock_spawn.side_effect = ValueError('guest crashed')
        with mock.patch.object(self.drvr, 'remove_guest',
                               side_effect=ValueError('libvirt is stuck')):
            self.assertRaises(ValueError, self.spawn, self.offloaded())
        self.assertIsNone(self.store.find(uuids.instance, fx.SNAPSHOT))
        self.assertFalse(self.store.claim(uuids.instance, fx.SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))
        [quarantined] = os.listdir(self.store.path)
        self.assertTrue(quarantined.startswith('.quarantine-'))
        self.assertTrue(os.path.isfile(os.path.join(
            self.store.path, quarantined, 'disk')))

    def test_a_guest_and_a_disk_that_cannot_be_moved_fence_the_instance(
            self):
        # Neither the guest removed nor the directory moved away: a stock
        # spawn on any host of the storage would start a second guest on
        # the disk. A log line is no fence: the instance goes to ERROR.
        self.keep(uuids.instance)
        self.stock_spawn.side_effect = ValueError('guest crashed')
        saved = []
        self.stub_out('nova.objects.Instance.save',
                      lambda inst, expected_task_state=None: saved.append(
                          (inst.vm_state, expected_task_state)))
        instance = self.offloaded(task_state=task_states.SPAWNING)
        with mock.patch.object(self.drvr, 'remove_guest',
                               side_effect=ValueError('libvirt is stuck')), \
                mock.patch.object(self.store, 'quarantine',
                                  side_effect=OSError(5, 'I/O error')):
            self.assertRaises(ValueError, self.spawn, instance)
        self.assertEqual(vm_states.ERROR, instance.vm_state)
        self.assertEqual(CONF.host,
                         instance.system_metadata[shelved.FENCED_KEY])
        self.assertEqual([(vm_states.ERROR, [task_states.SPAWNING])], saved)
        self.assertIsNotNone(self.store.claimed_record(uuids.instance))

    def test_a_stock_spawn_does_not_use_a_claim_left_behind(self):
        # A failed unshelve could not give the disk back: Nova's image
        # backend would start the guest on whatever disk it finds there.
        self.keep(uuids.instance)
        self.store.claim(uuids.instance, fx.SNAPSHOT)
        error = self.assertRaises(exception.InstanceUnacceptable,
                                  self.spawn, self.offloaded())
        self.assertIn('a failed unshelve left its kept root disk in %s'
                      % self.inst_dir, str(error))
        self.stock_spawn.assert_not_called()

    def test_nova_asking_the_power_state_after_spawn_is_a_cut_point(self):
        self.keep(uuids.instance)
        instance = self.offloaded()
        self.spawn(instance)
        points = []
        with mock.patch('nova_shelve_accel.faults.cut_point',
                        points.append), \
                mock.patch('nova.virt.libvirt.driver.LibvirtDriver.get_info'):
            self.drvr.get_info(instance)
            self.drvr.get_info(instance)
        self.assertEqual(['spawn.snapshot_deleted'], points)

    def test_the_reuse_of_a_pending_disk_lifts_the_protection(self):
        # Nova deletes the queued snapshot after the spawn; Glance refuses
        # while it is protected.
        glance = self.useFixture(fx.FakeGlance())
        glance.add(fx.SNAPSHOT)
        glance.images[fx.SNAPSHOT]['protected'] = True
        self.keep(uuids.instance)
        instance = self.offloaded()
        instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = fx.SNAPSHOT
        self.spawn(instance)
        self.assertEqual([(fx.SNAPSHOT, False)], glance.protections)

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


class TestKeepAtOffload(fx.DriverTestCase):

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
        self.drvr._keep_root_disk(None, instance, None)
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.KEPT_DISK_KEY])
        self.assertNotIn('will download', self.stdlog.logger.output)


class TestSnapshotAtShelve(fx.DriverTestCase):
    """snapshot(): skipped only for a shelve whose disk will be kept."""

    def setUp(self):
        super().setUp()
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.flags(shelved_offload_time=0)
        self.stock_snapshot = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.snapshot')).mock
        self.stub_out(
            'nova.objects.BlockDeviceMappingList.get_by_instance_uuid',
            lambda cls, context, instance_uuid: (
                objects.BlockDeviceMappingList(objects=[])))
        self.glance = self.useFixture(fx.FakeGlance())
        self.glance.add(fx.SNAPSHOT)
        # This host's storage group, with another host to resume uploads.
        self.peers = ['compute-b']
        self.stub_out('nova_shelve_accel.storage_groups.storage_of_host',
                      lambda context, host: (['g1'], self.peers))
        storage_groups.this_host.forget()
        self.addCleanup(storage_groups.this_host.forget)

    def shelving(self, sysmeta=None, **updates):
        # The manager sets shelved_image_id only after the snapshot.
        updates.setdefault('task_state', task_states.SHELVING)
        return self.instance(uuid=uuids.instance,
                             system_metadata=sysmeta or {}, **updates)

    def snapshot(self, instance):
        self.drvr.snapshot(self.context, instance, fx.SNAPSHOT,
                           mock.sentinel.update_task_state)

    def assert_stock_snapshot(self, instance):
        self.snapshot(instance)
        self.stock_snapshot.assert_called_once_with(
            self.context, instance, fx.SNAPSHOT,
            mock.sentinel.update_task_state)
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, instance.system_metadata)

    def test_a_shelve_that_keeps_the_disk_skips_the_snapshot(self):
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        instance = self.shelving()
        self.snapshot(instance)
        self.stock_snapshot.assert_not_called()
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.PENDING_UPLOAD_KEY])
        self.assertIn('Shelve skips the snapshot', self.stdlog.logger.output)
        # Protected by the offload, once the shelve has recorded the image
        # (killed before, a shelve leaves an image nothing names).
        self.assertEqual([], self.glance.protections)

    def test_a_host_alone_on_its_storage_takes_the_snapshot(self):
        # Were it to stop for good, nobody could upload the only copy.
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        self.peers = []
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('no other host shares its storage group',
                      self.stdlog.logger.output)

    def test_storage_groups_that_cannot_be_read_take_the_snapshot(self):
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        self.stub_out('nova_shelve_accel.storage_groups.storage_of_host',
                      mock.Mock(side_effect=ValueError('conductor away')))
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('conductor away', self.stdlog.logger.output)

    def test_at_shelve_takes_the_snapshot(self):
        self.flags(snapshot_upload='at_shelve', group='shelve_accel')
        self.assert_stock_snapshot(self.shelving())

    def test_a_delayed_offload_takes_the_snapshot(self):
        # The disk stays in the instance directory until the offload, which
        # may never come: the snapshot must hold the data.
        for offload_time in (3600, -1):
            self.stock_snapshot.reset_mock()
            self.flags(shelved_offload_time=offload_time)
            self.assert_stock_snapshot(self.shelving())

    def test_create_image_takes_the_snapshot(self):
        self.assert_stock_snapshot(self.shelving(
            task_state=task_states.IMAGE_SNAPSHOT))

    def test_a_disk_that_will_not_be_kept_is_snapshotted(self):
        self.flags(partial_offload=False, group='shelve_accel')
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('the root disk will not be kept (partial offload is '
                      'disabled', self.stdlog.logger.output)

    def test_a_storage_below_the_floor_takes_the_snapshot(self):
        self.flags(free_space_floor_percent=100, group='shelve_accel')
        self.assert_stock_snapshot(self.shelving())

    def test_a_separate_kernel_takes_the_snapshot(self):
        self.assert_stock_snapshot(self.shelving(kernel_id=uuids.kernel))

    def test_a_stale_pending_mark_is_dropped_with_the_stock_snapshot(self):
        # Left by an earlier shelve: the new snapshot is taken, so nothing
        # is pending for it.
        self.flags(free_space_floor_percent=100, group='shelve_accel')
        self.assert_stock_snapshot(self.shelving(
            sysmeta={shelved.PENDING_UPLOAD_KEY: fx.OLD_SNAPSHOT}))

    def test_the_decision_is_taken_for_the_new_snapshot(self):
        # shelved_image_id still names the previous shelve's snapshot, or
        # nothing: the decision must not depend on it.
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        instance = self.shelving(sysmeta={'shelved_image_id': fx.OLD_SNAPSHOT})
        self.snapshot(instance)
        self.stock_snapshot.assert_not_called()
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.PENDING_UPLOAD_KEY])

    # The offload keeps only what keep() accepts: shelve checks the same,
    # or the disk would have to be uploaded before the offload deletes it.

    def test_a_disk_whose_format_nova_did_not_record_is_snapshotted(self):
        disks.make_qcow2_instance(self.instances_path, uuids.instance,
                                  disk_info=None)
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('Nova recorded no format for', self.stdlog.logger.output)

    def test_a_disk_backed_outside_the_image_cache_is_snapshotted(self):
        elsewhere = disks.make_base(
            self.instances_path,
            directory=os.path.join(self.instances_path, 'elsewhere'))
        disks.make_qcow2_instance(self.instances_path, uuids.instance,
                                  backing=elsewhere)
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('outside the image cache', self.stdlog.logger.output)

    def test_a_missing_instance_directory_is_snapshotted(self):
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('does not exist', self.stdlog.logger.output)

    def test_the_domain_format_must_agree_with_disk_info(self):
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        self.stub_out(
            'nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver.'
            '_domain_disk_format', lambda drvr, instance: 'raw')
        self.assert_stock_snapshot(self.shelving())
        self.assertIn('its libvirt domain as raw', self.stdlog.logger.output)

    def test_a_raw_disk_on_a_qcow2_host_skips_the_snapshot(self):
        # The format Nova recorded for the disk decides, not the backend the
        # host now gives new disks.
        disks.make_raw_instance(self.instances_path, uuids.instance)
        instance = self.shelving()
        self.snapshot(instance)
        self.stock_snapshot.assert_not_called()


class OffloadTestCase(fx.DriverTestCase):
    """destroy() of a shelve-offload, on real instance directories.

    The stock destroy is reduced to what it does to the files: it deletes
    the instance directory through ``delete_instance_files``.
    """

    def setUp(self):
        super().setUp()
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.glance = self.useFixture(fx.FakeGlance())
        self.glance.add(fx.SNAPSHOT)
        self.stub_out(
            'nova.virt.libvirt.driver.LibvirtDriver.destroy',
            lambda drvr, context, instance, network_info, **kwargs: (
                drvr.delete_instance_files(instance)))
        self.store = self.drvr._kept_disks
        self.inst_dir = os.path.join(self.instances_path, uuids.instance)
        self.disk = fx.make_disk_with_data(self.instances_path, uuids.instance)
        self.schedule = self.useFixture(fixtures.MockPatchObject(
            self.drvr._uploads, 'schedule')).mock

    def offloading(self, pending=True, **updates):
        sysmeta = {'shelved_image_id': fx.SNAPSHOT}
        if pending:
            sysmeta[shelved.PENDING_UPLOAD_KEY] = fx.SNAPSHOT
        return self.instance(uuid=uuids.instance, system_metadata=sysmeta,
                             task_state=task_states.SHELVING_OFFLOADING,
                             **updates)

    def offload(self, instance):
        self.drvr.destroy(self.context, instance, [])


class TestOffloadAfterSkippedSnapshot(OffloadTestCase):

    def test_the_disk_is_kept_pending_and_its_upload_scheduled(self):
        self.flags(snapshot_upload_delay=30, group='shelve_accel')
        instance = self.offloading()
        self.offload(instance)
        # The queued image is the only image of the data until the upload:
        # nobody may delete it meanwhile.
        self.assertEqual([(fx.SNAPSHOT, True)], self.glance.protections)
        record = self.store.find(uuids.instance, fx.SNAPSHOT)
        self.assertTrue(record.snapshot_pending)
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.KEPT_DISK_KEY])
        self.schedule.assert_called_once_with(
            self.context, uuids.instance, fx.SNAPSHOT, delay=30)
        self.assertEqual([], self.glance.updates)

    def test_an_image_that_cannot_be_protected_is_said_so(self):
        self.glance.protect_error = exception.ImageNotAuthorized(
            image_id=fx.SNAPSHOT)
        instance = self.offloading()
        self.offload(instance)
        self.assertTrue(self.store.find(uuids.instance,
                                        fx.SNAPSHOT).snapshot_pending)
        self.assertIn('could not be protected', self.stdlog.logger.output)
        self.assertIn('kept restore %s' % uuids.instance,
                      self.stdlog.logger.output)

    def test_a_disk_kept_after_a_stock_snapshot_is_not_pending(self):
        self.offload(self.offloading(pending=False))
        self.assertFalse(self.store.find(uuids.instance,
                                         fx.SNAPSHOT).snapshot_pending)
        self.schedule.assert_not_called()
        self.assertEqual([], self.glance.protections)

    def test_a_pending_mark_of_an_older_snapshot_is_not_pending(self):
        instance = self.offloading(pending=False)
        instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = fx.OLD_SNAPSHOT
        self.offload(instance)
        self.assertFalse(self.store.find(uuids.instance,
                                         fx.SNAPSHOT).snapshot_pending)
        self.schedule.assert_not_called()

    def refuse_keeps(self):
        """Make every keep fail: a file stands where kept disks go."""
        with open(self.store.path, 'w') as f:
            f.write('not a directory')

    def test_a_refused_keep_uploads_the_disk_before_deleting_it(self):
        self.refuse_keeps()
        expected = fx.converted(self, self.disk)
        instance = self.offloading()

        self.offload(instance)

        self.assertEqual(expected, self.glance.data[fx.SNAPSHOT])
        self.assertEqual('active', self.glance.images[fx.SNAPSHOT]['status'])
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, instance.system_metadata)
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual([], self.store.list_kept())
        self.schedule.assert_not_called()
        self.assertIn('before the offload deletes it',
                      self.stdlog.logger.output)

    def test_a_failed_upload_before_delete_fails_the_offload(self):
        self.refuse_keeps()
        self.glance.error = ConnectionError('glance is down')
        instance = self.offloading()
        before = disks.tree(self.inst_dir)

        self.assertRaises(ConnectionError, self.offload, instance)

        self.assertEqual(before, disks.tree(self.inst_dir))
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.PENDING_UPLOAD_KEY])
        self.assertEqual('queued', self.glance.images[fx.SNAPSHOT]['status'])

    def test_a_root_disk_that_is_a_link_fails_the_offload(self):
        # Nothing to upload from: the offload fails rather than delete the
        # directory, and the link's target is neither read nor touched.
        target = os.path.join(self.instances_path, 'host-file')
        disks.add_files(self.instances_path, 'host-file')
        before = disks.tree(self.instances_path)['host-file']
        os.unlink(self.disk)
        os.symlink(target, self.disk)

        error = self.assertRaises(exception.NovaException, self.offload,
                                  self.offloading())

        self.assertIn('is not there to upload into snapshot %s' % fx.SNAPSHOT,
                      str(error))
        self.assertTrue(os.path.islink(self.disk))
        self.assertEqual(before, disks.tree(self.instances_path)['host-file'])
        self.assertEqual([], self.glance.updates)

    def test_a_refused_keep_without_pending_snapshot_just_deletes(self):
        self.refuse_keeps()
        self.offload(self.offloading(pending=False))
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual([], self.glance.updates)
        self.assertIn('Unshelve will download snapshot %s' % fx.SNAPSHOT,
                      self.stdlog.logger.output)

    def test_a_disk_not_to_keep_any_more_is_uploaded_before_delete(self):
        # The storage filled up between the shelve and its offload.
        expected = fx.converted(self, self.disk)
        self.flags(free_space_floor_percent=100, group='shelve_accel')
        instance = self.offloading()

        self.offload(instance)

        self.assertEqual(expected, self.glance.data[fx.SNAPSHOT])
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, instance.system_metadata)
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual([], self.store.list_kept())

    def test_a_qcow2_disk_on_a_host_switched_to_flat_is_kept_as_qcow2(self):
        self.flags(images_type='flat', group='libvirt')
        self.offload(self.offloading())
        record = self.store.find(uuids.instance, fx.SNAPSHOT)
        self.assertEqual('qcow2', record.disk_format)
        self.assertEqual('0123456789abcdef', record.backing_file)

    def test_the_upload_before_delete_reads_the_recorded_format(self):
        # A qcow2 disk on a host since switched to flat: read as raw, the
        # upload would hold the overlay file alone, without the base data.
        self.flags(images_type='flat', group='libvirt')
        self.refuse_keeps()
        expected = fx.converted(self, self.disk, source_format='qcow2')

        self.offload(self.offloading())

        self.assertEqual(expected, self.glance.data[fx.SNAPSHOT])
        self.assertEqual('qcow2',
                         self.glance.images[fx.SNAPSHOT]['disk_format'])

    def test_a_raw_disk_with_a_guest_written_qcow2_header_stays_raw(self):
        # The guest of a raw disk wrote a qcow2 header naming a host file as
        # its backing file. Read as qcow2 (the host's backend, or a probe),
        # the upload would carry the host file into the user's image.
        host_file = os.path.join(self.instances_path, 'host-secret')
        with open(host_file, 'wb') as f:
            f.write(b'SECRET' * 1024)
        shutil.rmtree(self.inst_dir)
        disk = disks.make_raw_instance(self.instances_path, uuids.instance)
        header = os.path.join(self.instances_path, 'header.qcow2')
        disks.qemu_img('create', '-q', '-f', 'qcow2', '-b', host_file,
                       '-F', 'raw', header, str(disks.DISK_SIZE))
        with open(header, 'rb') as src, open(disk, 'r+b') as dst:
            dst.write(src.read(4096))
        os.unlink(header)
        with open(disk, 'rb') as f:
            expected = f.read()
        self.refuse_keeps()

        self.offload(self.offloading())

        self.assertEqual(expected, self.glance.data[fx.SNAPSHOT])
        self.assertNotIn(b'SECRET', self.glance.data[fx.SNAPSHOT])
        self.assertEqual('raw', self.glance.images[fx.SNAPSHOT]['disk_format'])

    def test_a_raw_disk_on_a_qcow2_host_is_kept_as_raw(self):
        shutil.rmtree(self.inst_dir)
        disks.make_raw_instance(self.instances_path, uuids.instance)
        self.offload(self.offloading())
        self.assertEqual('raw',
                         self.store.find(uuids.instance,
                                         fx.SNAPSHOT).disk_format)

    def test_no_recorded_format_fails_the_offload_and_deletes_nothing(self):
        os.unlink(os.path.join(self.inst_dir, 'disk.info'))
        before = disks.tree(self.inst_dir)

        error = self.assertRaises(exception.NovaException, self.offload,
                                  self.offloading())

        self.assertIn('Nova recorded no format for %s' % self.disk,
                      str(error))
        self.assertIn('Nothing was deleted', str(error))
        self.assertEqual(before, disks.tree(self.inst_dir))
        self.assertEqual([], self.glance.updates)

    def test_the_domain_format_is_the_recorded_one_without_disk_info(self):
        os.unlink(os.path.join(self.inst_dir, 'disk.info'))
        self.stub_out(
            'nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver.'
            '_domain_disk_format', lambda drvr, instance: 'qcow2')
        self.offload(self.offloading())
        self.assertEqual('qcow2', self.store.find(uuids.instance,
                                                  fx.SNAPSHOT).disk_format)

    def test_an_offload_run_again_finishes_on_the_kept_disk(self):
        # Killed after the disk was kept; since then the storage fell below
        # the floor and partial offload was switched off. The offload must
        # still complete, on the disk already kept, not fail for good.
        instance = self.offloading()
        self.offload(instance)
        self.flags(free_space_floor_percent=100, partial_offload=False,
                   group='shelve_accel')
        instance = self.offloading()

        self.offload(instance)

        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.KEPT_DISK_KEY])
        self.assertTrue(self.store.find(uuids.instance,
                                        fx.SNAPSHOT).snapshot_pending)
        self.assertEqual([], self.glance.updates)

    def test_an_empty_instance_dir_does_not_block_adopting(self):
        instance = self.offloading()
        self.offload(instance)
        os.makedirs(self.inst_dir)
        instance = self.offloading()

        self.offload(instance)

        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.KEPT_DISK_KEY])
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertIsNotNone(self.store.find(uuids.instance, fx.SNAPSHOT))

    def test_another_hosts_instance_is_not_uploaded_here(self):
        # A host cleaning up an instance that now belongs to another host
        # does not own its shelve: the disk here is not its only copy.
        self.offload(self.offloading(host='elsewhere'))
        self.assertEqual([], self.glance.updates)
        self.assertFalse(os.path.exists(self.inst_dir))


class TestSpawnWithPendingSnapshot(fx.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.stock_spawn = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.spawn')).mock
        self.glance = self.useFixture(fx.FakeGlance())
        self.store = self.drvr._kept_disks

    def offloaded(self):
        return self.instance(
            uuid=uuids.instance, vm_state=vm_states.SHELVED_OFFLOADED,
            system_metadata={'shelved_image_id': fx.SNAPSHOT,
                             shelved.KEPT_DISK_KEY: fx.SNAPSHOT,
                             shelved.PENDING_UPLOAD_KEY: fx.SNAPSHOT})

    def spawn(self, instance):
        self.drvr.spawn(self.context, instance, None, [], None, {})

    def test_a_queued_snapshot_without_a_claimable_disk_is_refused(self):
        self.glance.add(fx.SNAPSHOT)
        instance = self.offloaded()
        error = self.assertRaises(exception.ImageUnacceptable, self.spawn,
                                  instance)
        self.assertIn(self.store.kept_dir(uuids.instance, fx.SNAPSHOT),
                      str(error))
        self.assertIn(fx.SNAPSHOT, str(error))
        self.stock_spawn.assert_not_called()
        self.assertEqual(fx.SNAPSHOT,
                         instance.system_metadata[shelved.PENDING_UPLOAD_KEY])

    def test_a_kept_disk_this_host_cannot_use_is_refused_too(self):
        self.glance.add(fx.SNAPSHOT)
        self.keep(uuids.instance)
        self.flags(images_type='flat', group='libvirt')
        self.assertRaises(exception.ImageUnacceptable, self.spawn,
                          self.offloaded())
        self.stock_spawn.assert_not_called()
        self.assertIsNotNone(self.store.find(uuids.instance, fx.SNAPSHOT))

    def test_an_active_snapshot_is_spawned_from_as_stock_nova_does(self):
        # Uploaded just before the unshelve, with no chance to clear the
        # mark.
        self.glance.add(fx.SNAPSHOT, status='active')
        instance = self.offloaded()
        self.spawn(instance)
        self.stock_spawn.assert_called_once()
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, instance.system_metadata)
        self.assertNotIn(shelved.KEPT_DISK_KEY, instance.system_metadata)

    def test_the_kept_disk_is_claimed_without_asking_glance(self):
        self.keep(uuids.instance)
        instance = self.offloaded()
        self.spawn(instance)
        self.stock_spawn.assert_called_once()
        self.assertTrue(os.path.isfile(os.path.join(
            self.instances_path, uuids.instance, 'disk')))
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, instance.system_metadata)


class TestUploadsFromTheDriver(fx.DriverTestCase):
    """Where the driver hands over to the uploader."""

    def setUp(self):
        super().setUp()
        # Uploads are started, not run: the uploader's pool only records
        # them.
        self.started = []
        self.drvr._uploads._executor = mock.Mock(
            submit=lambda fn, *args: self.started.append(args))

    def keep_pending(self):
        disks.make_qcow2_instance(self.instances_path, uuids.instance)
        return self.drvr._kept_disks.keep(uuids.instance, fx.SNAPSHOT, 'qcow2',
                                          snapshot_pending=True)

    def test_the_resource_periodic_starts_pending_uploads(self):
        self.keep_pending()
        stock = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.get_available_resource',
            side_effect=lambda node: {'local_gb': 7})).mock

        self.assertEqual(7, self.drvr.get_available_resource(fx.NODE)[
            'local_gb'])
        # The next periodic, within SCAN_SECONDS, does not scan again.
        self.drvr.get_available_resource(fx.NODE)

        stock.assert_has_calls([mock.call(fx.NODE), mock.call(fx.NODE)])
        [(_context, key, not_before, at_start)] = self.started
        self.assertEqual(((uuids.instance, fx.SNAPSHOT), False),
                         (key, at_start))
        self.assertLessEqual(not_before, time.monotonic())

    def test_init_host_resumes_uploads_as_at_start(self):
        self.keep_pending()
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.init_host'))
        self.useFixture(fixtures.MockPatchObject(self.drvr._recovery, 'run'))
        self.drvr.init_host(fx.NODE)
        [(_context, key, _delay, at_start)] = self.started
        self.assertEqual(((uuids.instance, fx.SNAPSHOT), True),
                         (key, at_start))

    def test_cleanup_host_stops_the_uploads(self):
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.cleanup_host'))
        self.drvr.cleanup_host(fx.NODE)
        self.assertFalse(self.drvr._uploads.schedule(
            self.context, uuids.instance, fx.SNAPSHOT))
        self.assertEqual([], self.started)
