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

"""A compute host that dies in the middle of moving a kept disk.

The death is simulated in-process: at a chosen step the operation raises an
exception that no Nova code catches (as nothing runs after a SIGKILL), so
the database and the files stay exactly as the crash left them. Then the
compute service is restarted as Nova's own functional tests restart one,
and the state must resolve without an operator. The real ``kill -9`` of a
real nova-compute is ``tools/fault_matrix.py`` on the loopback cloud.
"""

import contextlib
import os
import threading
from unittest import mock

from nova_shelve_accel import faults
from nova_shelve_accel import storage
from nova_shelve_accel.virt.libvirt import driver as accel_driver
from tests.functional import base


class SimulatedCrash(BaseException):
    """Nothing after this point runs, as after a SIGKILL."""


class TestRecoveryAtStart(base.ShelveAccelTestBase):

    def _boot_shelved_with_marker(self):
        server = self.boot(host='A')
        base.write_marker(self.instance_disk(server), 0x5a)
        server = self.shelve(server)
        self.assertEqual(1, len(self.kept_disks(self.g1_path)))
        return server

    @contextlib.contextmanager
    def _crash_on_a_at(self, owner, target):
        """Patch ``owner.target`` to crash host A when it is called.

        Yields an event set at the crash. Context managers on the way up
        would undo the resource claim (no ``__exit__`` runs in a killed
        process): that undoing is disabled for the crash.
        """
        crashed = threading.Event()

        def crash(*args, **kwargs):
            crashed.set()
            raise SimulatedCrash(target)

        with mock.patch.object(owner, target, side_effect=crash), \
                mock.patch('nova.compute.resource_tracker.ResourceTracker.'
                           'abort_instance_claim'):
            yield crashed

    def test_restart_during_unshelve_rolls_it_back(self):
        server = self._boot_shelved_with_marker()
        snapshot_id = self.snapshot_id(server)
        self.set_service_status('B', False)

        # Host A dies while spawning the guest on the claimed disk: Nova
        # would set the instance to ERROR at restart.
        with self._crash_on_a_at(accel_driver.PartialOffloadLibvirtDriver,
                                 '_create_and_inject_local_root') as crashed:
            self.api.post_server_action(server['id'], {'unshelve': None})
            self._wait_for(crashed.is_set)
        inst_dir = os.path.join(self.g1_path, server['id'])
        self.assertTrue(os.path.isfile(os.path.join(inst_dir,
                                                    storage.RECORD_NAME)))
        self.assertEqual('spawning', self.api.get_server(server['id'])[
            'OS-EXT-STS:task_state'])
        self.restart_compute('A')

        self.assert_offloaded_without_resources(server)
        server = self.api.get_server(server['id'])
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        self.assertFalse(os.path.exists(inst_dir))
        kept = self.kept_dir(self.g1_path, server)
        self.assertEqual(0x5a, base.read_marker(os.path.join(kept, 'disk')))

        server = self.unshelve(server)
        self.assert_runs_on(server, ('A',))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))

    def test_restart_after_nova_deleted_the_snapshot_finishes_it(self):
        # Host A dies after the guest started on the claimed disk and Nova
        # deleted the snapshot, before Nova saved the instance ACTIVE.
        # Rolled back, the instance would be offloaded naming a deleted
        # image, and its next unshelve would go to ERROR.
        server = self._boot_shelved_with_marker()
        snapshot_id = self.snapshot_id(server)
        self.set_service_status('B', False)
        real_cut_point = faults.cut_point
        crashed = threading.Event()

        def cut_point(name):
            if name == 'spawn.snapshot_deleted':
                crashed.set()
                raise SimulatedCrash(name)
            real_cut_point(name)

        with mock.patch.object(faults, 'cut_point', cut_point), \
                mock.patch('nova.compute.resource_tracker.ResourceTracker.'
                           'abort_instance_claim'):
            self.api.post_server_action(server['id'], {'unshelve': None})
            self._wait_for(crashed.is_set)
        self.assertNotIn(snapshot_id, self.glance.images)
        self.assertEqual('spawning', self.api.get_server(server['id'])[
            'OS-EXT-STS:task_state'])
        self.restart_compute('A')

        server = self._wait_for_server_parameter(server, {
            'status': 'ACTIVE', 'OS-EXT-SRV-ATTR:host': 'A',
            'OS-EXT-STS:task_state': None}, base.WAIT_RETRIES)
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))
        inst_dir = os.path.dirname(self.instance_disk(server))
        self.assertEqual([], [n for n in os.listdir(inst_dir)
                              if n.startswith(storage.RECORD_NAME)])
        # A running instance, no longer shelved: it can be shelved again.
        server = self.shelve(server)
        self.assertEqual(1, len(self.kept_disks(self.g1_path)))

    def test_restart_during_offload_finishes_it_on_the_kept_disk(self):
        server = self.boot(host='A')
        base.write_marker(self.instance_disk(server), 0x5a)

        # Host A dies with the instance directory renamed to staging.
        with self._crash_on_a_at(storage, '_prune') as crashed:
            self.api.post_server_action(server['id'], {'shelve': {}})
            self._wait_for(crashed.is_set)
        self.assertEqual('shelving_offloading', self.api.get_server(
            server['id'])['OS-EXT-STS:task_state'])
        self.assertTrue(any(n.startswith('.staging-')
                            for n in self.kept_disks(self.g1_path)))
        self.restart_compute('A')

        server = self._wait_for_server_parameter(server, {
            'status': 'SHELVED_OFFLOADED', 'OS-EXT-SRV-ATTR:host': None,
            'OS-EXT-STS:task_state': None}, base.WAIT_RETRIES)
        self.assert_offloaded_without_resources(server)
        snapshot_id = self.snapshot_id(server)
        kept = self.kept_dir(self.g1_path, server)
        self.assertEqual(['disk', 'disk.info', 'kept.json'],
                         sorted(os.listdir(kept)))

        server = self.unshelve(server)
        self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
