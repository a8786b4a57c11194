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

"""ShelvedHeadroomWeigher in the scheduler of the functional cloud.

Four servers that fill storage group g1 (A and B, two each) are shelved,
two new servers are booted, then the four are unshelved. The group has
room for all four again only if the new servers went to C. With the
weigher they do, and every unshelve reuses its kept disk; without it,
Nova's weighers spread the new servers over the emptiest hosts, at least
one lands in g1, and at least one unshelve downloads its snapshot.

On a cloud set to stack (a negative RAM weight multiplier), unshelves of
kept disks are spread over the group with the weigher, and stacked on one
host without it.
"""

import collections

from tests.functional import base

WEIGHER_PATH = 'nova_shelve_accel.scheduler.weights.ShelvedHeadroomWeigher'
# Two fit on a host: 2 x 3584 of the 7680 MB a host can allocate.
BIG_MB = 3584


class HeadroomScenario(base.ShelveAccelTestBase):

    weigher = True

    def setUp(self):
        if self.weigher:
            self.flags(weight_classes=[
                'nova.scheduler.weights.all_weighers', WEIGHER_PATH],
                group='filter_scheduler')
        # Every scheduling request sees the shelves just made; the count's
        # interval has unit tests of its own.
        self.flags(headroom_refresh_interval=0, group='shelve_accel')
        super().setUp()
        self.big = self._create_flavor(name='m1.big', memory_mb=BIG_MB,
                                       vcpu=1, disk=1, ephemeral=0)

    def shelve_from_group(self):
        """Four servers, two on A and two on B, shelved with kept disks."""
        servers = [self.boot(host=host, flavor_id=self.big)
                   for host in 'AABB']
        servers = [self.shelve(server) for server in servers]
        self.assertEqual(4, len(self.kept_disks(self.g1_path)))
        return servers

    def boot_new(self, count=2):
        return [self.host_of(self.boot(flavor_id=self.big))
                for _ in range(count)]

    def unshelve_all(self, servers):
        """[(host, snapshot downloads)] of each unshelve."""
        landed = []
        for server in servers:
            snapshot_id = self.snapshot_id(server)
            server = self.unshelve(server)
            landed.append((self.host_of(server), self.downloads[snapshot_id]))
        return landed

    def unshelve_two_shelved_from_a(self):
        servers = [self.boot(host='A', flavor_id=self.big)
                   for _ in range(2)]
        servers = [self.shelve(server) for server in servers]
        # The operator fills hosts one after the other.
        self.flags(ram_weight_multiplier=-1.0, group='filter_scheduler')
        return self.unshelve_all(servers)

    @staticmethod
    def count_hosts(landed):
        return collections.Counter(host for host, _downloads in landed)


class TestWithWeigher(HeadroomScenario):

    def test_new_servers_leave_the_group_its_room(self):
        shelved = self.shelve_from_group()
        self.assertEqual(['C', 'C'], self.boot_new())
        landed = self.unshelve_all(shelved)
        self.assertEqual([0, 0, 0, 0], [d for _, d in landed])
        self.assertEqual({'A': 2, 'B': 2}, self.count_hosts(landed))
        self.assertEqual([], self.kept_disks(self.g1_path))

    def test_unshelves_spread_over_the_group_of_a_stacking_cloud(self):
        landed = self.unshelve_two_shelved_from_a()
        # Both fit on A; the weigher puts the second on B, the emptiest.
        self.assertEqual({'A': 1, 'B': 1}, self.count_hosts(landed))
        self.assertEqual([0, 0], [d for _, d in landed])


class TestWithoutWeigher(HeadroomScenario):
    """The control: the same scenario with Nova's weighers only."""

    weigher = False

    def test_new_servers_take_the_room_of_the_shelved_ones(self):
        shelved = self.shelve_from_group()
        booted = self.boot_new()
        self.assertTrue({'A', 'B'} & set(booted), booted)
        landed = self.unshelve_all(shelved)
        self.assertTrue(any(downloads for _, downloads in landed), landed)

    def test_unshelves_stack_on_a_stacking_cloud(self):
        landed = self.unshelve_two_shelved_from_a()
        self.assertEqual(1, len(self.count_hosts(landed)), landed)
        self.assertEqual([0, 0], [d for _, d in landed])
