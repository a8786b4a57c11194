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

"""Time the filter's instance lookup against the loopback cloud's database.

    /opt/nova-shelve-accel/venv/bin/python -m tools.bench_lookup [--requests N]

Run from the repository's root, as root, with the cloud up and at least one
server in it: with the cloud's virtualenv (Nova and its database drivers)
and this checkout's plugin. For each of a few servers of the cell it times,
alternately, what HostAggregateGroupFilter reads per scheduling request
(``HostAggregateGroupFilter._load_instance``: target the cell, one SELECT)
and what Nova's own ``Instance.get_by_uuid(expected_attrs=
['system_metadata'])`` costs in the same place, and prints the median and
95th percentile wall time of each, the SELECT statements each sends, and
their ratio. Both read the same rows of the cloud's MariaDB; nothing is
written.
"""

import argparse
import statistics
import time

import sqlalchemy as sa

from nova import config
from nova import context as nova_context
from nova.db.main import api as main_db
from nova import objects

from nova_shelve_accel.scheduler import filters

NOVA_CONF = '/var/lib/nova-shelve-accel-cloud/etc/nova/nova.conf'


def nova_lookup(cell, instance_uuid):
    ctxt = nova_context.get_admin_context()
    with nova_context.target_cell(ctxt, cell) as cctxt:
        return objects.Instance.get_by_uuid(
            cctxt, instance_uuid, expected_attrs=['system_metadata'])


def selects_of(engine, lookup, *args):
    sent = []

    def count(conn, cursor, statement, *rest):
        if statement.lstrip().upper().startswith('SELECT'):
            sent.append(statement)
    sa.event.listen(engine, 'before_cursor_execute', count)
    try:
        lookup(*args)
    finally:
        sa.event.remove(engine, 'before_cursor_execute', count)
    return len(sent)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=300)
    parser.add_argument('--config-file', default=NOVA_CONF)
    args = parser.parse_args()
    config.parse_args(['bench_lookup', '--config-file', args.config_file])
    objects.register_all()
    ctxt = nova_context.get_admin_context()
    cell = next(c for c in objects.CellMappingList.get_all(ctxt)
                if not c.is_cell0())
    with nova_context.target_cell(ctxt, cell) as cctxt:
        uuids = [i.uuid for i in objects.InstanceList.get_by_filters(
            cctxt, {'deleted': False}, limit=5)]
        engine = main_db.get_engine(context=cctxt)
    if not uuids:
        parser.error('the cloud has no server: boot one first')
    lookups = (('the filter (one SELECT)',
                filters.HostAggregateGroupFilter._load_instance),
               ('Instance.get_by_uuid', nova_lookup))
    times = {name: [] for name, _lookup in lookups}
    for n in range(args.requests):
        for name, lookup in lookups:
            started = time.perf_counter()
            lookup(cell, uuids[n % len(uuids)])
            times[name].append((time.perf_counter() - started) * 1000)
    print('%d lookups each, alternating, over %d servers of cell %s:'
          % (args.requests, len(uuids), cell.name))
    print('%-26s %10s %10s %8s' % ('lookup', 'median ms', 'p95 ms',
                                   'SELECTs'))
    medians = {}
    for name, lookup in lookups:
        found = sorted(times[name])
        medians[name] = statistics.median(found)
        print('%-26s %10.2f %10.2f %8d' % (
            name, medians[name], found[int(len(found) * 0.95) - 1],
            selects_of(engine, lookup, cell, uuids[0])))
    print('ratio (get_by_uuid / filter): %.1fx' % (
        medians['Instance.get_by_uuid'] /
        medians['the filter (one SELECT)']))


if __name__ == '__main__':
    main()
