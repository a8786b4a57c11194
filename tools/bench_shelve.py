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

Run it through ``tools/benchmark.sh``, which brings the cloud up first.
Three modes, side by side in one run: ``stock`` (libvirt.LibvirtDriver, no
filter), ``plugin`` (PartialOffloadLibvirtDriver and
HostAggregateGroupFilter, ``snapshot_upload = at_shelve``) and
``fast-shelve`` (the same with ``snapshot_upload = after_offload``). For
each mode and each amount of written data, every repetition:

* boots a server on c1 from a small qcow2 image, stops it and writes the
  data into its root disk with qemu-io (as a guest would have);
* times ``start`` (SHUTOFF to ACTIVE) and ``stop`` (ACTIVE to SHUTOFF): the
  lower bound, nothing is copied;
* times ``shelve`` (request to SHELVED_OFFLOADED; the cloud offloads at
  once) and the time from the shelve request until its snapshot image is
  ``active`` (with ``fast-shelve`` the upload runs after the offload);
* times ``unshelve`` (request to ACTIVE) once the snapshot is active,
  counting the image bytes Glance sent during the unshelve (its access
  log);
* with ``fast-shelve``, also the unshelve of a second server, shelved and
  uploaded before, onto c1 (``--host``) while the first one's upload runs
  there: the background upload must not slow an unshelve in the group
  down.

Then a burst: several servers shelved at once (the time until all are
SHELVED_OFFLOADED, and until all their snapshots are active), then all
unshelved at once (the time until the last one is ACTIVE). After each
switch of mode, one untimed round with the smallest size warms the
restarted services up.

Times are taken through the API (openstacksdk), polling every 0.2 s.
Output: tables on the terminal, ``samples.csv`` (every measurement),
``summary.csv``, ``burst.csv``, ``unshelve.png`` and ``shelve.png`` in the
output directory.
"""

import argparse
import csv
import functools
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

MODES = ('stock', 'plugin', 'fast-shelve')
MODE_LABELS = {'stock': 'stock', 'plugin': 'at_shelve',
               'fast-shelve': 'after_offload'}
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

    def snapshot_of(self, server_id):
        """The image Nova created when shelving the server, or None."""
        name = self.conn.compute.get_server(server_id).name + '-shelved'
        found = list(self.conn.image.images(name=name))
        return found[0] if len(found) == 1 else None

    def wait_snapshot_active(self, server_id, since, timeout=1800):
        """Seconds from ``since`` until the server's snapshot is active."""
        deadline = time.monotonic() + timeout
        while True:
            image = self.snapshot_of(server_id)
            if image is not None and image.status == 'active':
                return time.monotonic() - since
            if time.monotonic() > deadline:
                raise RuntimeError('snapshot of %s still %s' % (
                    server_id, image and image.status))
            time.sleep(POLL)

    def shelve_until_uploaded(self, server_id):
        """(shelve seconds, seconds until the snapshot is active)."""
        start = time.monotonic()
        self.conn.compute.shelve_server(server_id)
        self._wait(server_id, 'SHELVED_OFFLOADED')
        shelve_s = time.monotonic() - start
        return shelve_s, self.wait_snapshot_active(server_id, start)

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
        # With fast-shelve, a second server of the same size whose
        # snapshot is uploaded: unshelved while the first one uploads.
        other_id = self.boot_with_data(size) if mode == 'fast-shelve' \
            else None
        try:
            row = {'mode': mode, 'data_mib': size // MIB, 'rep': rep}
            row['start_s'], _ = self._timed(
                self.conn.compute.start_server, server_id, 'ACTIVE')
            row['stop_s'], _ = self._timed(
                self.conn.compute.stop_server, server_id, 'SHUTOFF')
            self.conn.compute.start_server(server_id)
            self._wait(server_id, 'ACTIVE')
            row['unshelve_busy_s'] = row['unshelve_busy_host'] = ''
            if other_id:
                self.conn.compute.start_server(other_id)
                self._wait(other_id, 'ACTIVE')
                self.shelve_until_uploaded(other_id)
                # Its conversion and upload left data to write back; the
                # timed shelve must not pay for it (stop did not).
                os.sync()
                start = time.monotonic()
                self.conn.compute.shelve_server(server_id)
                self._wait(server_id, 'SHELVED_OFFLOADED')
                row['shelve_s'] = time.monotonic() - start
                image = self.snapshot_of(server_id)
                # On c1, where the upload runs: the host a guest start
                # shares with the upload (2.91 --host).
                row['unshelve_busy_s'], busy = self._timed(
                    functools.partial(self.conn.compute.unshelve_server,
                                      host='c1'), other_id, 'ACTIVE')
                row['unshelve_busy_host'] = busy.compute_host
                # Said per sample: did the upload still run meanwhile?
                row['busy_overlapped'] = self.snapshot_of(
                    server_id).status != 'active' and image.status != (
                        'active')
                row['snapshot_active_s'] = self.wait_snapshot_active(
                    server_id, start)
            else:
                row['shelve_s'], row['snapshot_active_s'] = (
                    self.shelve_until_uploaded(server_id))
                row['busy_overlapped'] = ''
            glance = cloud.GlanceDataCounter()
            row['unshelve_s'], srv = self._timed(
                self.conn.compute.unshelve_server, server_id, 'ACTIVE')
            row['unshelve_host'] = srv.compute_host
            row['glance_mib'] = round(glance.bytes_sent() / MIB, 1)
            row['cycle_s'] = row['shelve_s'] + row['unshelve_s']
            row['stop_start_s'] = row['stop_s'] + row['start_s']
            return row
        finally:
            self.delete(server_id)
            if other_id:
                self.delete(other_id)

    # -- burst ----------------------------------------------------------

    def burst(self, mode, count, size):
        # Shelved from SHUTOFF: the burst measures the snapshots and the
        # offloads, not the guests' shutdown.
        servers = [self.boot_with_data(size) for _ in range(count)]
        try:
            start = time.monotonic()
            for server_id in servers:
                self.conn.compute.shelve_server(server_id)
            for server_id in servers:
                self._wait(server_id, 'SHELVED_OFFLOADED')
            all_shelved_s = time.monotonic() - start
            all_uploaded_s = max(self.wait_snapshot_active(s, start)
                                 for s in servers)
            glance = cloud.GlanceDataCounter()
            start = time.monotonic()
            for server_id in servers:
                self.conn.compute.unshelve_server(server_id)
            done = []
            for server_id in servers:
                self._wait(server_id, 'ACTIVE')
                done.append(time.monotonic() - start)
            return {'mode': mode, 'servers': count, 'data_mib': size // MIB,
                    'all_shelved_s': all_shelved_s,
                    'all_uploaded_s': all_uploaded_s,
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
                        'glance_mib', 'snapshot_active_s', 'cycle_s',
                        'stop_start_s', 'unshelve_busy_s'):
                values = [r[key] for r in rows if r[key] != '']
                if not values:
                    continue
                out[key] = statistics.median(values)
                out[key + '_min'] = min(values)
                out[key + '_max'] = max(values)
            summary.append(out)
    return summary


def _cell(row, key):
    if key not in row:
        return '-'
    return '%.1f [%.1f-%.1f]' % (row[key], row[key + '_min'],
                                 row[key + '_max'])


def _ratio(numerator, denominator):
    return '%.2fx' % (numerator / denominator) if denominator else '-'


def _print_lines(lines):
    widths = [max(len(line[i]) for line in lines)
              for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        print('  '.join(cell.ljust(w) for cell, w in zip(line, widths)))
        if n == 0:
            print('  '.join('-' * w for w in widths))


def _busy_note(row):
    if row['unshelve_busy_s'] == '':
        return ''
    return ', unshelve during an upload %.1f s%s' % (
        row['unshelve_busy_s'],
        '' if row['busy_overlapped'] else ' (the upload had ended)')


def print_table(summary, bursts):
    by_key = {(r['mode'], r['data_mib']): r for r in summary}
    print('\nMedian [min-max] seconds, request to final state, through the'
          ' API. Modes: stock Nova; the plugin with snapshot_upload ='
          ' at_shelve; with snapshot_upload = after_offload.')
    lines = [('data', 'mode', 'n', 'shelve s', 'stop s', 'shelve/stop',
              'snapshot active s', 'unshelve s', 'start s', 'Glance MiB',
              'cycle s', 'stop+start s', 'cycle/(stop+start)',
              'stock cycle/cycle')]
    for row in summary:
        stock = by_key.get(('stock', row['data_mib']))
        lines.append((
            size_label(row['data_mib'] * MIB), MODE_LABELS[row['mode']],
            str(row['n']), _cell(row, 'shelve_s'), _cell(row, 'stop_s'),
            _ratio(row['shelve_s'], row['stop_s']),
            _cell(row, 'snapshot_active_s'), _cell(row, 'unshelve_s'),
            _cell(row, 'start_s'), '%.0f' % row['glance_mib'],
            _cell(row, 'cycle_s'), _cell(row, 'stop_start_s'),
            _ratio(row['cycle_s'], row['stop_start_s']),
            _ratio(stock['cycle_s'], row['cycle_s'])
            if stock and row['mode'] != 'stock' else ''))
    _print_lines(lines)
    busy = [r for r in summary if 'unshelve_busy_s' in r]
    if busy:
        print('\nafter_offload: unshelve in the group while another '
              'server\'s upload runs on the same host, against the unshelve '
              'once the host is idle:')
        lines = [('data', 'n', 'during upload s', 'idle s', 'ratio')]
        for row in busy:
            lines.append((size_label(row['data_mib'] * MIB), str(row['n']),
                          _cell(row, 'unshelve_busy_s'),
                          _cell(row, 'unshelve_s'),
                          _ratio(row['unshelve_busy_s'],
                                 row['unshelve_s'])))
        _print_lines(lines)
    if bursts:
        print('\nBurst: servers shelved at once (from SHUTOFF), then '
              'unshelved at once:')
        for b in bursts:
            print('  %-13s %d servers x %s: all SHELVED_OFFLOADED after '
                  '%.1f s, all snapshots active after %.1f s; all ACTIVE '
                  'after %.1f s (median server %.1f s), Glance sent %.0f '
                  'MiB' % (
                      MODE_LABELS[b['mode']], b['servers'],
                      size_label(b['data_mib'] * MIB), b['all_shelved_s'],
                      b['all_uploaded_s'], b['all_active_s'],
                      b['median_server_s'], b['glance_mib']))


def write_csv(path, rows):
    if not rows:
        return
    # Rows of different modes have different columns.
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval='')
        writer.writeheader()
        writer.writerows(rows)


def plot(path, summary):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    series = [('stock', 'unshelve_s', 'unshelve, stock Nova', 'o-'),
              ('plugin', 'unshelve_s', 'unshelve, at_shelve', 's-'),
              ('fast-shelve', 'unshelve_s', 'unshelve, after_offload', 'D-'),
              ('plugin', 'start_s', 'start of a stopped server (bound)',
               '^--')]
    _plot_series(pyplot, path, summary, series, 'Unshelve time against disk '
                 'data', 'seconds, request to ACTIVE (median, min-max)')


def plot_shelve(path, summary):
    from matplotlib import pyplot

    series = [('stock', 'shelve_s', 'shelve, stock Nova', 'o-'),
              ('plugin', 'shelve_s', 'shelve, at_shelve', 's-'),
              ('fast-shelve', 'shelve_s', 'shelve, after_offload', 'D-'),
              ('fast-shelve', 'snapshot_active_s',
               'snapshot active, after_offload', 'D:'),
              ('stock', 'stop_s', 'stop of a running server (bound)',
               '^--')]
    _plot_series(pyplot, path, summary, series, 'Shelve time against disk '
                 'data', 'seconds from the request (median, min-max)')


def _plot_series(pyplot, path, summary, series, title, ylabel):
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for mode, key, label, style in series:
        rows = [r for r in summary if r['mode'] == mode and key in r]
        xs = [r['data_mib'] / 1024 for r in rows]
        ys = [r[key] for r in rows]
        err = [[r[key] - r[key + '_min'] for r in rows],
               [r[key + '_max'] - r[key] for r in rows]]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
    ax.set_xlabel('data written to the root disk (GiB)')
    ax.set_ylabel(ylabel)
    ax.set_title(title)
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
    parser.add_argument('--modes', default=','.join(MODES),
                        help='modes to run, in this order '
                             '(default %(default)s)')
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(',')]
    modes = args.modes.split(',')
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error('unknown mode(s) %s; choose from %s'
                     % (', '.join(sorted(unknown)), ', '.join(MODES)))
    os.makedirs(args.out, exist_ok=True)
    cloud.check_cloud_is_up()

    conn = openstack.connect(cloud=cloud.CLOUD)
    samples, bursts = [], []
    with tempfile.TemporaryDirectory(dir='/var/tmp') as workdir:
        bench = Bench(conn, workdir)
        try:
            for mode in modes:
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
                        print('   %s %s #%d: shelve %.1f s (stop %.1f s), '
                              'snapshot active %.1f s, unshelve %.1f s on '
                              '%s (start %.1f s), Glance %.0f MiB%s' % (
                                  mode, size_label(size), rep,
                                  row['shelve_s'], row['stop_s'],
                                  row['snapshot_active_s'],
                                  row['unshelve_s'], row['unshelve_host'],
                                  row['start_s'], row['glance_mib'],
                                  _busy_note(row)), flush=True)
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
    plot_shelve(os.path.join(args.out, 'shelve.png'), summary)
    print_table(summary, bursts)
    print('\nCSV and plots: %s/{samples,summary,burst}.csv, '
          '%s/{unshelve,shelve}.png' % (args.out, args.out))
    print('Machine: %s, %d CPUs, QEMU TCG (no KVM)' % (
        subprocess.run(['uname', '-srm'], capture_output=True,
                       text=True).stdout.strip(), os.cpu_count()))


if __name__ == '__main__':
    main()
