#!/usr/bin/env python3
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

"""Crash nova-compute at every cut point and check what the cloud makes of it.

    python3 -m tools.fault_matrix [--rows keep.staged,spawn.finished] [--list]
                                  [--mode plugin|fast-shelve]

Needs the loopback cloud of ``tools/cloud/cloud.sh up`` in plugin mode, and
root (it restarts nova-compute on c1 and c2 through ``cloud.sh
compute-restart`` and reads the instance disks). One row per cut point of
``nova_shelve_accel.faults.POINTS``, each with its own server; what a row
does is described in ``tests/e2e/matrix.py``. On a cloud started with
``--storage gluster`` three more rows kill c1's GlusterFS client during a
keep, a claim and an upload (``client_lost.*``). ``takeover.upload`` kills
c1 in an upload and keeps it down until c2 took the upload over (at least
the five minutes of a lease; the row to run with ``cloud.sh up --skew
c2=+2h``). The ``upload`` rows need
``snapshot_upload = after_offload``: the matrix switches the cloud to mode
fast-shelve for them (``cloud.sh mode``, a minute) and back to plugin at the
end. Prints one line per row and exits non-zero when any row fails. A row
takes two to four minutes.
"""

import argparse
import sys
import tempfile
import time

from tests.e2e import cloud
from tests.e2e import invariants
from tests.e2e import matrix


def log(message):
    # One write per line: rows restart computes from several threads.
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), message))
    sys.stderr.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', help='comma-separated cut points (default:'
                        ' all of nova_shelve_accel.faults.POINTS)')
    parser.add_argument('--mode', choices=('plugin', 'fast-shelve'),
                        help='the cloud mode of every row (default: '
                        'plugin, fast-shelve for the upload rows)')
    parser.add_argument('--list', action='store_true',
                        help='print the cut points and their scenarios')
    args = parser.parse_args()
    if args.list:
        for point in matrix.ROWS:
            print('%-40s %s' % (point, matrix.scenario(point) or '(none)'))
        return 0
    points = (args.rows.split(',') if args.rows
              else list(matrix.rows(cloud.storage_kind())))
    unknown = [p for p in points if p not in matrix.ROWS]
    if unknown:
        parser.error('neither cut points of nova_shelve_accel.faults nor '
                     'scenario rows: %s' % ', '.join(unknown))

    started = time.monotonic()
    in_flight_before = invariants.in_flight_entries()
    rows = []
    with tempfile.TemporaryDirectory(prefix='fault-matrix-') as workdir:
        with matrix.Matrix(workdir, log=log, mode=args.mode) as runner:
            for point in points:
                log('row %s (%s)' % (point, matrix.scenario(point)))
                row = runner.run(point)
                rows.append(row)
                log('row %s: %s in %.0f s%s' % (
                    point, 'PASS' if row.passed else 'FAIL', row.seconds,
                    ''.join('\n    ' + f for f in row.failures)))

    print(matrix.table(rows))
    print()
    for row in rows:
        if row.notes or not row.passed:
            print('%s: %s' % (row.point, '; '.join(
                row.notes + [f for f in row.failures
                             if f not in row.notes])))
    stray = sorted(invariants.in_flight_entries() - in_flight_before)
    if stray:
        print('left on the storages by the matrix: %s' % ' '.join(stray))
    failed = [row.point for row in rows if not row.passed]
    print('%d rows, %d failed%s; %.0f s in all' % (
        len(rows), len(failed), ' (%s)' % ', '.join(failed) if failed else '',
        time.monotonic() - started))
    return 1 if failed or stray else 0


if __name__ == '__main__':
    sys.exit(main())
