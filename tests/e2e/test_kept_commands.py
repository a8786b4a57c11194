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

"""The operator's way out, on the real loopback cloud.

* Leaving the plugin: a server fast-shelved (its kept disk the only copy,
  its queued snapshot protected in Glance), the status check failing for
  it on a host of Nova's own driver, ``nova-shelve-accel kept drain
  --evict``, the cloud switched to Nova's own driver, and the unshelve
  gets the data from the snapshot.
* A user deleting the snapshot of a shelved server: the unshelve fails in
  Nova's conductor (ERROR) as in stock Nova, ``nova-shelve-accel kept
  restore`` makes a new snapshot from the kept disk, and the next unshelve
  reuses the disk in the group.

Needs the cloud of ``tools/cloud/cloud.sh up`` (root); the commands run as
on c1, with c1's nova.conf. Each test leaves the cloud in mode plugin.
"""

import json
import uuid

import fixtures
import testtools

from tests.e2e import cloud
from tests.e2e import invariants

# The uploads of the fast shelves here wait this long: the drain uploads.
UPLOAD_DELAY = 3600
# What the status check reads on a host of Nova's own driver.
STOCK_DRIVER_CONF = '[DEFAULT]\ncompute_driver = libvirt.LibvirtDriver\n'


class KeptCommandsTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        cloud.check_cloud_is_up()
        self.workdir = self.useFixture(fixtures.TempDir()).path
        self.addCleanup(cloud.set_mode, 'plugin')
        self.image_id = cloud.upload_test_image(self.workdir, 'e2e-kept')
        self.addCleanup(cloud.openstack, 'image', 'delete', self.image_id,
                        parse=False)

    def _boot_with_marker(self):
        name = 'e2e-kept-%s' % uuid.uuid4().hex[:8]
        srv = cloud.openstack(
            'server', 'create', '--flavor', cloud.FLAVOR, '--image',
            self.image_id, '--nic', 'none', '--host', 'c1', '--wait', name)
        self.addCleanup(cloud.delete_server_if_there, srv['id'])
        cloud.openstack('server', 'stop', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHUTOFF')
        marker = ('kept commands %s' % srv['id']).encode()
        cloud.write_marker(cloud.disk_path('c1', srv['id']), marker,
                           self.workdir)
        return srv, marker

    def _shelve(self, srv):
        cloud.openstack('server', 'shelve', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHELVED_OFFLOADED')
        [image_id] = invariants.shelved_snapshots(srv['name'])
        return image_id

    def _command(self, *args, expected=0, extra_conf=None):
        code, out, err = cloud.host_command('c1', 'nova-shelve-accel', *args,
                                            extra_conf=extra_conf)
        self.assertEqual(expected, code, '%s\n%s' % (out, err))
        return out, err

    def _kept_disks_check(self):
        """(exit code, the 'Kept disks' result) of the status check here."""
        code, out, err = cloud.host_command(
            'c1', 'nova-shelve-accel-status', 'upgrade', 'check', '--json',
            extra_conf=STOCK_DRIVER_CONF)
        [check] = [c for c in json.loads(out)['checks']
                   if c['check'] == 'Kept disks']
        return code, check

    def _assert_back_with_marker(self, srv, marker):
        srv = cloud.wait_for_status(srv['id'], 'ACTIVE')
        host = cloud.host_of(srv)
        self.assertEqual(marker, cloud.read_marker(
            cloud.disk_path(host, srv['id']), len(marker)))
        return host

    def test_drain_then_nova_s_own_driver_unshelves_with_the_data(self):
        cloud.set_mode('fast-shelve', upload_delay=UPLOAD_DELAY)
        srv, marker = self._boot_with_marker()
        snapshot = self._shelve(srv)
        image = cloud.image(snapshot)
        self.assertEqual(('queued', True),
                         (image['status'], image['protected']))
        # Nobody deletes the only image of the data by mistake.
        self.assertRaisesRegex(cloud.CloudError, '(?i)protected',
                               cloud.openstack, 'image', 'delete',
                               snapshot, parse=False)
        # On a host of Nova's own driver the status check fails for it.
        code, check = self._kept_disks_check()
        self.assertEqual(2, code)
        self.assertEqual(2, check['result'])
        self.assertIn(srv['id'], check['details'])
        self.assertIn('kept drain', check['details'])

        out, _err = self._command('kept', 'drain', '--evict')

        self.assertIn('uploaded', out)
        image = cloud.image(snapshot)
        self.assertEqual(('active', False),
                         (image['status'], image['protected']))
        self.assertEqual([], cloud.kept_disks(srv['id']))
        code, check = self._kept_disks_check()
        self.assertEqual(0, check['result'], check['details'])

        cloud.set_mode('stock')
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', srv['id'], parse=False)
        self._assert_back_with_marker(srv, marker)
        self.assertEqual([image['size']], [
            sent for image_id, sent in glance.downloads()
            if image_id == snapshot])

    def test_restore_after_the_user_deleted_the_snapshot(self):
        srv, marker = self._boot_with_marker()
        snapshot = self._shelve(srv)
        cloud.openstack('image', 'delete', snapshot, parse=False)
        cloud.openstack('server', 'unshelve', srv['id'], parse=False)
        # As in stock Nova: the conductor finds no image (and leaves the
        # task as it was).
        self.assertRaisesRegex(cloud.CloudError, 'cannot be found',
                               cloud.wait_for_status, srv['id'],
                               'SHELVED_OFFLOADED')

        out, _err = self._command('kept', 'restore', srv['id'],
                                  '--format', 'json')

        restored = json.loads(out)
        self.assertEqual(snapshot, restored['snapshot'])
        self.assertEqual('active',
                         cloud.image(restored['new_snapshot'])['status'])
        self.assertEqual(
            [restored['kept_disk']], cloud.kept_disks(srv['id']))
        self.assertEqual('SHELVED_OFFLOADED',
                         cloud.server(srv['id'])['status'])
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', srv['id'], parse=False)
        host = self._assert_back_with_marker(srv, marker)
        self.assertIn(host, cloud.GROUP_HOSTS)
        self.assertEqual([], glance.downloads())
        self.assertEqual([], invariants.shelved_snapshots(srv['name']))
