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

"""ShelvedHeadroomWeigher on real host states, aggregates and specs.

Hosts are weighed through Nova's own weight handler, which normalises and
multiplies as nova-scheduler does. The instances shelved with kept disks
live in Nova's cell databases; only the pure weighing tests give the
weigher a fixed count instead.
"""

from unittest import mock

import fixtures
from oslo_db import exception as db_exc
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_utils import uuidutils

from nova.compute import vm_states
from nova import context as nova_context
from nova import objects
from nova.scheduler import weights as nova_weights
from nova.scheduler.weights import ram
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit.scheduler import fakes

from nova_shelve_accel.scheduler import filters
from nova_shelve_accel.scheduler import weights
from nova_shelve_accel import shelved
from nova_shelve_accel import storage_groups

WEIGHER_PATH = 'nova_shelve_accel.scheduler.weights.ShelvedHeadroomWeigher'
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
OLD_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000000'
HOST_MB = 8192


class FixedDemand:
    """A count of shelved instances' needs that never reads a database."""

    def __init__(self, by_host):
        self._by_host = {host: weights.Need(*need)
                         for host, need in by_host.items()}
        self.reads = 0

    def by_host(self):
        self.reads += 1
        return self._by_host


class FakeClock:

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class WeigherTestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.flags(headroom_weight_multiplier=1000.0,
                   headroom_refresh_interval=60, group='shelve_accel')
        self.ctxt = nova_context.get_admin_context()
        self.weigher = weights.ShelvedHeadroomWeigher()
        self.clock = FakeClock()
        self.weigher._demand = weights.ShelvedDemand(clock=self.clock)
        self.handler = nova_weights.HostWeightHandler()

    # -- the request and the hosts ---------------------------------------

    @staticmethod
    def aggregate(name, hosts, group=None, agg_id=1, **metadata):
        if group is not None:
            metadata[storage_groups.GROUP_KEY] = group
        return objects.Aggregate(id=agg_id, name=name, hosts=hosts,
                                 metadata=metadata)

    @staticmethod
    def host(name, aggregates=(), free_mb=HOST_MB, total_mb=HOST_MB,
             vcpus_total=8, vcpus_used=0, ram_ratio=1.0, cpu_ratio=1.0):
        """A host state carrying the aggregates the host is in."""
        return fakes.FakeHostState(name, name, {
            'aggregates': [a for a in aggregates if name in a.hosts],
            'free_ram_mb': free_mb, 'total_usable_ram_mb': total_mb,
            'vcpus_total': vcpus_total, 'vcpus_used': vcpus_used,
            'ram_allocation_ratio': ram_ratio,
            'cpu_allocation_ratio': cpu_ratio})

    def g1_and_c(self, free_mb=(4096, 4096, 4096), **attrs):
        """A and B share storage g1; C has its own."""
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        return [self.host(name, [g1], free_mb=free, **attrs)
                for name, free in zip('ABC', free_mb)]

    def boot_spec(self, memory_mb=1024, vcpus=1):
        return objects.RequestSpec(
            instance_uuid=uuids.new_server, scheduler_hints={},
            flavor=objects.Flavor(memory_mb=memory_mb, vcpus=vcpus))

    def unshelve_spec(self, instance, hints=None):
        """The spec conductor sends for the unshelve of ``instance``."""
        return objects.RequestSpec(
            instance_uuid=instance.uuid, scheduler_hints=hints or {},
            flavor=objects.Flavor(memory_mb=instance.memory_mb,
                                  vcpus=instance.vcpus),
            requested_destination=objects.Destination(
                cell=self.cell_mappings['cell1']))

    # -- the shelved instances, in the cell databases --------------------

    def shelved_instance(self, shelved_host, memory_mb=1024, vcpus=1,
                         kept=SNAPSHOT, pending=None, cell='cell1',
                         vm_state=vm_states.SHELVED_OFFLOADED, uuid=None):
        sysmeta = {'shelved_image_id': SNAPSHOT}
        if shelved_host:
            sysmeta['shelved_host'] = shelved_host
        if kept:
            sysmeta[shelved.KEPT_DISK_KEY] = kept
        if pending:
            sysmeta[shelved.PENDING_UPLOAD_KEY] = pending
        with nova_context.target_cell(
                self.ctxt, self.cell_mappings[cell]) as cctxt:
            instance = objects.Instance(
                context=cctxt, uuid=uuid or uuidutils.generate_uuid(),
                project_id='project', user_id='user', vm_state=vm_state,
                host=None, memory_mb=memory_mb, vcpus=vcpus,
                system_metadata=sysmeta)
            instance.create()
        return instance

    # -- weighing --------------------------------------------------------

    def raw_weights(self, hosts, spec):
        weighed = [nova_weights.WeighedHost(h, 0.0) for h in hosts]
        return dict(zip((h.host for h in hosts),
                        self.weigher.weigh_objects(weighed, spec)))

    def scores(self, hosts, spec):
        """{host: weight} as nova-scheduler adds this weigher's share."""
        return {w.obj.host: w.weight for w in
                self.handler.get_weighed_objects([self.weigher], hosts,
                                                 spec)}

    def order(self, hosts, spec):
        return [w.obj.host for w in self.handler.get_weighed_objects(
            [self.weigher], hosts, spec)]


class TestGroupHeadroom(WeigherTestCase):
    """Any request but an unshelve onto a kept disk in its group."""

    def given_demand(self, **by_host):
        """{shelved_host: (MB in all, vCPUs, MB of the smallest)}."""
        self.weigher._demand = FixedDemand(by_host)

    def test_group_short_of_room_weighs_the_share_it_still_covers(self):
        # g1 has 8192 MB free; its shelved instances need 8192 MB; after
        # this 1024 MB boot it would cover 7/8 of that.
        self.given_demand(A=(8192, 2, 1024))
        self.assertEqual({'A': 0.875, 'B': 0.875, 'C': 1.0},
                         self.raw_weights(self.g1_and_c(), self.boot_spec()))

    def test_boot_goes_outside_the_group_by_default_multiplier(self):
        # With Nova's RAM weigher, which prefers A and B: g1 would cover
        # 7/8 of its need after the boot.
        self.given_demand(A=(8192, 3, 1024))
        hosts = self.g1_and_c(free_mb=(4096, 4096, 2048))
        both = [ram.RAMWeigher(), self.weigher]
        self.assertEqual('C', self.handler.get_weighed_objects(
            both, hosts, self.boot_spec())[0].obj.host)
        # At 1.0 the room is a mere preference, which free RAM outweighs.
        self.flags(headroom_weight_multiplier=1.0, group='shelve_accel')
        self.assertEqual('A', self.handler.get_weighed_objects(
            both, hosts, self.boot_spec())[0].obj.host)

    def test_group_with_room_to_spare_weighs_as_much_as_outside(self):
        self.given_demand(A=(2048, 2, 1024), B=(1024, 1, 1024))
        self.assertEqual({'A': 1.0, 'B': 1.0, 'C': 1.0},
                         self.raw_weights(self.g1_and_c(), self.boot_spec()))

    def test_room_exactly_left_after_the_request_is_enough(self):
        # 8192 free - 1024 for the boot = the 7168 needed.
        self.given_demand(B=(7168, 1, 1024))
        self.assertEqual(1.0, self.raw_weights(
            self.g1_and_c(), self.boot_spec(1024))['A'])
        self.assertLess(self.raw_weights(
            self.g1_and_c(), self.boot_spec(1025))['A'], 1.0)

    def test_group_that_cannot_cover_anything_weighs_zero(self):
        self.given_demand(A=(4096, 1, 1024))
        weights_ = self.raw_weights(self.g1_and_c(free_mb=(512, 256, 512)),
                                    self.boot_spec(1024))
        self.assertEqual({'A': 0.0, 'B': 0.0, 'C': 1.0}, weights_)

    def test_vcpus_short_while_ram_is_plenty(self):
        # 2 x 8 vCPUs free, 1 for the boot, 20 needed: 15/20.
        self.given_demand(A=(1024, 20, 1024))
        weights_ = self.raw_weights(self.g1_and_c(), self.boot_spec(1024, 1))
        self.assertEqual(0.75, weights_['A'])

    def test_allocation_ratios_count_as_placement_counts_them(self):
        # 8192 MB at ratio 1.5 with 4096 used: 8192 MB free, not 4096;
        # (2 x 8192 - 2048) of 16384 needed.
        self.given_demand(A=(16384, 1, 1024))
        hosts = self.g1_and_c(free_mb=(4096, 4096, 4096), ram_ratio=1.5)
        self.assertEqual(0.875, self.raw_weights(
            hosts, self.boot_spec(2048))['A'])

    def test_need_of_a_group_host_filtered_out_still_counts(self):
        # D shelved the instances; the filters left only A and C.
        g1 = self.aggregate('g1', ['A', 'D'], 'g1')
        hosts = [self.host('A', [g1], free_mb=4096),
                 self.host('C', [g1], free_mb=4096)]
        self.given_demand(D=(4096, 1, 1024))
        self.assertEqual({'A': 0.75, 'C': 1.0},
                         self.raw_weights(hosts, self.boot_spec(1024)))

    def test_free_room_of_a_group_host_filtered_out_does_not_count(self):
        # B has room but is not a candidate: only A's counts.
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = [self.host('A', [g1], free_mb=4096),
                 self.host('C', [g1], free_mb=4096)]
        self.given_demand(B=(6144, 1, 1024))
        self.assertEqual(0.5, self.raw_weights(
            hosts, self.boot_spec(1024))['A'])

    def test_overcommitted_host_counts_as_nothing_free(self):
        # B uses more than it has: it does not eat A's room.
        self.given_demand(A=(2048, 1, 1024))
        hosts = self.g1_and_c(free_mb=(3072, -4096, 4096))
        self.assertEqual(1.0, self.raw_weights(
            hosts, self.boot_spec(1024))['A'])

    def test_ram_in_pieces_smaller_than_a_shelved_instance_is_no_room(self):
        # Two 1024 MB instances; 1536 MB free on A and on B, 3072 in all.
        self.given_demand(A=(2048, 2, 1024))
        hosts = self.g1_and_c(free_mb=(1536, 1536, 4096))
        # 512 MB more on A leaves room for both; 1024 MB more, for one.
        self.assertEqual(1.0, self.raw_weights(
            hosts, self.boot_spec(512))['A'])
        self.assertEqual(0.5, self.raw_weights(
            hosts, self.boot_spec(1024))['A'])

    def test_request_that_fits_in_a_hosts_spare_piece_costs_no_room(self):
        # A has room for one 1024 MB instance and 512 MB besides; B for one.
        self.given_demand(A=(2048, 2, 1024))
        hosts = self.g1_and_c(free_mb=(1536, 1024, 4096))
        self.assertEqual({'A': 1.0, 'B': 0.5, 'C': 1.0},
                         self.raw_weights(hosts, self.boot_spec(512)))

    def test_need_of_hosts_outside_any_group_is_ignored(self):
        self.given_demand(C=(8192, 8, 1024))
        self.assertEqual({'A': 1.0, 'B': 1.0, 'C': 1.0},
                         self.raw_weights(self.g1_and_c(), self.boot_spec()))

    def test_each_group_keeps_its_own_room(self):
        g1 = self.aggregate('g1', ['A'], 'g1', agg_id=1)
        g2 = self.aggregate('g2', ['B'], 'g2', agg_id=2)
        hosts = [self.host('A', [g1, g2], free_mb=4096),
                 self.host('B', [g1, g2], free_mb=4096),
                 self.host('C', [g1, g2], free_mb=1024)]
        self.given_demand(A=(6144, 1, 1024), B=(3072, 1, 1024))
        self.assertEqual('A', self.order(hosts, self.boot_spec(1024))[-1])
        self.assertEqual({'A': 0.5, 'B': 1.0, 'C': 1.0},
                         self.raw_weights(hosts, self.boot_spec(1024)))

    def test_host_in_two_groups_keeps_the_room_of_the_tightest(self):
        g1 = self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1)
        g2 = self.aggregate('g2', ['B', 'C'], 'g2', agg_id=2)
        hosts = [self.host(n, [g1, g2], free_mb=4096) for n in 'ABC']
        self.given_demand(A=(2048, 1, 1024), C=(5120, 1, 1024))
        # g1: 8192 - 1024 covers 2048; g2: 7168 of 5120, too.
        self.assertEqual({'A': 1.0, 'B': 1.0, 'C': 1.0},
                         self.raw_weights(hosts, self.boot_spec(1024)))
        # g2: 8192 - 4096 covers 4096 of 5120.
        self.assertEqual({'A': 1.0, 'B': 0.8, 'C': 0.8},
                         self.raw_weights(hosts, self.boot_spec(4096)))

    def test_blank_group_name_is_no_group(self):
        blank = self.aggregate('blank', ['A', 'B'], '  ')
        hosts = [self.host(n, [blank], free_mb=1024) for n in 'AB']
        self.given_demand(A=(8192, 8, 1024))
        self.assertEqual({'A': 1.0, 'B': 1.0},
                         self.raw_weights(hosts, self.boot_spec()))

    def test_nova_scales_to_the_bounds_not_to_the_other_hosts(self):
        # 8192 free - 1024, of 7296 needed: 98% covered, 2% of the
        # multiplier lost; Nova's min-max scaling would have lost it all.
        self.given_demand(A=(7296, 1, 128))
        scores = self.scores(self.g1_and_c(), self.boot_spec(1024))
        self.assertEqual(1000.0, scores['C'])
        self.assertAlmostEqual(1000.0 * 7168 / 7296, scores['A'])
        # Nor against the best of them, when every host is in the group.
        scores = self.scores(self.g1_and_c()[:2], self.boot_spec(1024))
        self.assertAlmostEqual(1000.0 * 7168 / 7296, scores['B'])

    def test_no_need_anywhere_gives_every_host_the_same_score(self):
        self.given_demand()
        self.assertEqual({'A': 1000.0, 'B': 1000.0, 'C': 1000.0},
                         self.scores(self.g1_and_c(), self.boot_spec()))

    def test_multiplier_of_the_option_and_of_an_aggregate(self):
        self.flags(headroom_weight_multiplier=2.0, group='shelve_accel')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1,
                            headroom_weight_multiplier='5.0')
        hosts = [self.host(n, [g1], free_mb=4096) for n in 'ABC']
        self.given_demand(A=(16384, 1, 1024))
        scores = self.scores(hosts, self.boot_spec(1024))
        # g1 covers (8192 - 1024) / 16384 of its need.
        self.assertAlmostEqual(5.0 * 7168 / 16384, scores['A'])
        self.assertEqual(2.0, scores['C'])

    def test_zero_multiplier_reads_nothing(self):
        self.flags(headroom_weight_multiplier=0.0, group='shelve_accel')
        demand = FixedDemand({'A': (8192, 8, 1024)})
        self.weigher._demand = demand
        self.assertEqual({'A': 0.0, 'B': 0.0, 'C': 0.0},
                         self.raw_weights(self.g1_and_c(), self.boot_spec()))
        self.assertEqual(0, demand.reads)

    def test_zero_multiplier_but_in_one_aggregate_weighs(self):
        self.flags(headroom_weight_multiplier=0.0, group='shelve_accel')
        g1 = self.aggregate('g1', ['A', 'B'], 'g1',
                            headroom_weight_multiplier='10')
        hosts = [self.host(n, [g1], free_mb=4096) for n in 'ABC']
        self.given_demand(A=(8192, 1, 1024))
        self.assertEqual(0.875, self.raw_weights(
            hosts, self.boot_spec(1024))['A'])


class TestUnshelve(WeigherTestCase):
    """The instance being scheduled is read from its cell's database."""

    def test_unshelve_in_its_group_is_spread_by_free_ram(self):
        instance = self.shelved_instance('A', memory_mb=1024)
        g1 = self.aggregate('g1', ['A', 'B', 'D'], 'g1')
        hosts = [self.host('A', [g1], free_mb=2048),
                 self.host('B', [g1], free_mb=4096),
                 self.host('D', [g1], free_mb=1024)]
        self.assertEqual({'A': 0.5, 'B': 1.0, 'D': 0.25},
                         self.raw_weights(hosts,
                                          self.unshelve_spec(instance)))
        self.assertEqual(['B', 'A', 'D'],
                         self.order(hosts, self.unshelve_spec(instance)))

    def test_unshelve_with_a_pending_snapshot_is_spread_too(self):
        instance = self.shelved_instance('A', kept=None, pending=SNAPSHOT)
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = [self.host('A', [g1], free_mb=1024),
                 self.host('B', [g1], free_mb=4096)]
        self.assertEqual({'A': 0.25, 'B': 1.0}, self.raw_weights(
            hosts, self.unshelve_spec(instance)))

    def test_spread_ignores_the_room_kept_for_the_others(self):
        # Every shelved instance of the group needs more than is free:
        # the unshelve is one of them and spreads anyway.
        instance = self.shelved_instance('A', memory_mb=4096)
        self.shelved_instance('B', memory_mb=8192)
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = [self.host('A', [g1], free_mb=4096),
                 self.host('B', [g1], free_mb=4096)]
        self.assertEqual({'A': 1.0, 'B': 1.0}, self.raw_weights(
            hosts, self.unshelve_spec(instance)))

    def test_unshelve_let_out_of_its_group_keeps_other_groups_room(self):
        # The filter found no room in g1 and let every host through: the
        # unshelve downloads its snapshot, and should not take g2's room.
        instance = self.shelved_instance('A', memory_mb=2048)
        for _ in range(3):
            self.shelved_instance('D', memory_mb=2048)
        g1 = self.aggregate('g1', ['A', 'B'], 'g1', agg_id=1)
        g2 = self.aggregate('g2', ['D'], 'g2', agg_id=2)
        aggs = [g1, g2]
        hosts = [self.host('A', aggs, free_mb=1024),
                 self.host('C', aggs, free_mb=2048),
                 self.host('D', aggs, free_mb=6144)]
        # g2 would keep 4096 of the 6144 MB its instances need.
        self.assertEqual({'A': 0.0, 'C': 1.0, 'D': 4096 / 6144},
                         self.raw_weights(hosts,
                                          self.unshelve_spec(instance)))

    def test_unshelve_without_a_kept_disk_is_weighed_like_a_boot(self):
        instance = self.shelved_instance('A', kept=OLD_SNAPSHOT)
        self.shelved_instance('B', memory_mb=4096)
        self.shelved_instance('B', memory_mb=4096)
        hosts = self.g1_and_c()
        # Either host of g1 would have room for one of the two left.
        self.assertEqual({'A': 0.5, 'B': 0.5, 'C': 1.0},
                         self.raw_weights(hosts,
                                          self.unshelve_spec(instance)))

    def test_rebuild_is_weighed_like_a_boot(self):
        instance = self.shelved_instance('A', memory_mb=1024)
        self.shelved_instance('B', memory_mb=8192)
        spec = self.unshelve_spec(
            instance, hints={'_nova_check_type': ['rebuild']})
        # g1's need counts both: 9216 MB; 8192 - 1024 covers 7/9.
        self.assertAlmostEqual(7 / 9, self.raw_weights(
            self.g1_and_c(), spec)['A'])

    def test_the_filter_s_read_of_the_instance_is_not_read_again(self):
        # nova-scheduler runs the filter, then the weigher, on one request:
        # one read of the instance's cell for both, and again for the next.
        instance = self.shelved_instance('A', memory_mb=1024)
        g1 = self.aggregate('g1', ['A', 'B'], 'g1')
        hosts = [self.host('A', [g1], free_mb=2048),
                 self.host('B', [g1], free_mb=4096)]
        spec = self.unshelve_spec(instance)
        group_filter = filters.HostAggregateGroupFilter()
        with mock.patch.object(filters, '_instance_rows',
                               wraps=filters._instance_rows) as get:
            self.assertEqual(instance.uuid,
                             group_filter.shelved_instance(spec).uuid)
            self.assertEqual({'A': 0.5, 'B': 1.0},
                             self.raw_weights(hosts, spec))
            self.assertEqual(1, get.call_count)
            self.raw_weights(hosts, self.unshelve_spec(instance))
            self.assertEqual(2, get.call_count)


class TestShelvedDemand(WeigherTestCase):
    """The count, read from the cell databases."""

    NUMBER_OF_CELLS = 2

    def setUp(self):
        super().setUp()
        self.demand = self.weigher._demand
        # Counts the queries; each still reads the database.
        self.real_get = objects.InstanceList.get_by_filters
        self.reads = self.useFixture(fixtures.MockPatchObject(
            objects.InstanceList, 'get_by_filters',
            wraps=self.real_get)).mock

    def test_counts_instances_with_kept_disks_per_host_across_cells(self):
        self.shelved_instance('A', memory_mb=2048, vcpus=2)
        self.shelved_instance('A', memory_mb=1024, vcpus=1, kept=None,
                              pending=SNAPSHOT)
        self.shelved_instance('B', memory_mb=512, vcpus=1)
        self.shelved_instance('A', memory_mb=4096, vcpus=4, cell='cell2')
        # Not counted: a stock shelve, a marker of an older shelve, an
        # instance running again, one shelved without a host, a deleted
        # one.
        self.shelved_instance('A', kept=None)
        self.shelved_instance('A', kept=OLD_SNAPSHOT)
        self.shelved_instance('A', vm_state=vm_states.ACTIVE)
        self.shelved_instance(None)
        self.shelved_instance('B', cell='cell2').destroy()
        self.assertEqual({'A': (7168, 7, 1024), 'B': (512, 1, 512)},
                         self.demand.by_host())
        # One query per cell, cell0 skipped.
        self.assertEqual(2, self.reads.call_count)

    def test_read_once_per_interval(self):
        self.shelved_instance('A', memory_mb=1024)
        self.assertEqual({'A': (1024, 1, 1024)}, self.demand.by_host())
        self.shelved_instance('A', memory_mb=2048)
        self.clock.now += 59
        self.assertEqual({'A': (1024, 1, 1024)}, self.demand.by_host())
        self.assertEqual(2, self.reads.call_count)
        self.clock.now += 1
        self.assertEqual({'A': (3072, 2, 1024)}, self.demand.by_host())
        self.assertEqual(4, self.reads.call_count)

    def test_interval_zero_reads_at_every_call(self):
        self.flags(headroom_refresh_interval=0, group='shelve_accel')
        self.demand.by_host()
        self.demand.by_host()
        self.assertEqual(4, self.reads.call_count)

    def test_requests_do_not_read_per_host_nor_per_request(self):
        for _ in range(60):
            self.shelved_instance('A', memory_mb=256)
        names = ['h%d' % i for i in range(50)]
        g1 = self.aggregate('g1', names + ['A'], 'g1')
        hosts = [self.host(n, [g1], free_mb=256) for n in names]
        for _ in range(20):
            weighed = self.raw_weights(hosts, self.boot_spec(256))
        # One query per cell for the 20 requests of 50 hosts.
        self.assertEqual(2, self.reads.call_count)
        # (50 - 1) x 256 MB of the 60 x 256 needed.
        self.assertEqual({n: 49 / 60 for n in names}, weighed)

    def test_a_request_arriving_during_a_read_uses_the_previous_count(self):
        self.shelved_instance('A', memory_mb=1024)
        self.assertEqual({'A': (1024, 1, 1024)}, self.demand.by_host())
        self.shelved_instance('A', memory_mb=2048)
        self.clock.now += 60
        seen_during_read = []

        def slow_cell(*args, **kwargs):
            # Another scheduling request, while this read waits on a cell.
            seen_during_read.append(self.demand.by_host())
            return self.real_get(*args, **kwargs)

        self.reads.side_effect = slow_cell
        self.assertEqual({'A': (3072, 2, 1024)}, self.demand.by_host())
        self.assertEqual([{'A': (1024, 1, 1024)}] * 2, seen_during_read)

    def test_cell_that_fails_counts_nothing_with_a_warning(self):
        self.shelved_instance('A', memory_mb=1024)
        self.shelved_instance('B', memory_mb=2048, cell='cell2')
        with nova_fixtures.DownCellFixture([self.cell_mappings['cell2']]):
            self.assertEqual({'A': (1024, 1, 1024)}, self.demand.by_host())
        self.assertIn('Cannot count the instances shelved with kept disks '
                      'in cell %s (DBError' % self.cell_mappings['cell2'].uuid,
                      self.stdlog.logger.output)

    def test_all_cells_failing_leave_every_host_the_same_weight(self):
        self.shelved_instance('A', memory_mb=4096)
        self.shelved_instance('A', memory_mb=4096)
        with nova_fixtures.DownCellFixture():
            self.assertEqual({'A': 1.0, 'B': 1.0, 'C': 1.0},
                             self.raw_weights(self.g1_and_c(),
                                              self.boot_spec()))
        self.assertIn('Cannot count the instances shelved with kept disks '
                      'in cell %s (DBError' % self.cell_mappings['cell1'].uuid,
                      self.stdlog.logger.output)
        # Read again only when the interval has passed.
        self.clock.now += 60
        self.assertEqual(0.5, self.raw_weights(
            self.g1_and_c(), self.boot_spec())['A'])

    def test_cell_list_that_cannot_be_read_counts_nothing(self):
        self.shelved_instance('A', memory_mb=8192)
        with mock.patch.object(objects.CellMappingList, 'get_all',
                               side_effect=db_exc.DBConnectionError()):
            self.assertEqual({}, self.demand.by_host())
        self.assertIn('Cannot list the cells to count the instances',
                      self.stdlog.logger.output)


class TestWeigherLoading(test.NoDBTestCase):

    def test_weigher_is_found_by_its_path_next_to_novas(self):
        handler = nova_weights.HostWeightHandler()
        classes = handler.get_matching_classes(
            ['nova.scheduler.weights.all_weighers', WEIGHER_PATH])
        self.assertIn(weights.ShelvedHeadroomWeigher, classes)
        self.assertEqual(len(set(classes)), len(classes))

    def test_option_defaults(self):
        group = weights.CONF.shelve_accel
        self.assertEqual(1000.0, group.headroom_weight_multiplier)
        self.assertEqual(60, group.headroom_refresh_interval)
