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

"""Shelve and unshelve on the real loopback cloud, through the CLI.

Needs the cloud of ``tools/cloud/cloud.sh up`` (root). Each test boots a
server from a qcow2 image made here, stops it, writes a marker into its
disk, shelves it (the cloud offloads at once) and unshelves it.
"""

import os
import time
import uuid

import fixtures
import testtools

from tests.e2e import cloud
from tests.e2e import listener


class ShelveUnshelveTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        cloud.check_cloud_is_up()
        self.workdir = self.useFixture(fixtures.TempDir()).path
        # Whatever a test switches, the next one starts from plugin mode.
        self.addCleanup(cloud.set_mode, 'plugin')
        self.image_id = cloud.upload_test_image(self.workdir, 'e2e')
        self.notifications = self.useFixture(listener.NotificationListener())
        self.addCleanup(cloud.openstack, 'image', 'delete', self.image_id,
                        parse=False)

    def _boot_with_marker(self, host):
        """A SHUTOFF server on host with a marker written into its disk."""
        name = 'e2e-%s' % uuid.uuid4().hex[:8]
        srv = cloud.openstack(
            'server', 'create', '--flavor', cloud.FLAVOR,
            '--image', self.image_id, '--nic', 'none', '--host', host,
            '--wait', name)
        self.addCleanup(cloud.openstack, 'server', 'delete', '--wait',
                        srv['id'], parse=False)
        self.assertEqual(host, cloud.host_of(srv))
        cloud.openstack('server', 'stop', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHUTOFF')
        marker = ('marker %s' % srv['id']).encode()
        cloud.write_marker(cloud.disk_path(host, srv['id']), marker,
                           self.workdir)
        return srv['id'], marker

    def _shelve(self, server_id):
        """Shelve (and so offload); return the snapshot's (id, size)."""
        cloud.openstack('server', 'shelve', server_id, parse=False)
        srv = cloud.wait_for_status(server_id, 'SHELVED_OFFLOADED')
        self.assertIsNone(cloud.host_of(srv))
        snapshot_id, size = cloud.shelved_snapshot(srv['name'])
        # The data is in the snapshot too: it is what a fallback downloads.
        self.assertGreater(size, 16 * 1024 * 1024)
        return snapshot_id, size

    def _unshelve(self, server_id):
        """Unshelve; return (server, image bytes Glance sent meanwhile)."""
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', server_id, parse=False)
        srv = cloud.wait_for_status(server_id, 'ACTIVE')
        return srv, glance

    def _assert_marker(self, srv, marker):
        disk = cloud.disk_path(cloud.host_of(srv), srv['id'])
        self.assertEqual(marker, cloud.read_marker(disk, len(marker)))

    def test_unshelve_in_group_reuses_kept_disk(self):
        server_id, marker = self._boot_with_marker('c1')
        snapshot_id, _size = self._shelve(server_id)

        # Offloaded, but the disk with the marker stayed on g1's storage.
        kept = cloud.kept_disks(server_id)
        self.assertEqual(1, len(kept), kept)
        self.assertTrue(kept[0].endswith('.' + snapshot_id), kept)
        self.assertEqual(
            marker,
            cloud.read_marker(os.path.join(kept[0], 'disk'), len(marker)))
        self.assertFalse(os.path.exists(
            os.path.dirname(cloud.disk_path('c1', server_id))))

        srv, glance = self._unshelve(server_id)

        self.assertIn(cloud.host_of(srv), cloud.GROUP_HOSTS)
        self._assert_marker(srv, marker)
        self.assertEqual([], glance.downloads())
        self.assertEqual([], cloud.kept_disks(server_id))

        kept = self.notifications.wait_for('shelve_accel.disk.kept',
                                           server_id)
        self.assertEqual('shelve_accel.c1', kept['publisher_id'])
        self.assertEqual(snapshot_id, listener.data_of(kept)['snapshot_id'])
        self.assertEqual(['g1'], listener.data_of(kept)['storage_groups'])
        reused = self.notifications.wait_for('shelve_accel.disk.reused',
                                             server_id)
        self.assertEqual(cloud.host_of(srv), listener.data_of(reused)['host'])
        self.assertEqual([], self.notifications.events(
            'shelve_accel.unshelve.fallback', server_id))

    def test_unshelve_outside_group_downloads_and_reclaims(self):
        server_id, marker = self._boot_with_marker('c1')
        snapshot_id, size = self._shelve(server_id)
        self.assertEqual(1, len(cloud.kept_disks(server_id)))
        for host in cloud.GROUP_HOSTS:
            cloud.openstack('compute', 'service', 'set', '--disable', host,
                            'nova-compute', parse=False)
            self.addCleanup(cloud.openstack, 'compute', 'service', 'set',
                            '--enable', host, 'nova-compute', parse=False)

        srv, glance = self._unshelve(server_id)

        self.assertEqual(cloud.OUTSIDE_HOST, cloud.host_of(srv))
        self._assert_marker(srv, marker)
        # The whole snapshot came from Glance. (c3 then also fetches the
        # server's original image, as stock Nova does, to rebase the disk
        # onto it.)
        self.assertEqual(size, glance.bytes_sent(snapshot_id),
                         glance.downloads())
        # The image cache pass of c1/c2 (every 20 s here) gives the kept
        # disk back to the storage: the instance now lives on c3.
        deadline = time.monotonic() + 120
        while cloud.kept_disks(server_id) and time.monotonic() < deadline:
            time.sleep(2)
        self.assertEqual([], cloud.kept_disks(server_id))

        scheduled = self.notifications.wait_for(
            'shelve_accel.scheduler.fallback', server_id)
        self.assertEqual('none of them is left by the other filters',
                         listener.data_of(scheduled)['reason'])
        fallback = self.notifications.wait_for(
            'shelve_accel.unshelve.fallback', server_id)
        self.assertEqual('shelve_accel.c3', fallback['publisher_id'])
        self.assertIn('no kept root disk for snapshot %s' % snapshot_id,
                      listener.data_of(fallback)['reason'])
        reclaimed = self.notifications.wait_for(
            'shelve_accel.disk.reclaimed', server_id)
        self.assertIn(listener.data_of(reclaimed)['host'], cloud.GROUP_HOSTS)

    def test_stock_mode_keeps_nothing_and_downloads(self):
        cloud.set_mode('stock')
        server_id, marker = self._boot_with_marker('c1')
        snapshot_id, size = self._shelve(server_id)
        self.assertEqual([], cloud.kept_disks(server_id))

        srv, glance = self._unshelve(server_id)

        self._assert_marker(srv, marker)
        self.assertEqual(size, glance.bytes_sent(snapshot_id))
