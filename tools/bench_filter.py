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

"""Cost of HostAggregateGroupFilter per scheduling request.

Builds real HostState, Aggregate and RequestSpec objects in two layouts:
many storage groups of ten hosts (10, 100, 1000 and 5000 hosts), and one
storage group holding every host (1000 and 5000 hosts), the worst case for
a filter that compares hosts with each other. As in Nova's host manager,
the host states of an aggregate's hosts share one Aggregate object. It
times ``filter_all`` for the unshelve of an instance whose disk is kept in
the first group, and for a new boot. The host that offloaded the instance
is listed last in its aggregate, the worst case for a membership test. The
one database lookup an unshelve makes (the instance, with its system
metadata) is answered from memory and counted, so the times are the
filter's own in-memory work per request; the lookup count shows it stays
constant as hosts grow.

    python -m tools.bench_filter [--requests N]
"""

import argparse
import statistics
import time

from nova.compute import vm_states
from nova import objects
from nova.scheduler import host_manager

from nova_shelve_accel.scheduler import filters
from nova_shelve_accel import shelved
from nova_shelve_accel import storage_groups

GROUP_SIZE = 10
# (layout, hosts per storage group or None for one group of all, counts)
LAYOUTS = (('groups of %d' % GROUP_SIZE, GROUP_SIZE, (10, 100, 1000, 5000)),
           ('one group', None, (1000, 5000)))
INSTANCE = 'a8e0a3a4-3b8e-4b59-9d1f-0d7c1a1f0b11'
SNAPSHOT = '0c6b0a4e-4f6a-4c41-9a55-6a2b0f3f2e22'
CELL_UUID = '5e9a4f0c-63a3-4b5e-8c0e-0b0a6a2f3c33'


def make_hosts(count, group_size):
    """Host states of ``count`` hosts in storage groups of ``group_size``."""
    hosts = []
    for group in range(0, count, group_size):
        names = ['host%d' % i for i in range(group, min(group + group_size,
                                                        count))]
        aggregate = objects.Aggregate(
            id=group, name='g%d' % group, hosts=names,
            metadata={storage_groups.GROUP_KEY: 'g%d' % group})
        for name in names:
            state = host_manager.HostState(name, name, CELL_UUID)
            state.aggregates = [aggregate]
            state.free_disk_mb = 500 * 1024
            state.total_usable_disk_gb = 1000
            # What a host running the plugin's driver reports.
            state.stats = {shelved.STORAGE_FREE_STAT: '50.0'}
            hosts.append(state)
    return hosts


def offloaded_instance(shelved_host):
    return objects.Instance(
        uuid=INSTANCE, vm_state=vm_states.SHELVED_OFFLOADED,
        system_metadata={'shelved_image_id': SNAPSHOT,
                         'shelved_host': shelved_host,
                         shelved.KEPT_DISK_KEY: SNAPSHOT})


def unshelve_spec():
    return objects.RequestSpec(
        instance_uuid=INSTANCE, scheduler_hints={},
        requested_destination=objects.Destination(
            cell=objects.CellMapping(uuid=CELL_UUID, name='cell1')))


def boot_spec():
    return objects.RequestSpec(instance_uuid=INSTANCE, scheduler_hints={},
                               requested_destination=None)


def measure(host_filter, hosts, spec, requests):
    """Median and spread of filter_all, in microseconds per request."""
    durations = []
    for _ in range(requests):
        start = time.perf_counter_ns()
        passed = host_filter.filter_all(hosts, spec)
        durations.append((time.perf_counter_ns() - start) / 1000.0)
    return statistics.median(durations), min(durations), max(durations), \
        len(passed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requests', type=int, default=500,
                        help='scheduling requests timed per row')
    args = parser.parse_args()
    objects.register_all()

    lookups = []
    host_filter = filters.HostAggregateGroupFilter()
    host_filter._load_instance = lambda cell, uuid: (
        lookups.append(uuid) or instance)

    print('HostAggregateGroupFilter.filter_all, %d requests per row'
          % args.requests)
    header = ('request', 'layout', 'hosts', 'passed', 'median us', 'min us',
              'max us', 'us/host', 'lookups/req')
    row = '%-9s %-12s %6s %7s %10s %9s %9s %8s %12s'
    print(row % header)
    for request, make_spec in (('unshelve', unshelve_spec),
                               ('boot', boot_spec)):
        for layout, group_size, counts in LAYOUTS:
            for count in counts:
                size = group_size or count
                hosts = make_hosts(count, size)
                instance = offloaded_instance(hosts[size - 1].host)
                del lookups[:]
                median, low, high, passed = measure(
                    host_filter, hosts, make_spec(), args.requests)
                print(row % (
                    request, layout, count, passed, '%.1f' % median,
                    '%.1f' % low, '%.1f' % high, '%.2f' % (median / count),
                    '%.1f' % (len(lookups) / args.requests)))


if __name__ == '__main__':
    main()
