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

"""Every server of a functional cloud unshelved at once, with and without
HostAggregateGroupFilter.

Runs on the in-process cloud of the functional tests (tests/functional/
base.py, grown by tests/functional/burst.py): Nova's API, conductor,
scheduler and Placement, and ``--computes`` compute services running the
plugin's driver on Nova's fake libvirt with real qcow2 disk files.
``--groups`` storage groups of ``--group-hosts`` hosts share one
``instances_path`` each; the other hosts have storage of their own.

Each configuration gets a fresh cloud and:

1. boots ``--instances`` servers of 512 MB, evenly over the hosts (every
   host has room for 15, so each storage has room for every unshelve);
2. shelves them all (offloaded at once; the driver keeps their disks);
3. sends every unshelve request, then waits for all to be ACTIVE.

With the plugin, the scheduler runs HostAggregateGroupFilter last after
Nova's default filters; without it, Nova's default filters alone (the
computes still run the plugin's driver: an unshelve that happens to land
on its storage still reuses its disk, the others download their snapshot).

Reported per configuration: time from the first request to the last
instance ACTIVE, unshelves per second, image downloads during the burst,
successful claims of kept disks per instance and the kept disks left, and
per scheduling request (SchedulerManager.select_destinations): its wall
time and the CPU time of its greenthreads (every service shares one thread
here, so the wall time includes their work), the CPU time inside
HostAggregateGroupFilter, the filter's instance lookups and their CPU
time, and the SQL statements issued inside the filter, to Nova's databases
and to Placement's. Written to
``--out``: summary.csv, requests.csv (every scheduling request),
instances.csv (every server) and burst_completion.png.

    tox -e bench-burst [-- --instances 200 --computes 20 --groups 4
                           --group-hosts 4 --out bench-results/...]
"""

import argparse
import csv
import logging
import math
import os
import statistics
import time

# Imported first: it patches eventlet in, as for the tests.
from tests.functional import base
from tests.functional import burst

# (label, HostAggregateGroupFilter enabled)
CONFIGURATIONS = (
    ('with the plugin', True),
    ('without (stock filters)', False),
)


class BurstRun(burst.BurstCloud):
    """One configuration, on a cloud of its own."""

    # Nova's test base deletes a test's public attributes when it ends.
    outcomes = []

    def setUp(self):
        super().setUp()
        # Nova's test base formats every DEBUG message, to check it, though
        # only INFO is kept. Services log at INFO in production (debug =
        # False): let DEBUG messages cost what they cost there.
        root = logging.getLogger()
        self.addCleanup(root.setLevel, root.level)
        root.setLevel(logging.INFO)

    def runTest(self):
        self.outcomes.append(self.run_burst())


def run_configuration(with_filter, args):
    run = BurstRun()
    run.with_filter = with_filter
    run.instances = args.instances
    run.layout = layout_of(args)
    base.run_for_benchmark(run)
    return BurstRun.outcomes.pop()


def layout_of(args):
    return burst.Layout.of(
        args.groups, args.group_hosts,
        args.computes - args.groups * args.group_hosts)


# -- figures ----------------------------------------------------------------

def percentile(values, percent):
    """The nearest-rank percentile: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100.0 * len(ordered)) - 1)]


def spread(values, scale=1.0):
    """Median, 95th percentile and maximum, times ``scale``."""
    if not values:
        return (0.0, 0.0, 0.0)
    return tuple(scale * v for v in (statistics.median(values),
                                     percentile(values, 95), max(values)))


def summarise(label, outcome):
    instances = outcome.instances
    requests = outcome.requests
    claims = [i.claims for i in instances]
    lookups = [r.lookups for r in requests]
    row = {
        'configuration': label,
        'instances': len(instances),
        'computes': len(outcome.layout.hosts),
        'boot_s': outcome.boot_seconds,
        'shelve_s': outcome.shelve_seconds,
        'issue_s': outcome.issue_seconds,
        'all_active_s': outcome.seconds,
        'unshelves_per_s': len(instances) / outcome.seconds,
        'downloads': outcome.downloads,
        'in_own_storage': sum(i.in_its_storage for i in instances),
        'claimed_once': claims.count(1),
        'claimed_never': claims.count(0),
        'claimed_more': sum(c > 1 for c in claims),
        'kept_left': len(outcome.kept_left),
        'requests': len(requests),
        'lookups_min': min(lookups),
        'lookups_max': max(lookups),
        'lookups_mean': statistics.mean(lookups),
    }
    figures = (
        ('sched_wall_ms', [r.wall for r in requests], 1000.0),
        ('sched_cpu_ms', [r.cpu for r in requests], 1000.0),
        ('filter_cpu_ms', [r.filter_cpu for r in requests], 1000.0),
        ('lookup_cpu_ms', [r.lookup_cpu for r in requests], 1000.0),
        ('filter_sql', [r.filter_sql for r in requests], 1),
        ('nova_sql', [r.nova_sql for r in requests], 1),
        ('placement_sql', [r.placement_sql for r in requests], 1),
    )
    for name, values, scale in figures:
        for stat, value in zip(('median', 'p95', 'max'),
                               spread(values, scale)):
            row['%s_%s' % (name, stat)] = value
    return row


def request_rows(label, outcome):
    return [{'configuration': label,
             'instance': ' '.join(r.instance_uuids),
             'wall_ms': 1000.0 * r.wall,
             'cpu_ms': 1000.0 * r.cpu,
             'filter_cpu_ms': 1000.0 * r.filter_cpu,
             'lookups': r.lookups,
             'lookup_cpu_ms': 1000.0 * r.lookup_cpu,
             'filter_sql': r.filter_sql,
             'nova_sql': r.nova_sql,
             'placement_sql': r.placement_sql} for r in outcome.requests]


def instance_rows(label, outcome):
    return [{'configuration': label,
             'instance': i.uuid,
             'shelved_from': i.shelved_from,
             'unshelved_on': i.unshelved_on,
             'in_own_storage': i.in_its_storage,
             'seconds_to_active': i.seconds_to_active,
             'claims': i.claims,
             'snapshot_downloads': i.snapshot_downloads}
            for i in outcome.instances]


# -- output -----------------------------------------------------------------

# (heading, how to show a summary row)
TABLE = (
    ('time until all ACTIVE', lambda s: '%.1f s' % s['all_active_s']),
    ('unshelves per second', lambda s: '%.2f' % s['unshelves_per_s']),
    ('sending the requests', lambda s: '%.1f s' % s['issue_s']),
    ('image downloads in the burst', lambda s: '%d' % s['downloads']),
    ('back in their own storage', lambda s: '%d/%d' % (
        s['in_own_storage'], s['instances'])),
    ('kept disk claimed once/never/more', lambda s: '%d/%d/%d' % (
        s['claimed_once'], s['claimed_never'], s['claimed_more'])),
    ('kept disks left afterwards', lambda s: '%d' % s['kept_left']),
    ('scheduler wall ms/request', lambda s: _spread_text(s, 'sched_wall_ms')),
    ('scheduler CPU ms/request', lambda s: _spread_text(s, 'sched_cpu_ms')),
    ('filter CPU ms/request', lambda s: _spread_text(s, 'filter_cpu_ms')),
    ('filter instance lookups/request', lambda s: '%g (%d-%d)' % (
        s['lookups_mean'], s['lookups_min'], s['lookups_max'])),
    ('  their CPU ms/request', lambda s: _spread_text(s, 'lookup_cpu_ms')),
    ('filter SQL statements/request',
     lambda s: _spread_text(s, 'filter_sql', '%d')),
    ('SQL to Nova DBs/request', lambda s: _spread_text(s, 'nova_sql', '%d')),
    ('SQL to Placement/request',
     lambda s: _spread_text(s, 'placement_sql', '%d')),
    ('boot phase, shelve phase', lambda s: '%.0f s, %.0f s' % (
        s['boot_s'], s['shelve_s'])),
)


def _spread_text(summary, name, form='%.1f'):
    return ' / '.join(form % summary['%s_%s' % (name, stat)]
                      for stat in ('median', 'p95', 'max'))


def print_table(summaries):
    row = '%-34s' + ' %-26s' * len(summaries)
    print(row % (('', ) + tuple(s['configuration'] for s in summaries)))
    for heading, show in TABLE:
        print(row % ((heading, ) + tuple(show(s) for s in summaries)))
    print('(x / y / z: median / 95th percentile / maximum over the burst\'s '
          'scheduling requests)')


def write_csv(path, rows):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        # Milliseconds and seconds to the microsecond at most.
        writer.writerows({key: round(value, 3) if isinstance(value, float)
                          else value for key, value in row.items()}
                         for row in rows)


def plot_completion(path, labelled_outcomes):
    # Nova's test base may leave the root logger at DEBUG.
    logging.getLogger('matplotlib').setLevel(logging.WARNING)
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for label, outcome in labelled_outcomes:
        times = sorted(i.seconds_to_active for i in outcome.instances)
        # A step up at each instance becoming ACTIVE, from 0 at the start.
        line, = ax.step([0.0] + times, range(len(times) + 1), where='post',
                        label='%s (%d downloads)' % (label,
                                                     outcome.downloads))
        # The API answers each request at once, but in-process the
        # services already work between the requests.
        ax.axvline(outcome.issue_seconds, color=line.get_color(),
                   linestyle=':', linewidth=1,
                   label='%s: last request sent' % label)
    first = labelled_outcomes[0][1]
    ax.set_xlabel('seconds since the first unshelve request')
    ax.set_ylabel('ACTIVE instances')
    ax.set_title('Burst of %d unshelves on %d compute hosts' % (
        len(first.instances), len(first.layout.hosts)))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--instances', type=int, default=200,
                        help='servers unshelved at once (default 200)')
    parser.add_argument('--computes', type=int, default=20,
                        help='compute services (default 20)')
    parser.add_argument('--groups', type=int, default=4,
                        help='storage groups (default 4)')
    parser.add_argument('--group-hosts', type=int, default=4,
                        help='hosts per storage group (default 4); the '
                             'other hosts have storage of their own')
    parser.add_argument('--out', default='bench-results/burst-functional',
                        help='directory for the CSV files and the plot '
                             '(default %(default)s)')
    args = parser.parse_args()
    try:
        burst.check_room(args.instances, layout_of(args))
    except ValueError as e:
        parser.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    # Nova's test base stops a test after OS_TEST_TIMEOUT seconds; a
    # configuration is no test.
    os.environ['OS_TEST_TIMEOUT'] = '0'

    start = time.monotonic()
    outcomes = [(label, run_configuration(with_filter, args))
                for label, with_filter in CONFIGURATIONS]
    summaries = [summarise(label, o) for label, o in outcomes]
    write_csv(os.path.join(args.out, 'summary.csv'), summaries)
    write_csv(os.path.join(args.out, 'requests.csv'), [
        r for label, o in outcomes for r in request_rows(label, o)])
    write_csv(os.path.join(args.out, 'instances.csv'), [
        r for label, o in outcomes for r in instance_rows(label, o)])
    plot_completion(os.path.join(args.out, 'burst_completion.png'),
                    outcomes)

    # Printed once all runs are over, apart from the services' logs.
    print()
    print('Command: tox -e bench-burst -- --instances %d --computes %d '
          '--groups %d --group-hosts %d' % (
              args.instances, args.computes, args.groups, args.group_hosts))
    print('Cloud: %s; %d servers of %d MB booted evenly, all shelved, then '
          'all unshelved at once.' % (layout_of(args).describe(),
                                      args.instances, burst.FLAVOR_MB))
    print()
    print_table(summaries)
    print()
    print('Both configurations took %.0f s. CSV and plot: %s/{summary,'
          'requests,instances}.csv, %s/burst_completion.png' % (
              time.monotonic() - start, args.out, args.out))


if __name__ == '__main__':
    main()
