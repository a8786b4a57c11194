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

"""HostAggregateGroupFilter on real host states, aggregates and specs.

Only the filter's database lookup of the instance is replaced.
"""

from unittest import mock

from oslo_context import context as oslo_context
from oslo_utils.fixture import uuidsentinel as uuids
import sqlalchemy as sa

from nova.compute import vm_states
from nova import context as nova_context
from nova.db.main import api as main_db
from nova import exception
from nova import objects
from nova.scheduler import filters as nova_filters
from nova import test
from nova.tests.unit import fake_instance
from nova.tests.unit.scheduler import fakes

from nova_shelve_accel.scheduler import filters
from nova_shelve_accel import shelved
from nova_shelve_accel import storage_groups

SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
OLD_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000000'
FILTER_PATH = 'nova_shelve_accel.scheduler.filters.HostAggregateGroupFilter'
TOTAL_GB = 100


class FilterTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.flags(free_space_floor_percent=10, group='shelve_accel')
        self.filt = filters.HostAggregateGroupFilter()
        # Each test sees the warnings of its own aggregates.
        storage_groups.forget_warnings()
        self.addCleanup(storage_groups.forget_warnings)
        self.cell = objects.CellMapping(uuid=uuids.cell, name='cell1')
        self.lookups = []
        self.db_instance = None
        # The one database access of the filter.
        self.filt._load_instance = self._load_instance

    def _load_instance(self, cell, instance_uuid):
        self.lookups.append((cell, instance_uuid))
        return self.db_instance

    def offloaded(self, shelved_host='A', kept=SNAPSHOT,
                  vm_state=vm_states.SHELVED_OFFLOADED,
                  shelved_image_id=SNAPSHOT):
        sysmeta = {'shelved_host': shelved_host}
        if shelved_image_id:
            sysmeta['shelved_image_id'] = shelved_image_id
        if kept:
            sysmeta[shelved.KEPT_DISK_KEY] = kept
        self.db_instance = fake_instance.fake_instance_obj(
            nova_context.get_admin_context(), uuid=uuids.instance,
            vm_state=vm_state, host=None, system_metadata=sysmeta,
            expected_attrs=['system_metadata'])
        return self.db_instance

    def spec(self, cell=True, hints=None):
        """A request spec as conductor sends it for a move (or a boot)."""
        spec = objects.RequestSpec(instance_uuid=uuids.instance,
                                   scheduler_hints=hints or {})
        if cell:
            spec.requested_destination = objects.Destination(
                cell=self.cell)
        return spec

    @staticmethod
    def aggregate(name, hosts, group=None, agg_id=1):
        metadata = ({storage_groups.GROUP_KEY: group} if group is not None
                    else {})
        return objects.Aggregate(id=agg_id, name=name, hosts=hosts,
                                 metadata=metadata)

    @staticmethod
    def host(name, aggregates=(), free_disk_mb=TOTAL_GB * 1024 // 2,
             total_usable_disk_gb=TOTAL_GB):
        """A host state carrying the aggregates the host is in."""
        return fakes.FakeHostState(name, name, {
            'aggregates': [a for a in aggregates if name in a.hosts],
            'free_disk_mb': free_disk_mb,
            'total_usable_disk_gb': total_usable_disk_gb,
            # Set from the compute node, as the host manager does; these
            # hosts report no storage reading of their own.
            'stats': {}})

    def hosts(self, names, aggregates=(), **attrs):
        return [self.host(name, aggregates, **attrs) for name in names]

    def g1_and_c(self):
        """A and B share storage g1; C has its own."""
        return self.hosts('ABC', [self.aggregate('g1', ['A', 'B'], 'g1')])

    def passing(self, hosts, spec):
        return [h.host for h in self.filt.filter_all(hosts, spec)]

    def warnings(self, text):
        """Warnings of the filter containing ``text``."""
        return self._logged('WARNING', text)

    def infos(self, text):
        """Info messages of the filter containing ``text``."""
        return self._logged('INFO', text)

    def _logged(self, level, text):
        return [line for line in self.stdlog.logger.output.splitlines()
                if any(' %s [%s] ' % (level, module.__name__) in line
                       for module in (filters, storage_groups)) and
                text in line]


class TestRequestsLeftAlone(FilterTestCase):

    def test_boot_passes_all_hosts_without_lookup(self):
        self.offloaded()
        hosts = self.g1_and_c()
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(hosts, self.spec(cell=False)))
        self.assertEqual([], self.lookups)

    def test_destination_without_cell_passes_all_hosts_without_lookup(self):
        self.offloaded()
        spec = self.spec(cell=False)
        spec.requested_destination = objects.Destination(host='C')
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), spec))
        self.assertEqual([], self.lookups)

    def test_rebuild_passes_all_hosts_without_lookup(self):
        self.offloaded()
        spec = self.spec(hints={'_nova_check_type': ['rebuild']})
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), spec))
        self.assertEqual([], self.lookups)

    def test_migrating_an_active_instance_passes_all_hosts(self):
        self.offloaded(vm_state=vm_states.ACTIVE)
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), self.spec()))
        self.assertEqual([(self.cell, uuids.instance)], self.lookups)

    def test_unshelve_without_kept_disk_passes_all_hosts(self):
        self.offloaded(kept=None)
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), self.spec()))

    def test_unshelve_with_stale_kept_key_passes_all_hosts(self):
        self.offloaded(kept=OLD_SNAPSHOT)
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), self.spec()))

    def test_unshelve_of_a_vanished_instance_passes_all_hosts(self):
        self.db_instance = None
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), self.spec()))
        self.assertEqual(1, len(self.lookups))


class TestUnshelveWithKeptDisk(FilterTestCase):

    def test_only_hosts_of_the_storage_group_pass(self):
        self.offloaded(shelved_host='A')
        self.assertEqual(['A', 'B'],
                         self.passing(self.g1_and_c(), self.spec()))

    def test_group_is_found_from_another_member_when_host_is_absent(self):
        # A, which kept the disk, was filtered out before; B shares it.
        self.offloaded(shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = self.hosts('BC', [g1])
        self.assertEqual(['B'], self.passing(hosts, self.spec()))

    def test_hosts_of_every_group_of_the_host_pass(self):
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1),
                self.aggregate('g2', ['A', 'D'], 'g2', agg_id=2)]
        self.assertEqual(['A', 'B', 'D'],
                         self.passing(self.hosts('ABCD', aggs), self.spec()))

    def test_aggregates_without_group_key_do_not_share_storage(self):
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1),
                self.aggregate('az1', ['A', 'C'], agg_id=2)]
        self.assertEqual(['A', 'B'],
                         self.passing(self.hosts('ABC', aggs), self.spec()))

    def test_host_of_another_group_does_not_pass(self):
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1),
                self.aggregate('g2', ['C', 'D'], 'g2', agg_id=2)]
        self.assertEqual(['A', 'B'],
                         self.passing(self.hosts('ABCD', aggs), self.spec()))

    def test_group_host_below_the_floor_is_excluded(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].free_disk_mb = TOTAL_GB * 1024 * 5 // 100
        self.assertEqual(['A'], self.passing(hosts, self.spec()))

    def test_group_host_at_the_floor_passes(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].free_disk_mb = TOTAL_GB * 1024 * 10 // 100
        self.assertEqual(['A', 'B'], self.passing(hosts, self.spec()))

    def test_floor_zero_takes_a_full_group_host(self):
        self.flags(free_space_floor_percent=0, group='shelve_accel')
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].free_disk_mb = 0
        self.assertEqual(['A', 'B'], self.passing(hosts, self.spec()))

    def test_host_reporting_no_disk_does_not_qualify(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].total_usable_disk_gb = 0
        self.assertEqual(['A'], self.passing(hosts, self.spec()))

    def test_all_pass_when_every_group_host_is_below_the_floor(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        for h in hosts[:2]:
            h.free_disk_mb = 1
        self.assertEqual(['A', 'B', 'C'], self.passing(hosts, self.spec()))

    def test_storage_share_read_by_the_host_wins_over_nova_accounting(self):
        # Nova counts every instance at its flavor's full disk; a reused
        # kept disk adds nothing, so the host's own reading decides.
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].free_disk_mb = 1
        hosts[1].stats = {shelved.STORAGE_FREE_STAT: '40.0'}
        self.assertEqual(['A', 'B'], self.passing(hosts, self.spec()))

    def test_storage_share_read_by_the_host_below_the_floor_excludes(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].stats = {shelved.STORAGE_FREE_STAT: '9.9'}
        self.assertEqual(['A'], self.passing(hosts, self.spec()))

    def test_unreadable_storage_share_falls_back_to_nova_accounting(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[1].stats = {shelved.STORAGE_FREE_STAT: 'full'}
        hosts[1].free_disk_mb = 1
        self.assertEqual(['A'], self.passing(hosts, self.spec()))
        self.assertEqual(1, len(self.warnings(
            "B reports %s = 'full', not a number" %
            shelved.STORAGE_FREE_STAT)))

    def test_fallback_says_the_free_share_of_each_group_host(self):
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        hosts[0].stats = {shelved.STORAGE_FREE_STAT: '3.5'}
        hosts[1].free_disk_mb = TOTAL_GB * 1024 * 8 // 100
        self.assertEqual(['A', 'B', 'C'], self.passing(hosts, self.spec()))
        self.assertEqual(1, len(self.infos(
            'below the free-space floor of 10%: A (3.5% free as the host '
            "read it), B (8.0% free in Nova's accounting); letting all 3 "
            'hosts through')))

    def test_fallback_says_no_group_host_was_left(self):
        self.offloaded(shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        self.passing(self.hosts('CD', [g1]), self.spec())
        self.assertEqual(1, len(self.infos(
            'none of them is left by the other filters; letting all 2 '
            'hosts through')))

    def test_all_pass_when_no_group_host_is_handed_in(self):
        self.offloaded(shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = self.hosts('CD', [g1])
        self.assertEqual(['C', 'D'], self.passing(hosts, self.spec()))

    def test_host_in_no_group_is_its_own_group(self):
        self.offloaded(shelved_host='C')
        self.assertEqual(['C'], self.passing(self.g1_and_c(), self.spec()))

    def test_all_pass_when_the_host_in_no_group_is_absent(self):
        self.offloaded(shelved_host='C')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = self.hosts('ABD', [g1])
        self.assertEqual(['A', 'B', 'D'], self.passing(hosts, self.spec()))

    def test_instance_is_looked_up_in_the_destination_cell(self):
        self.offloaded(shelved_host='A')
        self.passing(self.g1_and_c(), self.spec())
        self.assertEqual([(self.cell, uuids.instance)], self.lookups)

    def test_one_lookup_per_request_for_10_hosts(self):
        self.assert_one_lookup(10)

    def test_one_lookup_per_request_for_100_hosts(self):
        self.assert_one_lookup(100)

    def assert_one_lookup(self, count):
        self.offloaded(shelved_host='h0')
        names = ['h%d' % i for i in range(count)]
        g1 = self.aggregate('g1', names[:count // 2], 'g1')
        hosts = self.hosts(names, [g1])
        self.assertEqual(names[:count // 2],
                         self.passing(hosts, self.spec()))
        self.assertEqual(1, len(self.lookups))


class TestUnshelveWithPendingSnapshot(FilterTestCase):
    """The snapshot still waits for the kept disk: nothing to download."""

    def setUp(self):
        super().setUp()
        # The aggregates in the database, which the filter reads only to
        # name the group in the message of an unshelve that fails.
        self.all_aggregates = []
        self.aggregate_lookups = []

        def get_by_host(cls, context, host, key=None):
            self.aggregate_lookups.append((host, key))
            return objects.AggregateList(objects=[
                a for a in self.all_aggregates
                if host in a.hosts and (key is None or key in a.metadata)])

        self.stub_out('nova.objects.AggregateList.get_by_host', get_by_host)

    def pending(self, mark=SNAPSHOT, **kwargs):
        instance = self.offloaded(**kwargs)
        instance.system_metadata[shelved.PENDING_UPLOAD_KEY] = mark
        return instance

    def full(self, hosts, names):
        for h in hosts:
            if h.host in names:
                h.free_disk_mb = 1
        return hosts

    def test_group_hosts_pass_whatever_their_free_space(self):
        self.pending(shelved_host='A')
        hosts = self.full(self.g1_and_c(), 'AB')
        self.assertEqual(['A', 'B'], self.passing(hosts, self.spec()))
        self.assertEqual([], self.aggregate_lookups)

    def test_the_pending_mark_alone_routes_to_the_group(self):
        # The kept marker was lost (a restart during the offload).
        self.pending(shelved_host='A', kept=None)
        self.assertEqual(['A', 'B'],
                         self.passing(self.g1_and_c(), self.spec()))

    def test_no_group_host_left_fails_the_unshelve_saying_why(self):
        # C and D carry no aggregate of A: the group is read from the
        # database.
        self.pending(shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1)
        self.all_aggregates = [g1, self.aggregate('az1', ['A', 'C'],
                                                  agg_id=2)]
        hosts = self.hosts('CD', [g1])
        error = self.assertRaises(exception.NoValidHost,
                                  self.filt.filter_all, hosts, self.spec())
        self.assertEqual([('A', storage_groups.GROUP_KEY)],
                         self.aggregate_lookups)
        message = str(error)
        self.assertIn(uuids.instance, message)
        self.assertIn(SNAPSHOT, message)
        self.assertIn('storage group g1', message)
        self.assertIn('none of the 2 hosts', message.lower())
        self.assertIn('still being uploaded', message)
        self.assertEqual(1, len(self.warnings(uuids.instance)))

    def test_a_host_in_no_group_names_no_group(self):
        self.pending(shelved_host='C')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        error = self.assertRaises(exception.NoValidHost,
                                  self.filt.filter_all,
                                  self.hosts('AB', [g1]), self.spec())
        self.assertIn('storage of C', str(error))
        self.assertIn('storage group none', str(error))

    def test_aggregates_that_cannot_be_read_still_fail_saying_why(self):
        self.pending(shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        self.stub_out('nova.objects.AggregateList.get_by_host',
                      mock.Mock(side_effect=ValueError('API DB is down')))
        error = self.assertRaises(exception.NoValidHost,
                                  self.filt.filter_all,
                                  self.hosts('CD', [g1]), self.spec())
        self.assertIn('storage of A', str(error))
        self.assertIn('storage group none', str(error))
        self.assertIn('API DB is down', self.stdlog.logger.output)

    def test_group_host_reporting_no_disk_does_not_pass(self):
        self.pending(shelved_host='A')
        hosts = self.g1_and_c()
        for h in hosts[:2]:
            h.total_usable_disk_gb = 0
        self.assertRaises(exception.NoValidHost, self.filt.filter_all,
                          hosts, self.spec())

    def test_once_uploaded_the_stock_fallback_is_back(self):
        # The same request, after the upload cleared the mark.
        instance = self.pending(shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        self.assertRaises(exception.NoValidHost, self.filt.filter_all,
                          self.hosts('CD', [g1]), self.spec())
        del instance.system_metadata[shelved.PENDING_UPLOAD_KEY]
        self.assertEqual(['C', 'D'],
                         self.passing(self.hosts('CD', [g1]), self.spec()))
        hosts = self.full(self.g1_and_c(), 'AB')
        self.assertEqual(['A', 'B', 'C'], self.passing(hosts, self.spec()))

    def test_a_mark_of_another_snapshot_is_ignored(self):
        # Left by an older shelve: the current snapshot holds the data.
        self.pending(mark=OLD_SNAPSHOT, shelved_host='A')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        self.assertEqual(['C', 'D'],
                         self.passing(self.hosts('CD', [g1]), self.spec()))
        hosts = self.full(self.g1_and_c(), 'AB')
        self.assertEqual(['A', 'B', 'C'], self.passing(hosts, self.spec()))

    def test_a_mark_of_another_snapshot_alone_does_not_route(self):
        self.pending(mark=OLD_SNAPSHOT, shelved_host='A', kept=None)
        self.assertEqual(['A', 'B', 'C'],
                         self.passing(self.g1_and_c(), self.spec()))
        self.assertEqual(1, len(self.lookups))

    def test_a_pending_instance_not_offloaded_is_left_alone(self):
        self.pending(shelved_host='A', vm_state=vm_states.ACTIVE)
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        self.assertEqual(['C', 'D'],
                         self.passing(self.hosts('CD', [g1]), self.spec()))


class TestMisconfiguredGroups(FilterTestCase):
    """Typos in the aggregate metadata: a sane choice, never an error."""

    def test_blank_group_value_names_no_group(self):
        self.offloaded(shelved_host='A')
        blank = self.aggregate('shared', ['A', 'B'], '')
        self.assertEqual(['A'],
                         self.passing(self.hosts('ABC', [blank]), self.spec()))
        self.assertEqual(1, len(self.warnings(
            'Aggregate shared (id 1) has a blank shelve_storage_group')))

    def test_whitespace_group_value_names_no_group(self):
        self.offloaded(shelved_host='A')
        blank = self.aggregate('shared', ['A', 'B'], ' \t ')
        self.assertEqual(['A'],
                         self.passing(self.hosts('ABC', [blank]), self.spec()))
        self.assertEqual(1, len(self.warnings(
            'Aggregate shared (id 1) has a blank shelve_storage_group')))

    def test_blank_aggregate_is_ignored_beside_a_real_group(self):
        # Warned once per request, although two hosts carry the aggregate.
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1),
                self.aggregate('typo', ['A', 'C'], '', agg_id=2)]
        self.assertEqual(['A', 'B'],
                         self.passing(self.hosts('ABC', aggs), self.spec()))
        self.assertEqual(1, len(self.warnings('Aggregate typo (id 2)')))

    def test_surrounding_whitespace_is_not_part_of_the_name(self):
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1-a', ['A'], ' g1', agg_id=1),
                self.aggregate('g1-b', ['B'], 'g1 ', agg_id=2)]
        self.assertEqual(['A', 'B'],
                         self.passing(self.hosts('ABC', aggs), self.spec()))
        self.assertEqual([], self.warnings(''))

    def test_shelving_host_in_two_groups_is_warned_once(self):
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1),
                self.aggregate('g2', ['A', 'D'], 'g2', agg_id=2)]
        self.assertEqual(['A', 'B', 'D'],
                         self.passing(self.hosts('ABCD', aggs), self.spec()))
        self.assertEqual(1, len(self.warnings(
            'Host A is in several storage groups (g1, g2)')))
        self.assertEqual(1, len(self.warnings('several storage groups')))

    def test_candidate_in_two_groups_passes_with_a_warning(self):
        self.offloaded(shelved_host='A')
        aggs = [self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1),
                self.aggregate('g3', ['B', 'C'], 'g3', agg_id=2)]
        self.assertEqual(['A', 'B'],
                         self.passing(self.hosts('ABCD', aggs), self.spec()))
        self.assertEqual(1, len(self.warnings(
            'Host B is in several storage groups (g1, g3)')))

    def test_aggregate_without_hosts_or_metadata_is_ignored(self):
        # Both fields are nullable in the Aggregate object.
        self.offloaded(shelved_host='A')
        hosts = self.g1_and_c()
        empty = objects.Aggregate(id=2, name='empty', hosts=None,
                                  metadata=None)
        for h in hosts:
            h.aggregates.append(empty)
        self.assertEqual(['A', 'B'], self.passing(hosts, self.spec()))

    def test_group_that_does_not_share_storage_still_narrows_the_hosts(self):
        # The aggregate says A and B share storage, but B mounts another
        # one. The filter cannot see that and sends the unshelve to A or B,
        # never to C; on B the claim finds no kept disk and the compute
        # host downloads the snapshot, as stock Nova does.
        self.offloaded(shelved_host='A')
        hosts = self.hosts('BC', [self.aggregate('g1', ['A', 'B'], 'g1')])
        self.assertEqual(['B'], self.passing(hosts, self.spec()))

    def test_each_aggregate_is_read_once_per_request(self):
        # Host states share aggregate objects, as in Nova's host manager.
        self.offloaded(shelved_host='h99')
        names = ['h%d' % i for i in range(100)]
        aggs = [self.aggregate('g1', names, 'g1', agg_id=1),
                self.aggregate('az1', names, agg_id=2)]
        hosts = self.hosts(names, aggs)
        with mock.patch.object(storage_groups, 'group_name',
                               wraps=storage_groups.group_name) as read:
            self.assertEqual(names, self.passing(hosts, self.spec()))
        self.assertEqual(2, read.call_count)


class TestInstanceLookup(test.TestCase):
    """The filter's one database lookup, against a real cell database."""

    def setUp(self):
        super().setUp()
        self.cell = self.cell_mappings['cell1']
        self.ctxt = nova_context.get_admin_context()

    def create(self, sysmeta, vm_state=vm_states.SHELVED_OFFLOADED):
        with nova_context.target_cell(self.ctxt, self.cell) as cctxt:
            instance = objects.Instance(
                cctxt, uuid=uuids.instance, project_id='p', user_id='u',
                vm_state=vm_state, system_metadata=sysmeta)
            instance.create()
        return instance

    def load(self, instance_uuid=uuids.instance):
        return filters.HostAggregateGroupFilter._load_instance(
            self.cell, instance_uuid)

    def queries(self):
        """SELECT statements sent to the cell database from now on.

        (oslo.db's SQLite sends a BEGIN of its own besides.)
        """
        with nova_context.target_cell(self.ctxt, self.cell) as cctxt:
            engine = main_db.get_engine(context=cctxt)
        sent = []

        def count(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith('SELECT'):
                sent.append(statement)
        sa.event.listen(engine, 'before_cursor_execute', count)
        self.addCleanup(sa.event.remove, engine, 'before_cursor_execute',
                        count)
        return sent

    def test_reads_state_owner_and_system_metadata_in_one_statement(self):
        self.create({'shelved_host': 'a', 'shelved_image_id': uuids.image,
                     shelved.KEPT_DISK_KEY: uuids.image})
        sent = self.queries()
        found = self.load()
        self.assertEqual(1, len(sent), sent)
        self.assertEqual(uuids.instance, found.uuid)
        self.assertEqual(vm_states.SHELVED_OFFLOADED, found.vm_state)
        self.assertEqual('p', found.project_id)
        self.assertEqual({'shelved_host': 'a', 'shelved_image_id': uuids.image,
                          shelved.KEPT_DISK_KEY: uuids.image},
                         dict(found.system_metadata))
        self.assertTrue(filters.is_offloaded_with_kept_disk(found))

    def test_metadata_removed_since_is_not_read(self):
        # Nova soft-deletes a removed item: the row stays, deleted != 0.
        instance = self.create({'shelved_host': 'a',
                                'shelved_image_id': uuids.image})
        del instance.system_metadata['shelved_host']
        instance.save()
        self.assertEqual({'shelved_image_id': uuids.image},
                         dict(self.load().system_metadata))

    def test_an_instance_without_system_metadata_has_none(self):
        self.create({}, vm_state=vm_states.ACTIVE)
        found = self.load()
        self.assertEqual({}, dict(found.system_metadata))
        self.assertEqual(vm_states.ACTIVE, found.vm_state)

    def test_a_deleted_or_unknown_instance_is_none(self):
        instance = self.create({'shelved_host': 'a'})
        self.assertIsNone(self.load(uuids.other))
        instance.destroy()
        self.assertIsNone(self.load())

    def test_request_context_stays_current(self):
        # The scheduler logs with the thread's current context: after the
        # lookup it must still be the request's, not the cell-targeted
        # admin copy the lookup used.
        self.create({'shelved_host': 'a'})
        request = nova_context.RequestContext(user_id='u', project_id='p')
        self.assertIsNotNone(self.load())
        self.assertIs(request, oslo_context.get_current())
        self.assertIsNone(self.load(uuids.other))
        self.assertIs(request, oslo_context.get_current())


class TestFilterLoading(test.NoDBTestCase):

    def test_filter_is_found_by_its_path_and_runs_once_per_request(self):
        handler = nova_filters.HostFilterHandler()
        [cls] = handler.get_matching_classes([FILTER_PATH])
        self.assertIs(filters.HostAggregateGroupFilter, cls)
        self.assertTrue(cls.run_filter_once_per_request)
