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

"""Whether the hosts of a storage group share its storage, on the cloud.

c1 and c2 mount g1's storage; c3 has its own. Each plugin host leaves its
probe on its storage when nova-compute starts; the status check and
``storage usage`` of a host compare the probes it sees with its group.
Putting c3 into g1, as an operator might by mistake, must fail the check
on both sides. Needs the cloud of ``tools/cloud/cloud.sh up`` (root).
"""

import json

import testtools

from tests.e2e import cloud

SUCCESS, FAILURE = 0, 2


class StorageSharingTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        cloud.check_cloud_is_up()

    def status_check(self, host, name):
        _code, out, err = cloud.host_command(
            host, 'nova-shelve-accel-status', 'upgrade', 'check', '--json')
        self.assertTrue(out, err)
        [check] = [c for c in json.loads(out)['checks']
                   if c['check'] == name]
        return check

    def sharing_check(self, host):
        return self.status_check(host, 'Storage sharing')

    def usage(self, host):
        code, out, err = cloud.host_command(
            host, 'nova-shelve-accel', 'storage', 'usage', '--format',
            'json')
        self.assertEqual(0, code, err)
        return json.loads(out)

    def test_the_hosts_of_g1_see_each_others_probes(self):
        for host in ('c1', 'c2'):
            check = self.sharing_check(host)
            self.assertEqual(SUCCESS, check['result'], check['details'])
            self.assertIn('_shelve_kept: c1, c2.', check['details'])
            report = self.usage(host)
            self.assertEqual(['c1', 'c2'], report['hosts_sharing'])
            self.assertEqual([], report['group_hosts_not_sharing'])
        self.assertEqual(['c3'], self.usage('c3')['hosts_sharing'])

    def test_the_storage_groups_check_reads_the_cells_of_the_hosts(self):
        # It reads the host mappings of the group's hosts, whose cell
        # mapping needs [DEFAULT] transport_url to load.
        for host in ('c1', 'c3'):
            check = self.status_check(host, 'Storage groups')
            self.assertEqual(SUCCESS, check['result'], check['details'])
            self.assertIn('Storage groups: g1 (2 hosts).', check['details'])

    def test_a_host_of_the_aggregate_without_the_storage_fails(self):
        cloud.openstack('aggregate', 'add', 'host', 'g1', 'c3', parse=False)
        self.addCleanup(cloud.openstack, 'aggregate', 'remove', 'host', 'g1',
                        'c3', parse=False)

        check = self.sharing_check('c1')
        self.assertEqual(FAILURE, check['result'], check['details'])
        self.assertIn('Hosts c3 are in the storage group of this host but '
                      'leave no probe', check['details'])
        check = self.sharing_check('c3')
        self.assertEqual(FAILURE, check['result'], check['details'])
        self.assertIn('Hosts c1, c2 are in the storage group',
                      check['details'])
        self.assertEqual(['c3'], self.usage('c1')['group_hosts_not_sharing'])
