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

"""The storage-group model, and its warnings: once per mistake."""

from oslo_utils.fixture import uuidsentinel as uuids

from nova import context as nova_context
from nova import objects
from nova import test
from nova.tests.unit import fake_instance
from nova.tests.unit.scheduler import fakes

from nova_shelve_accel.scheduler import filters
from nova_shelve_accel import shelved
from nova_shelve_accel import storage_groups

SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'


def aggregate(agg_id, name, hosts, group=None):
    metadata = {} if group is None else {storage_groups.GROUP_KEY: group}
    return objects.Aggregate(id=agg_id, name=name, hosts=hosts,
                             metadata=metadata)


class TestStorageGroups(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.aggregates = [
            aggregate(1, 'g1-rack1', ['A', 'B'], ' g1'),
            aggregate(2, 'g1-rack2', ['C'], 'g1 '),
            aggregate(3, 'g2', ['D', 'E'], 'g2'),
            aggregate(4, 'typo', ['F'], '  '),
            aggregate(5, 'az1', ['A', 'D'])]
        self.groups = storage_groups.StorageGroups(self.aggregates)

    def test_a_group_is_every_aggregate_naming_it(self):
        self.assertEqual({'g1': {'A', 'B', 'C'}, 'g2': {'D', 'E'}},
                         dict(self.groups.hosts))
        self.assertEqual({'B', 'C'}, self.groups.peers_of('A'))
        self.assertEqual({'A', 'B', 'C'}, self.groups.hosts_of({'g1'}))

    def test_a_host_in_no_group_has_no_peers(self):
        self.assertEqual(set(), self.groups.listing('F'))
        self.assertEqual(set(), self.groups.peers_of('F'))
        self.assertEqual(set(), self.groups.listing('Z'))

    def test_a_blank_name_names_no_group(self):
        self.assertEqual(['typo'], [a.name for a in self.groups.blank])
        self.assertNotIn('', self.groups.hosts)

    def test_a_host_state_s_groups_come_from_its_aggregates(self):
        host = fakes.FakeHostState('A', 'A', {
            'aggregates': [a for a in self.aggregates if 'A' in a.hosts]})
        groups = storage_groups.StorageGroups.of_request([host])
        self.assertEqual({'g1'}, groups.of_host_state(host))


class TestWarnedOncePerChange(test.NoDBTestCase):
    """A mistake is said when it appears and when it changes.

    nova-scheduler sees the aggregates at every request: not at every one.
    """

    def setUp(self):
        super().setUp()
        self.flags(free_space_floor_percent=10, group='shelve_accel')
        storage_groups.forget_warnings()
        self.addCleanup(storage_groups.forget_warnings)
        self.filt = filters.HostAggregateGroupFilter()
        instance = fake_instance.fake_instance_obj(
            nova_context.get_admin_context(), uuid=uuids.instance,
            vm_state='shelved_offloaded', host=None, system_metadata={
                'shelved_host': 'A', 'shelved_image_id': SNAPSHOT,
                shelved.KEPT_DISK_KEY: SNAPSHOT},
            expected_attrs=['system_metadata'])
        self.filt._load_instance = lambda cell, uuid: instance
        self.cell = objects.CellMapping(uuid=uuids.cell, name='cell1')

    def schedule(self, aggregates):
        """One unshelve request of the instance kept on A."""
        spec = objects.RequestSpec(
            instance_uuid=uuids.instance, scheduler_hints={},
            requested_destination=objects.Destination(cell=self.cell))
        hosts = [fakes.FakeHostState(name, name, {
            'aggregates': [a for a in aggregates if name in a.hosts],
            'free_disk_mb': 50 * 1024, 'total_usable_disk_gb': 100,
            'stats': {}}) for name in 'ABCD']
        return sorted(h.host for h in self.filt.filter_all(hosts, spec))

    def warnings(self, text):
        return [line for line in self.stdlog.logger.output.splitlines()
                if ' WARNING ' in line and text in line]

    def test_a_blank_group_is_said_once_then_again_when_it_changes(self):
        aggs = [aggregate(1, 'g1', ['A', 'B'], 'g1'),
                aggregate(2, 'typo', ['A', 'C'], '')]
        for _ in range(3):
            self.assertEqual(['A', 'B'], self.schedule(aggs))
        self.assertEqual(1, len(self.warnings('Aggregate typo (id 2)')))
        aggs[1].metadata = {storage_groups.GROUP_KEY: ' '}
        self.assertEqual(['A', 'B'], self.schedule(aggs))
        self.assertEqual(2, len(self.warnings('Aggregate typo (id 2)')))

    def test_a_host_in_two_groups_is_said_once_per_set_of_groups(self):
        aggs = [aggregate(1, 'g1', ['A', 'B'], 'g1'),
                aggregate(2, 'g2', ['A', 'D'], 'g2')]
        for _ in range(3):
            self.assertEqual(['A', 'B', 'D'], self.schedule(aggs))
        self.assertEqual(1, len(self.warnings(
            'Host A is in several storage groups (g1, g2)')))
        aggs.append(aggregate(3, 'g3', ['A'], 'g3'))
        self.schedule(aggs)
        self.assertEqual(1, len(self.warnings(
            'Host A is in several storage groups (g1, g2, g3)')))
