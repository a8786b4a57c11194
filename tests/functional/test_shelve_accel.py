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

"""The shelve/unshelve scenarios of the plugin, end to end through the API.

Each test asserts where the server lands, its status, its Placement
allocations, the files on the storages and how many times Glance served
image data. Run with the stock ``libvirt.LibvirtDriver`` they fail.
"""

import json
import os
from unittest import mock

from nova import context as nova_context
from nova import objects
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt

from nova_shelve_accel import shelved
from tests.functional import base


class TestPartialOffload(base.ShelveAccelTestBase):

    def _boot_with_marker(self, host, pattern=0x5a):
        server = self.boot(host=host)
        base.write_marker(self.instance_disk(server), pattern)
        return server

    def _shelve_keeping(self, server, storage):
        """Shelve (offloading at once) and check the disk was kept."""
        server = self.shelve(server)
        self.assert_offloaded_without_resources(server)
        kept = self.kept_dir(storage, server)
        self.assertEqual('%s.%s' % (server['id'], self.snapshot_id(server)),
                         os.path.basename(kept))
        self.assertEqual({'disk', 'disk.info', 'kept.json'},
                         set(os.listdir(kept)))
        self.assertFalse(os.path.exists(os.path.join(storage, server['id'])))
        return server

    def _unshelve_failing_once(self, server):
        error = fakelibvirt.make_libvirtError(
            fakelibvirt.libvirtError, 'injected failure to start the guest',
            error_code=fakelibvirt.VIR_ERR_INTERNAL_ERROR)
        with mock.patch.object(fakelibvirt.Domain, 'createWithFlags',
                               side_effect=error):
            self.api.post_server_action(server['id'], {'unshelve': None})
            event = self._wait_for_instance_action_event(
                server, 'unshelve', 'compute_unshelve_instance', 'Error')
        server = self._wait_for_server_parameter(server, {
            'status': 'SHELVED_OFFLOADED', 'OS-EXT-STS:task_state': None})
        return server, event

    # 1
    def test_unshelve_in_group_reuses_kept_disk(self):
        server = self._boot_with_marker('A')
        self.assertEqual(1, self.downloads[base.IMAGE_ID])
        self.update_resources('A')
        reserved_before = self.reserved_disk_gb('A')

        server = self._shelve_keeping(server, self.g1_path)
        snapshot_id = self.snapshot_id(server)
        # The kept disk's space is reserved on the hosts of its storage: at
        # once on the host that kept it, from its next image cache pass on
        # the others (which count kept space then, not at every update).
        self.update_resources('A')
        self.update_resources('B')
        self.assertEqual(reserved_before + 1, self.reserved_disk_gb('A'))
        self.assertEqual(reserved_before, self.reserved_disk_gb('B'))
        self.run_image_cache_pass('B')
        self.update_resources('B')
        self.assertEqual(reserved_before + 1, self.reserved_disk_gb('B'))
        self.assertEqual(reserved_before, self.reserved_disk_gb('C'))

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(1, self.downloads[base.IMAGE_ID])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))
        [kept] = self.events('shelve_accel.disk.kept', server['id'])
        self.assertEqual(
            {'host': 'A', 'storage_groups': ['g1'],
             'snapshot_id': snapshot_id, 'snapshot_pending': False,
             'project_id': server['tenant_id']},
            {k: kept[k] for k in ('host', 'storage_groups', 'snapshot_id',
                                  'snapshot_pending', 'project_id')})
        self.assertGreater(kept['disk_bytes'], 0)
        [reused] = self.events('shelve_accel.disk.reused', server['id'])
        self.assertEqual(self.host_of(server), reused['host'])
        self.assertEqual(snapshot_id, reused['snapshot_id'])
        self.assertEqual([], self.events('shelve_accel.unshelve.fallback'))
        self.assertNotIn('kept.json', os.listdir(
            os.path.dirname(self.instance_disk(server))))
        # The compute deleted the snapshot, as after any unshelve.
        self.assertNotIn(snapshot_id, self.glance.images)
        self.update_resources(self.host_of(server))
        self.assertEqual(reserved_before,
                         self.reserved_disk_gb(self.host_of(server)))

    # 2
    def test_group_unavailable_falls_back_to_snapshot(self):
        server = self._boot_with_marker('A')
        server = self._shelve_keeping(server, self.g1_path)
        snapshot_id = self.snapshot_id(server)
        self.set_service_status('A', enabled=False)
        self.set_service_status('B', enabled=False)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('C',))
        self.assertEqual(1, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        [scheduled] = self.events('shelve_accel.scheduler.fallback',
                                  server['id'])
        self.assertEqual('A', scheduled['kept_on'])
        self.assertEqual(['g1'], scheduled['kept_groups'])
        self.assertEqual('none of them is left by the other filters',
                         scheduled['reason'])
        [fallback] = self.events('shelve_accel.unshelve.fallback',
                                 server['id'])
        self.assertEqual('C', fallback['host'])
        self.assertEqual('no kept root disk for snapshot %s in %s'
                         % (snapshot_id, os.path.join(self.c_path,
                                                      base.KEPT_SUBDIR)),
                         fallback['reason'])
        # The disk kept in g1 outlives the unshelve until the next pass of
        # a host of g1, disabled or not.
        self.assertEqual(1, len(self.kept_disks(self.g1_path)))
        self.run_image_cache_pass('B')
        self.assertEqual([], self.kept_disks(self.g1_path))
        [reclaimed] = self.events('shelve_accel.disk.reclaimed',
                                  server['id'])
        self.assertEqual('B', reclaimed['host'])
        self.assertEqual('the instance is no longer shelved with snapshot '
                         '%s' % snapshot_id, reclaimed['reason'])

    # 3
    def test_storage_below_floor_offloads_as_stock(self):
        self.flags(free_space_floor_percent=100, group='shelve_accel')
        server = self._boot_with_marker('A')

        server = self.shelve(server)
        self.assert_offloaded_without_resources(server)
        snapshot_id = self.snapshot_id(server)
        self.assertEqual([], self.kept_disks(self.g1_path))
        self.assertFalse(os.path.exists(os.path.join(self.g1_path,
                                                     server['id'])))
        self.assertIn('Not keeping the root disk at shelve-offload: the '
                      'storage %s has' % self.g1_path,
                      self.stdlog.logger.output)
        [not_kept] = self.events('shelve_accel.disk.not_kept', server['id'])
        self.assertIn('below [shelve_accel] free_space_floor_percent = 100',
                      not_kept['reason'])
        self.assertEqual(snapshot_id, not_kept['snapshot_id'])
        self.assertEqual([], self.events('shelve_accel.disk.kept'))

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B', 'C'))
        self.assertEqual(1, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

        # The floor, and nothing else, was the reason: below it, keep.
        self.flags(free_space_floor_percent=0, group='shelve_accel')
        self._shelve_keeping(server, self.storage_of(self.host_of(server)))

    # 3b
    def test_floor_reads_the_storage_not_nova_accounting(self):
        # A and B each run a server whose flavor's disk is 90% of the
        # storage: Nova counts it as used (and libvirt as overcommitted),
        # so its free disk figure for both hosts is near zero. The storage
        # itself is as free as before, and reusing a kept disk adds nothing
        # to it: the unshelve must stay in g1.
        real_free = self.computes['A'].driver._kept_disks.free_percent()
        self.assertGreater(real_free, 2, 'the test needs some free disk')
        floor = int(real_free / 2)
        self.flags(free_space_floor_percent=floor, group='shelve_accel')
        local_gb = self._compute_node('A').local_gb
        big = self._create_flavor(name='m1.big', memory_mb=512, vcpu=1,
                                  disk=int(local_gb * 0.9), ephemeral=0)
        for host in ('A', 'B'):
            self.boot(host=host, flavor_id=big)
            self.update_resources(host)
            node = self._compute_node(host)
            accounted = 100.0 * min(node.free_disk_gb,
                                    node.disk_available_least) / local_gb
            self.assertLess(accounted, floor)
            self.assertGreaterEqual(
                float(node.stats[shelved.STORAGE_FREE_STAT]), floor)
        server = self._boot_with_marker('A')
        server = self._shelve_keeping(server, self.g1_path)
        snapshot_id = self.snapshot_id(server)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    def _compute_node(self, host):
        return objects.ComputeNode.get_by_nodename(
            nova_context.get_admin_context(), host)

    # 4
    def test_volume_backed_offloads_as_stock(self):
        image_backed = self._boot_with_marker('A')
        server = self.api.post_server({'server': {
            'name': 'bfv', 'flavorRef': self.flavor_id, 'networks': 'none',
            'host': 'A',
            'block_device_mapping_v2': [{
                'boot_index': 0, 'source_type': 'volume',
                'destination_type': 'volume',
                'uuid': nova_fixtures.CinderFixture.IMAGE_BACKED_VOL}]}})
        server = self._wait_for_state_change(server, 'ACTIVE',
                                             base.WAIT_RETRIES)
        downloads_at_boot = sum(self.downloads.values())

        server = self.shelve(server)
        self.assert_offloaded_without_resources(server)
        self.assertIsNone(self.snapshot_id(server))
        self.assertEqual([], self.kept_disks(self.g1_path))
        self.assertFalse(os.path.exists(os.path.join(self.g1_path,
                                                     server['id'])))
        self.assertIn('Not keeping the root disk at shelve-offload: the '
                      'instance is volume-backed', self.stdlog.logger.output)
        # Beside it, on the same host and storage, an image-backed server is
        # kept: the volume was the reason.
        self._shelve_keeping(image_backed, self.g1_path)

        server = self.unshelve(server)
        self.assert_runs_on(server, ('A', 'B', 'C'))
        self.assertEqual(downloads_at_boot, sum(self.downloads.values()))

    # 5
    def test_unshelve_to_host_outside_group_downloads(self):
        server = self._boot_with_marker('B')
        server = self._shelve_keeping(server, self.g1_path)
        snapshot_id = self.snapshot_id(server)

        server = self.unshelve(server, host='C')
        server = self.assert_runs_on(server, ('C',))
        self.assertEqual(1, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.run_image_cache_pass('A')
        self.assertEqual([], self.kept_disks(self.g1_path))

    # 6
    def test_spawn_failure_keeps_disk_for_next_unshelve(self):
        server = self._boot_with_marker('A')
        server = self._shelve_keeping(server, self.g1_path)
        snapshot_id = self.snapshot_id(server)
        kept = self.kept_dir(self.g1_path, server)
        with open(os.path.join(kept, 'kept.json')) as f:
            record = json.load(f)

        server, event = self._unshelve_failing_once(server)
        # Reported as stock Nova reports it: a failed action event, the
        # server still offloaded and holding nothing.
        self.assertEqual('libvirtError', event['details'])
        self.assert_offloaded_without_resources(server)
        self.assertEqual([os.path.basename(kept)],
                         self.kept_disks(self.g1_path))
        with open(os.path.join(kept, 'kept.json')) as f:
            self.assertEqual(record, json.load(f))
        self.assertEqual(0x5a, base.read_marker(os.path.join(kept, 'disk')))
        self.assertFalse(os.path.exists(os.path.join(self.g1_path,
                                                     server['id'])))

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))

    # 7
    def test_delete_while_offloaded_reclaims_kept_disk(self):
        server = self._boot_with_marker('A')
        server = self._shelve_keeping(server, self.g1_path)
        self._delete_server(server)
        self._wait_until_deleted(server)
        # No compute host hears of the delete; the next pass finds it.
        self.assertEqual(1, len(self.kept_disks(self.g1_path)))
        self.run_image_cache_pass('A')
        self.assertEqual([], self.kept_disks(self.g1_path))

    # 8
    def test_delayed_offload_keeps_disk_at_periodic_offload(self):
        self.flags(shelved_offload_time=3600)
        server = self._boot_with_marker('A')

        server = self.shelve(server, expected_state='SHELVED')
        self.assertEqual('A', self.host_of(server))
        self.assertEqual([], self.kept_disks(self.g1_path))
        server = self.unshelve(server)
        self.assert_runs_on(server, ('A',))
        self.assertEqual(1, sum(self.downloads.values()))

        server = self.shelve(server, expected_state='SHELVED')
        snapshot_id = self.snapshot_id(server)
        with self.time_passes(3601):
            self.run_periodic('A', '_poll_shelved_instances')
        server = self._wait_for_state_change(server, 'SHELVED_OFFLOADED',
                                             base.WAIT_RETRIES)
        self.assert_offloaded_without_resources(server)
        self.kept_dir(self.g1_path, server)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    # 9
    def test_repeated_cycles_reuse_and_leak_nothing(self):
        server = self._boot_with_marker('A', pattern=0x01)
        snapshots = []
        for cycle in range(1, 4):
            server = self._shelve_keeping(server, self.g1_path)
            snapshot_id = self.snapshot_id(server)
            snapshots.append(snapshot_id)
            server = self.unshelve(server)
            server = self.assert_runs_on(server, ('A', 'B'))
            self.assertEqual(0, self.downloads[snapshot_id])
            disk = self.instance_disk(server)
            self.assertEqual(cycle, base.read_marker(disk))
            base.write_marker(disk, cycle + 1)

        self.assertEqual(1, sum(self.downloads.values()))
        self.assertEqual([], self.kept_disks(self.g1_path))
        self.assertEqual(
            sorted([server['id'], '_base', base.KEPT_SUBDIR]),
            sorted(n for n in os.listdir(self.g1_path)
                   if n not in ('compute_nodes', 'locks', 'snapshots')))
        # One base file: the original image's, still backing the disk.
        [base_file] = os.listdir(os.path.join(self.g1_path, '_base'))
        self.assertEqual(os.path.join(self.g1_path, '_base', base_file),
                         base.backing_file(self.instance_disk(server)))
        # Every unshelve deleted its snapshot, as stock Nova does.
        self.assertEqual([], [i for i in snapshots if i in self.glance.images])

    # 10
    def test_boots_and_migrations_ignore_kept_disks(self):
        kept_server = self._boot_with_marker('A')
        self._shelve_keeping(kept_server, self.g1_path)

        # RAMWeigher spreads: a filter applying the kept disk's group to new
        # boots would leave C empty.
        servers = [self.boot() for _ in range(3)]
        self.assertEqual({'A', 'B', 'C'},
                         {self.host_of(s) for s in servers})

        # A cold migration is not an unshelve either: with B disabled, the
        # server on A goes to C, outside the group.
        self.set_service_status('B', enabled=False)
        [on_a] = [s for s in servers if self.host_of(s) == 'A']
        with mock.patch('nova.virt.libvirt.driver.LibvirtDriver'
                        '.migrate_disk_and_power_off', return_value='{}'):
            self.api.post_server_action(on_a['id'], {'migrate': None})
            migrated = self._wait_for_state_change(on_a, 'VERIFY_RESIZE',
                                                   base.WAIT_RETRIES)
        self.assertEqual('C', self.host_of(migrated))
        # The kept disk is untouched by all of it.
        self.kept_dir(self.g1_path, kept_server)

    # 11
    def test_local_storage_host_is_its_own_group(self):
        # A server already on C makes the stock weighers prefer A and B.
        self.boot(host='C')
        server = self._boot_with_marker('C')
        server = self._shelve_keeping(server, self.c_path)
        snapshot_id = self.snapshot_id(server)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('C',))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

        # Shelve again, then fill C: the unshelve lands in g1 and downloads.
        server = self._shelve_keeping(server, self.c_path)
        snapshot_id = self.snapshot_id(server)
        self.boot(host='C', flavor_id=self._flavor_filling('C'))
        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(1, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.run_image_cache_pass('C')
        self.assertEqual([], self.kept_disks(self.c_path))

    def _flavor_filling(self, host):
        """A flavor that leaves ``host`` less RAM than a test server needs."""
        rp_uuid = self._get_provider_uuid_by_host(host)
        ram = self._get_provider_inventory(rp_uuid)['MEMORY_MB']
        used = self._get_provider_usages(rp_uuid)['MEMORY_MB']
        free = int((ram['total'] - ram['reserved']) *
                   ram['allocation_ratio']) - used
        return self._create_flavor(name='filler', memory_mb=free - 256,
                                   vcpu=1, disk=1, ephemeral=0)
