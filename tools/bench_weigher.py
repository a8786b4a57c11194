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

"""Unshelves that reuse their kept disk after the cloud filled up.

Runs on the in-process cloud of the functional tests
(tests/functional/base.py): Nova's API, conductor, scheduler and Placement,
and three compute hosts running the plugin's driver on Nova's fake libvirt
with real disk files. A and B share storage g1; C has its own; each host
can allocate 7680 MB of RAM. Nova's default weighers run in every
configuration.

Each configuration gets a fresh cloud and:

1. boots ``--shelved`` servers on the group's hosts (alternately A and B)
   and shelves them: their disks are kept in g1;
2. boots new servers, as many as the cloud still has room for besides the
   shelved ones (the cloud is then full once they come back);
3. unshelves the shelved servers one after the other.

An unshelve reused its kept disk when it landed on A or B and Glance served
none of its snapshot. Configurations, side by side: Nova's weighers alone,
and with ShelvedHeadroomWeigher at its default multiplier and at 1.0. The
count of shelved instances is read at every request
(``headroom_refresh_interval = 0``): the shelves come just before the
boots here, which in a real cloud would wait up to one interval.

    tox -e bench-weigher [-- --shelved 6 --flavor-mb 1536]
"""

import argparse
import collections
import os
import sys
import time

# Imported first: it patches eventlet in, as for the tests.
from tests.functional import base

WEIGHER_PATH = 'nova_shelve_accel.scheduler.weights.ShelvedHeadroomWeigher'
GROUP_HOSTS = ('A', 'B')
HOSTS = ('A', 'B', 'C')
ALLOCATABLE_MB = base.HOST_MEMORY_MB - base.HOST_RESERVED_MEMORY_MB

# (label, weigher loaded, its multiplier)
CONFIGURATIONS = (
    ("Nova's weighers only", False, None),
    ('+ headroom weigher, default', True, None),
    ('+ headroom weigher, multiplier 1.0', True, 1.0),
)

Outcome = collections.namedtuple(
    'Outcome', ['boots', 'unshelves', 'reused', 'downloads', 'seconds'])


class HeadroomRun(base.ShelveAccelTestBase):
    """One configuration, on a cloud of its own."""

    # Set by run_configuration before the cloud starts.
    with_weigher = False
    multiplier = None
    shelved = 6
    flavor_mb = 1536
    # Nova's test base deletes a test's public attributes when it ends.
    outcomes = []

    def setUp(self):
        if self.with_weigher:
            self.flags(weight_classes=[
                'nova.scheduler.weights.all_weighers', WEIGHER_PATH],
                group='filter_scheduler')
        if self.multiplier is not None:
            self.flags(headroom_weight_multiplier=self.multiplier,
                       group='shelve_accel')
        self.flags(headroom_refresh_interval=0, group='shelve_accel')
        # The project's default quota is 10 instances.
        self.flags(driver='nova.quota.NoopQuotaDriver', group='quota')
        super().setUp()
        self.flavor = self._create_flavor(
            name='m1.bench', memory_mb=self.flavor_mb, vcpu=1, disk=1,
            ephemeral=0)

    def runTest(self):
        start = time.monotonic()
        shelved = self.shelve_in_group()
        per_host = ALLOCATABLE_MB // self.flavor_mb
        boots = collections.Counter(
            self.host_of(self.boot(flavor_id=self.flavor))
            for _ in range(per_host * len(HOSTS) - len(shelved)))
        reused = downloads = 0
        for server in shelved:
            snapshot_id = self.snapshot_id(server)
            server = self.unshelve(server)
            downloads += self.downloads[snapshot_id]
            if (self.host_of(server) in GROUP_HOSTS and
                    not self.downloads[snapshot_id]):
                reused += 1
        self.outcomes.append(Outcome(boots, len(shelved), reused, downloads,
                                     time.monotonic() - start))

    def shelve_in_group(self):
        servers = [self.boot(host=GROUP_HOSTS[i % len(GROUP_HOSTS)],
                             flavor_id=self.flavor)
                   for i in range(self.shelved)]
        return [self.shelve(server) for server in servers]


def run_configuration(with_weigher, multiplier, args):
    run = HeadroomRun()
    run.with_weigher = with_weigher
    run.multiplier = multiplier
    run.shelved = args.shelved
    run.flavor_mb = args.flavor_mb
    base.run_for_benchmark(run)
    return HeadroomRun.outcomes.pop()


def check(args):
    per_host = ALLOCATABLE_MB // args.flavor_mb
    if not 0 < args.shelved <= per_host * len(GROUP_HOSTS):
        sys.exit('--shelved %d: the group (%s) has room for 1 to %d servers '
                 'of %d MB.' % (args.shelved, ', '.join(GROUP_HOSTS),
                                per_host * len(GROUP_HOSTS),
                                args.flavor_mb))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shelved', type=int, default=6,
                        help='servers shelved from the group (default 6)')
    parser.add_argument('--flavor-mb', type=int, default=1536,
                        help='RAM of every server, in MB (default 1536)')
    args = parser.parse_args()
    check(args)
    # Nova's test base stops a test after OS_TEST_TIMEOUT seconds; a
    # configuration takes longer than a test.
    os.environ['OS_TEST_TIMEOUT'] = '900'

    outcomes = [(label, run_configuration(with_weigher, multiplier, args))
                for label, with_weigher, multiplier in CONFIGURATIONS]

    # Printed once all runs are over, apart from the services' logs.
    per_host = ALLOCATABLE_MB // args.flavor_mb
    print()
    print('Command: tox -e bench-weigher -- --shelved %d --flavor-mb %d'
          % (args.shelved, args.flavor_mb))
    print('Cloud: group g1 = %s, outside = C; %d servers of %d MB per host; '
          '%d shelved from g1, then %d new servers booted, then the %d '
          'unshelved.' % (', '.join(GROUP_HOSTS), per_host, args.flavor_mb,
                          args.shelved,
                          per_host * len(HOSTS) - args.shelved,
                          args.shelved))
    print()
    row = '%-36s %9s %9s %16s %10s %6s'
    print(row % ('configuration', 'boots g1', 'boots C', 'reused kept disk',
                 'downloads', 'time'))
    for label, outcome in outcomes:
        in_group = sum(outcome.boots[h] for h in GROUP_HOSTS)
        print(row % (
            label, in_group, outcome.boots['C'],
            '%d/%d (%.0f%%)' % (outcome.reused, outcome.unshelves,
                                100.0 * outcome.reused / outcome.unshelves),
            outcome.downloads, '%.0f s' % outcome.seconds))


if __name__ == '__main__':
    main()
