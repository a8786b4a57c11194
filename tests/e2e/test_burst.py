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

"""A burst on the real loopback cloud, through the CLI.

Tiny servers (flavor m1.burst) on the group's hosts, each with its own
marker, shelved with one ``openstack server shelve`` command and unshelved
with one ``openstack server unshelve`` command: every unshelve must come
back to the group on its kept disk, with its own data, and Glance must
send no image data for any of them. The full-size burst, timed against
stock Nova, is tools/benchmark.sh's.
"""

import uuid

import fixtures
import testtools

from tests.e2e import cloud
from tests.e2e import invariants

SERVERS = 6


class BurstTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        cloud.check_cloud_is_up()
        self.workdir = self.useFixture(fixtures.TempDir()).path
        cloud.set_mode('plugin')
        self.image_id = cloud.upload_test_image(self.workdir, 'e2e-burst')
        self.addCleanup(cloud.openstack, 'image', 'delete', self.image_id,
                        parse=False)

    def _boot_stopped(self):
        """SERVERS stopped servers on c1 and c2, alternately, by name."""
        prefix = 'e2e-burst-%s' % uuid.uuid4().hex[:6]
        names = ['%s-%d' % (prefix, n) for n in range(SERVERS)]
        for n, name in enumerate(names):
            cloud.openstack(
                'server', 'create', '--flavor', cloud.BURST_FLAVOR,
                '--image', self.image_id, '--nic', 'none', '--host',
                cloud.GROUP_HOSTS[n % len(cloud.GROUP_HOSTS)], name,
                parse=False)
            self.addCleanup(cloud.openstack, 'server', 'delete', '--wait',
                            name, parse=False)
        for name in names:
            cloud.wait_for_status(name, 'ACTIVE')
        cloud.openstack('server', 'stop', *names, parse=False)
        return {name: cloud.wait_for_status(name, 'SHUTOFF')['id']
                for name in names}

    def test_burst_reuses_every_kept_disk(self):
        servers = self._boot_stopped()
        markers = {}
        for name, server_id in servers.items():
            srv = cloud.server(server_id)
            markers[server_id] = ('marker %s' % server_id).encode()
            cloud.write_marker(cloud.disk_path(cloud.host_of(srv), server_id),
                               markers[server_id], self.workdir)

        cloud.openstack('server', 'shelve', *servers, parse=False)
        for server_id in servers.values():
            cloud.wait_for_status(server_id, 'SHELVED_OFFLOADED')
            self.assertEqual(1, len(invariants.kept_entries(server_id)))

        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', *servers, parse=False)
        for server_id in servers.values():
            srv = cloud.wait_for_status(server_id, 'ACTIVE')
            host = cloud.host_of(srv)
            self.assertIn(host, cloud.GROUP_HOSTS)
            self.assertEqual(markers[server_id], cloud.read_marker(
                cloud.disk_path(host, server_id),
                len(markers[server_id])))
            self.assertEqual([], invariants.kept_entries(server_id))
        self.assertEqual([], glance.downloads())
