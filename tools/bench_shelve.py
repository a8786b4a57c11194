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

"""Shelve/unshelve benchmark on the loopback cloud: plugin against stock.

Run it through ``tools/benchmark.sh``, which brings the cloud up first. For
each mode (``plugin``: PartialOffloadLibvirtDriver and
HostAggregateGroupFilter; ``stock``: libvirt.LibvirtDriver, no filter) and
each amount of written data, every repetition:

* boots a server on c1 from a small qcow2 image, stops it and writes the
  data into its root disk with qemu-io (as a guest would have);
* times ``start`` (SHUTOFF to ACTIVE) and ``stop`` (ACTIVE to SHUTOFF): the
  lower bound, nothing is copied;
* times ``shelve`` (request to SHELVED_OFFLOADED; the cloud offloads at
  once) and ``unshelve`` (request to ACTIVE), counting the image bytes
  Glance sent during the unshelve (its access log).

Then a burst: several servers shelved, then all unshelved at once; the
time until the last one is ACTIVE. After each switch of mode, one untimed
round with the smallest size warms the restarted services up.

Times are taken through the API (openstacksdk), polling every 0.2 s.
Output: a table on the terminal, ``samples.csv`` (every measurement),
``summary.csv`` and ``unshelve.png`` in the output directory.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import openstack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from tests.e2e import cloud  # noqa: E402

MODES = ('plugin', 'stock')
POLL = 0.2
MIB = 1024 * 1024
IMAGE_MB = 64


def parse_size(text):
    units = {'M': MIB, 'G': 1024 * MIB}
    text = text.strip().upper().rstrip('IB')
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_label(size):
    if size >= 1024 * MIB and size % (1024 * MIB) == 0:
        return '%d GiB' % (size // (1024 * MIB))
    return '%d MiB' % (size // MIB)


class Bench(object):

    def __init__(self, conn, workdir):
        self.conn = conn
        self.workdir = workdir
        self.flavor = conn.compute.find_flavor(cloud.FLAVOR,
                                               ignore_missing=False)
        image_file = os.path.join(workdir, 'base.qcow2')
        cloud.make_image_file(image_file, IMAGE_MB)
        self.image = conn.image.create_image(
            'bench-%s' % uuid.uuid4().hex[:8], filename=image_file,
            disk_format='qcow2', container_format='bare')

    def close(self):
        self.conn.image.delete_image(self.image)

    # -- waiting ------------------------------------------------------

    def _wait(self, server_id, status, timeout=1800):
        deadline = time.monotonic() + timeout
        while True:
            srv = self.conn.compute.get_server(server_id)
            if srv.status == status and not srv.task_state:
                return srv
            if srv.status == 'ERROR':
                raise RuntimeError('server %s: ERROR: %s' % (
                    server_id, srv.fault))
            if time.monotonic() > deadline:
                raise RuntimeError('server %s: still %s/%s, not %s' % (
                    server_id, srv.status, srv.task_state, status))
            time.sleep(POLL)

    def _timed(self, action, server_id, status):
        start = time.monotonic()
        action(server_id)
        srv = self._wait(server_id, status)
        return time.monotonic() - start, srv

    # -- one server -----------------------------------------------------

    def boot_with_data(self, size):
        srv = self.conn.compute.create_server(
            name='bench-%s' % uuid.uuid4().hex[:8], flavor_id=self.flavor.id,
            image_id=self.image.id, networks='none', host='c1')
        self._wait(srv.id, 'ACTIVE')
        self.conn.compute.stop_server(srv.id)
        self._wait(srv.id, 'SHUTOFF')
        cloud.write_data(cloud.disk_path('c1', srv.id), size, self.workdir)
        # Flush the data now, so that no timed operation pays for writing
        # back what the setup (or the previous sample) left dirty.
        os.sync()
        return srv.id

    def delete(self, server_id):
        self.conn.compute.delete_server(server_id)
        self.conn.compute.wait_for_delete(
            self.conn.compute.get_server(server_id), interval=1, wait=600)

    def sample(self, mode, size, rep):
        server_id = self.boot_with_data(size)
        try:
            row = {'mode': mode, 'data_mib': size // MIB, 'rep': rep}
            row['start_s'], _ = self._timed(
                self.conn.compute.start_server, server_id, 'ACTIVE')
            row['stop_s'], _ = self._timed(
                self.conn.compute.stop_server, server_id, 'SHUTOFF')
            self.conn.compute.start_server(server_id)
            self._wait(server_id, 'ACTIVE')
            row['shelve_s'], _ = self._timed(
                self.conn.compute.shelve_server, server_id,
                'SHELVED_OFFLOADED')
            glance = cloud.GlanceDataCounter()
            row['unshelve_s'], srv = self._timed(
                self.conn.compute.unshelve_server, server_id, 'ACTIVE')
            row['unshelve_host'] = srv.compute_host
            row['glance_mib'] = round(glance.bytes_sent() / MIB, 1)
            return row
        finally:
            self.delete(server_id)

    # -- burst ----------------------------------------------------------

    def burst(self, mode, count, size):
        servers = [self.boot_with_data(size) for _ in range(count)]
        try:
            for server_id in servers:
                self.conn.compute.shelve_server(server_id)
            for server_id in servers:
                self._wait(server_id, 'SHELVED_OFFLOADED')
            glance = cloud.GlanceDataCounter()
            start = time.monotonic()
            for server_id in servers:
                self.conn.compute.unshelve_server(server_id)
            done = []
            for server_id in servers:
                self._wait(server_id, 'ACTIVE')
                done.append(time.monotonic() - start)
            return {'mode': mode, 'servers': count, 'data_mib': size // MIB,
                    'all_active_s': max(done),
                    'median_server_s': statistics.median(done),
                    'glance_mib': round(glance.bytes_sent() / MIB, 1)}
        finally:
            for server_id in servers:
                self.delete(server_id)


# -- reporting ---------------------------------------------------------------

def summarize(samples, sizes):
    summary = []
    for size in sizes:
        for mode in MODES:
            rows = [r for r in samples
                    if r['mode'] == mode and r['data_mib'] == size // MIB]
            if not rows:
                continue
            out = {'mode': mode, 'data_mib': size // MIB, 'n': len(rows)}
            for key in ('unshelve_s', 'shelve_s', 'start_s', 'stop_s',
                        'glance_mib'):
                values = [r[key] for r in rows]
                out[key] = statistics.median(values)
                out[key + '_min'] = min(values)
                out[key + '_max'] = max(values)
            summary.append(out)
    return summary


def _cell(row, key):
    return '%.1f [%.1f-%.1f]' % (row[key], row[key + '_min'],
                                 row[key + '_max'])


def print_table(summary, bursts):
    head = ('data', 'mode', 'n', 'unshelve s', 'shelve s', 'start s',
            'stop s', 'Glance MiB', 'stock/plugin')
    lines = [head]
    by_key = {(r['mode'], r['data_mib']): r for r in summary}
    for row in summary:
        stock = by_key.get(('stock', row['data_mib']))
        ratio = ''
        if row['mode'] == 'plugin' and stock:
            ratio = '%.2fx' % (stock['unshelve_s'] / row['unshelve_s'])
        lines.append((size_label(row['data_mib'] * MIB), row['mode'],
                      str(row['n']), _cell(row, 'unshelve_s'),
                      _cell(row, 'shelve_s'), _cell(row, 'start_s'),
                      _cell(row, 'stop_s'), '%.0f' % row['glance_mib'],
                      ratio))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print('\nMedian [min-max] seconds, request to final state, through the'
          ' API:')
    for n, line in enumerate(lines):
        print('  '.join(cell.ljust(w) for cell, w in zip(line, widths)))
        if n == 0:
            print('  '.join('-' * w for w in widths))
    if bursts:
        print('\nConcurrent unshelve burst:')
        for b in bursts:
            print('  %-6s %d servers x %s: all ACTIVE after %.1f s '
                  '(median server %.1f s), Glance sent %.0f MiB' % (
                      b['mode'], b['servers'],
                      size_label(b['data_mib'] * MIB), b['all_active_s'],
                      b['median_server_s'], b['glance_mib']))


def write_csv(path, rows):
    if not rows:
        return
    keys = list(rows[0])
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot(path, summary):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    series = [('stock', 'unshelve_s', 'unshelve, stock Nova', 'o-'),
              ('plugin', 'unshelve_s', 'unshelve, nova-shelve-accel', 's-'),
              ('plugin', 'start_s', 'start of a stopped server (bound)',
               '^--')]
    for mode, key, label, style in series:
        rows = [r for r in summary if r['mode'] == mode]
        xs = [r['data_mib'] / 1024 for r in rows]
        ys = [r[key] for r in rows]
        err = [[r[key] - r[key + '_min'] for r in rows],
               [r[key + '_max'] - r[key] for r in rows]]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
    ax.set_xlabel('data written to the root disk (GiB)')
    ax.set_ylabel('seconds, request to ACTIVE (median, min-max)')
    ax.set_title('Unshelve time against disk data')
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='256M,1G,4G',
                        help='data written per root disk '
                             '(default %(default)s)')
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--burst', type=int, default=6,
                        help='servers unshelved at once (0: no burst)')
    parser.add_argument('--burst-size', default='256M')
    parser.add_argument('--out', default='bench-results')
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(',')]
    os.makedirs(args.out, exist_ok=True)
    cloud.check_cloud_is_up()

    conn = openstack.connect(cloud=cloud.CLOUD)
    samples, bursts = [], []
    with tempfile.TemporaryDirectory(dir='/var/tmp') as workdir:
        bench = Bench(conn, workdir)
        try:
            for mode in MODES:
                print('== mode %s (restarting scheduler and computes)' % mode,
                      flush=True)
                cloud.set_mode(mode)
                # The first operations after the services restart are slow
                # (stock Nova's first unshelves most of all): one untimed
                # round first, so each row measures a warm cloud.
                bench.sample(mode, min(sizes), 0)
                for size in sizes:
                    for rep in range(1, args.repeat + 1):
                        row = bench.sample(mode, size, rep)
                        print('   %s %s #%d: unshelve %.1f s on %s, shelve '
                              '%.1f s, start %.1f s, Glance %.0f MiB' % (
                                  mode, size_label(size), rep,
                                  row['unshelve_s'], row['unshelve_host'],
                                  row['shelve_s'], row['start_s'],
                                  row['glance_mib']), flush=True)
                        samples.append(row)
                if args.burst:
                    bursts.append(bench.burst(
                        mode, args.burst, parse_size(args.burst_size)))
        finally:
            bench.close()
            cloud.set_mode('plugin')

    summary = summarize(samples, sizes)
    write_csv(os.path.join(args.out, 'samples.csv'), samples)
    write_csv(os.path.join(args.out, 'summary.csv'), summary)
    write_csv(os.path.join(args.out, 'burst.csv'), bursts)
    plot(os.path.join(args.out, 'unshelve.png'), summary)
    print_table(summary, bursts)
    print('\nCSV and plot: %s/{samples,summary,burst}.csv, %s/unshelve.png'
          % (args.out, args.out))
    print('Machine: %s, %d CPUs, QEMU TCG (no KVM)' % (
        subprocess.run(['uname', '-srm'], capture_output=True,
                       text=True).stdout.strip(), os.cpu_count()))


if __name__ == '__main__':
    main()
