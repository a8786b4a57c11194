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
``fast-shelve`` (the same with ``snapshot_upload = after_offload``).

The modes are interleaved: round 1 runs them in order, round 2 in reverse,
and so on (A B C C B A A B C ...), so that no mode always runs on a fresher
or fuller machine than another. In each round, each mode and each amount
of written data gives one sample, which:

* boots a server on c1 from a small qcow2 image, stops it and writes the
  data into its root disk with qemu-io (as a guest would have), then
  flushes it (``sync``): no timed operation pays for the setup's writes;
* times ``start`` (SHUTOFF to ACTIVE) and ``stop`` (ACTIVE to SHUTOFF): the
  lower bound, nothing is copied;
* times ``shelve`` (request to SHELVED_OFFLOADED; the cloud offloads at
  once) and the time from the shelve request until its snapshot image is
  ``active`` (with ``fast-shelve`` the upload runs after the offload);
* flushes what the shelve left to write back, as hours of idle time would
  before a user unshelves, then times ``unshelve`` (request to ACTIVE),
  counting the image bytes Glance sent (its access log) and splitting the
  time into phases read from the services' logs (tools/phases.py);
* with ``fast-shelve``, also the unshelve of a second server, shelved and
  uploaded before, onto c1 (``--host``) while the first one's upload runs
  there: the background upload must not slow an unshelve in the group
  down.

After each sample its servers are deleted, and the image cache files of
its snapshots (forget_cached_snapshots).

Beside every timed operation the machine is sampled (tools/cloudstat.py):
the page cache still to be written back and the free memory when it
started, the page cache the kernel reclaimed meanwhile, the share of
time the CPUs waited for I/O, and the CPU the cloud's services used (on
average, and in seconds per service over the operation, the commands a
service ran and waited for included: ``shelve_cpu_s_nova-compute``). The
scheduler and computes run with debug logs, which the phases are read
from; every mode pays for them alike. With ``--profile``, py-spy samples
c1's nova-compute during every timed shelve (non-blocking, 25 Hz): its
busy seconds and those with the plugin's code on the stack are columns
(``sh_py_busy_s``, ``sh_py_plugin_s``), the raw stacks are in
``OUT/profiles``. With ``--drop-caches`` the page cache is emptied
before every timed shelve and unshelve (after the flush), so that no mode
starts with less free memory than another.

Then, per mode, a burst: ``--burst`` tiny guests (flavor m1.burst, the
least RAM the firmware boots in) with ``--burst-size`` of data each,
started at once from SHUTOFF and stopped again (the floor: the same guests
on the same hosts, nothing copied), shelved at once (the time until all are
SHELVED_OFFLOADED, and until all their snapshots are active), then all
unshelved at once: the time until each is ACTIVE and its ratio to the
start burst, the Glance bytes and the peak CPU of each service. An unshelve
that fails (the server goes back to SHELVED_OFFLOADED, or to ERROR) is
printed with the error of its instance action, counted in the ``failed``
column, and the run goes on.

Times are taken through the API (openstacksdk), polling every 0.2 s.
Output: tables on the terminal; in the output directory ``samples.csv``
(every measurement), ``summary.csv``, ``burst.csv``, ``burst_times.csv``
and the plots ``unshelve.png``, ``shelve.png``, ``phases.png`` and
``burst.png`` (tools/bench_report.py).
"""

import argparse
import contextlib
import functools
import hashlib
import os
import subprocess
import tempfile
import time
import uuid

import openstack

from tests.e2e import cloud
from tools import bench_report
from tools import cloudstat
from tools import phases

MODES = bench_report.MODES
DEFAULT_MODES = bench_report.DEFAULT_MODES
POLL = 0.2
MIB = bench_report.MIB
IMAGE_MB = 64


def parse_size(text):
    units = {'M': MIB, 'G': 1024 * MIB}
    text = text.strip().upper().rstrip('IB')
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def round_orders(modes, rounds):
    """The modes of each round: in order, then reversed, and so on."""
    return [list(modes) if n % 2 == 0 else list(reversed(modes))
            for n in range(rounds)]


class Bench(object):

    def __init__(self, conn, workdir, profile_dir=None, drop_caches=False):
        self.conn = conn
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.drop_caches = drop_caches
        self.flavor = conn.compute.find_flavor(cloud.FLAVOR,
                                               ignore_missing=False)
        self.burst_flavor = conn.compute.find_flavor(cloud.BURST_FLAVOR,
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

    def _wait_all(self, server_ids, status, since, timeout=1800,
                  refused_as=None):
        """({server: seconds from since until it reached status}, failed).

        One listing per poll, so that each server's time is its own and not
        the time its turn came in a loop of waits. ``failed`` names each
        server that went to ERROR or, its request refused, back to
        ``refused_as`` with no task (an unshelve that found no host goes
        back to SHELVED_OFFLOADED: the API set its task before answering,
        so no server is seen so before its request ran), with why.
        """
        waiting, done, failed = set(server_ids), {}, {}
        deadline = time.monotonic() + timeout
        while waiting:
            for srv in self.conn.compute.servers(details=True):
                if srv.id not in waiting:
                    continue
                if srv.status == 'ERROR':
                    failed[srv.id] = 'ERROR: %s' % (srv.fault,)
                elif srv.status == refused_as and not srv.task_state:
                    failed[srv.id] = 'back to %s: %s' % (
                        refused_as, self._last_error(srv.id))
                elif srv.status == status and not srv.task_state:
                    done[srv.id] = time.monotonic() - since
                if srv.id in done or srv.id in failed:
                    waiting.discard(srv.id)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError('%d servers not %s after %d s' % (
                    len(waiting), status, timeout))
            if waiting:
                time.sleep(POLL)
        return done, failed

    def _last_error(self, server_id):
        """The message of the server's last failed action, or '?'."""
        for action in self.conn.compute.server_actions(server_id):
            if action.message:
                return action.message
        return '?'

    def _wait_all_or_raise(self, server_ids, status):
        done, failed = self._wait_all(server_ids, status, time.monotonic())
        if failed:
            raise RuntimeError('setting up the burst: %s' % '; '.join(
                '%s %s' % item for item in sorted(failed.items())))
        return done

    def _wait_gone(self, server_ids, timeout=600):
        deadline = time.monotonic() + timeout
        while set(server_ids) & {s.id for s in self.conn.compute.servers()}:
            if time.monotonic() > deadline:
                raise RuntimeError('servers not deleted after %d s' % timeout)
            time.sleep(1)

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

    def timed_shelve(self, server_id, row=None):
        """Shelve; with a row, its time, phases and the machine's state.

        Returns the monotonic time of the request. The sample's servers
        run on c1 (boot_with_data).
        """
        if row is not None:
            self._settle()
        profile = self._compute_profile(row)
        start, started = time.monotonic(), time.time()
        with cloudstat.Recorder() as machine, profile:
            self.conn.compute.shelve_server(server_id)
            self._wait(server_id, 'SHELVED_OFFLOADED')
        if row is not None:
            row['shelve_s'] = time.monotonic() - start
            _machine_columns(row, 'shelve', machine)
            _profile_columns(row, 'sh_', profile)
            _phase_columns(row, 'sh_', phases.shelve_phases, server_id,
                           'c1', started,
                           started + row['shelve_s'])
        return start

    def _settle(self):
        """Write the dirty page cache back; with --drop-caches, empty it.

        Emptied, every mode's timed operation starts with the same free
        memory, whatever the operations before it left cached.
        """
        os.sync()
        if self.drop_caches:
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('3\n')

    def _compute_profile(self, row):
        """A py-spy profile of c1's nova-compute for a timed operation.

        Only with --profile and a row to report it in.
        """
        if self.profile_dir is None or row is None:
            return contextlib.nullcontext()
        path = os.path.join(self.profile_dir, '%s-%dM-r%d.txt' % (
            row['mode'], row['data_mib'], row['rep']))
        return cloudstat.Profile(os.path.join(cloud.VENV, 'bin', 'py-spy'),
                                 cloud.compute_pid('c1'), path)

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
        self._wait_gone([server_id])

    def timed_unshelve(self, server_id, row):
        """Unshelve, with its Glance bytes, phases and the machine's state."""
        snapshot = self.snapshot_of(server_id)
        # What the shelve and its upload left in the page cache is written
        # back before a user comes back, hours later: not the unshelve's.
        self._settle()
        glance = cloud.GlanceDataCounter()
        started = time.time()
        with cloudstat.Recorder() as machine:
            row['unshelve_s'], srv = self._timed(
                self.conn.compute.unshelve_server, server_id, 'ACTIVE')
        row['unshelve_host'] = srv.compute_host
        row['glance_mib'] = round(glance.bytes_sent() / MIB, 1)
        _machine_columns(row, 'unshelve', machine)
        _phase_columns(row, 'ph_', phases.unshelve_phases, server_id,
                       snapshot.id, srv.compute_host, started,
                       started + row['unshelve_s'])
        return snapshot.id

    def sample(self, mode, size, rep):
        server_id = self.boot_with_data(size)
        # With fast-shelve, a second server of the same size whose
        # snapshot is uploaded: unshelved while the first one uploads.
        other_id = self.boot_with_data(size) if mode == 'fast-shelve' \
            else None
        snapshots = []
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
                self.wait_snapshot_active(other_id,
                                          self.timed_shelve(other_id))
                # Its conversion and upload left data to write back; the
                # timed shelve must not pay for it (stop did not).
                os.sync()
                start = self.timed_shelve(server_id, row)
                image = self.snapshot_of(server_id)
                snapshots.append(self.snapshot_of(other_id).id)
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
                row['snapshot_active_s'] = self.wait_snapshot_active(
                    server_id, self.timed_shelve(server_id, row))
                row['busy_overlapped'] = ''
            snapshots.append(self.timed_unshelve(server_id, row))
            row['cycle_s'] = row['shelve_s'] + row['unshelve_s']
            row['stop_start_s'] = row['stop_s'] + row['start_s']
            return row
        finally:
            self.delete(server_id)
            if other_id:
                self.delete(other_id)
            forget_cached_snapshots(snapshots)

    # -- burst ----------------------------------------------------------

    def boot_many(self, count, size):
        """count tiny servers, stopped, with size bytes written into each."""
        prefix = 'burst-%s-' % uuid.uuid4().hex[:6]
        # On the group's hosts, alternately: their disks are the ones the
        # plugin keeps (stock Nova then unshelves them anywhere).
        servers = [self.conn.compute.create_server(
            name='%s%d' % (prefix, n), flavor_id=self.burst_flavor.id,
            image_id=self.image.id, networks='none',
            host=cloud.GROUP_HOSTS[n % len(cloud.GROUP_HOSTS)]).id
            for n in range(count)]
        self._wait_all_or_raise(servers, 'ACTIVE')
        for server_id in servers:
            self.conn.compute.stop_server(server_id)
        self._wait_all_or_raise(servers, 'SHUTOFF')
        for server_id in servers:
            host = self.conn.compute.get_server(server_id).compute_host
            cloud.write_data(cloud.disk_path(host, server_id), size,
                             self.workdir)
        os.sync()
        return servers

    def start_burst(self, servers):
        """Start the stopped servers at once: the floor of an unshelve burst.

        The same guests on the same hosts, nothing copied: what an unshelve
        burst would take if the unshelve cost nothing but the start.
        Returns ({server: seconds until ACTIVE}, failed); stops them again.
        """
        start = time.monotonic()
        for server_id in servers:
            self.conn.compute.start_server(server_id)
        times = self._wait_all(servers, 'ACTIVE', start, refused_as='SHUTOFF')
        for server_id in servers:
            self.conn.compute.stop_server(server_id)
        self._wait_all_or_raise(servers, 'SHUTOFF')
        return times

    def burst(self, mode, count, size):
        # Shelved from SHUTOFF: the burst measures the snapshots and the
        # offloads, not the guests' shutdown.
        servers = self.boot_many(count, size)
        try:
            started, start_failed = self.start_burst(servers)
            start = time.monotonic()
            with cloudstat.Recorder() as shelving:
                for server_id in servers:
                    self.conn.compute.shelve_server(server_id)
                shelved, shelve_failed = self._wait_all(
                    servers, 'SHELVED_OFFLOADED', start)
            if shelve_failed:
                raise RuntimeError('shelve burst: %s' % '; '.join(
                    '%s %s' % item for item in sorted(shelve_failed.items())))
            all_uploaded_s = max(self.wait_snapshot_active(s, start)
                                 for s in servers)
            os.sync()
            glance = cloud.GlanceDataCounter()
            start = time.monotonic()
            with cloudstat.Recorder() as unshelving:
                for server_id in servers:
                    self.conn.compute.unshelve_server(server_id)
                active, failed = self._wait_all(
                    servers, 'ACTIVE', start, refused_as='SHELVED_OFFLOADED')
            for server_id, why in sorted(failed.items()):
                print('   unshelve of %s failed: %s' % (server_id, why),
                      flush=True)
            hosts = sorted(self.conn.compute.get_server(s).compute_host
                           for s in active)
            all_active_s = max(active.values(), default=float('nan'))
            all_started_s = max(started.values(), default=float('nan'))
            row = {'mode': mode, 'servers': count, 'data_mib': size // MIB,
                   'all_started_s': all_started_s,
                   'failed_starts': len(start_failed),
                   'all_shelved_s': max(shelved.values()),
                   'all_uploaded_s': all_uploaded_s,
                   'all_active_s': all_active_s,
                   'failed_unshelves': len(failed),
                   'unshelve_vs_start': all_active_s / all_started_s,
                   'median_server_s': (bench_report.median(active.values())
                                       if active else float('nan')),
                   'unshelves_per_s': len(active) / all_active_s,
                   'glance_mib': round(glance.bytes_sent() / MIB, 1),
                   'on_hosts': ' '.join('%s:%d' % (h, hosts.count(h))
                                        for h in sorted(set(hosts)))}
            for name, cores in unshelving.summary()['peak_cores'].items():
                row['peak_cores_' + name] = cores
            for name, cores in shelving.summary()['peak_cores'].items():
                row['shelve_peak_cores_' + name] = cores
            return row, sorted(active.values())
        finally:
            for server_id in servers:
                self.conn.compute.delete_server(server_id)
            self._wait_gone(servers)


def _machine_columns(row, operation, machine):
    summary = machine.summary()
    row[operation + '_dirty_mib'] = summary['dirty_start_mib']
    row[operation + '_free_mib'] = summary['free_start_mib']
    row[operation + '_reclaimed_mib'] = summary['reclaimed_mib']
    row[operation + '_iowait_pct'] = summary['iowait_pct']
    row[operation + '_cores'] = round(sum(summary['mean_cores'].values()),
                                      2)
    for name, seconds in summary['cpu_seconds'].items():
        row['%s_cpu_s_%s' % (operation, name)] = seconds


def cache_file_name(image_id):
    """The name of an image's file in _base, as Nova's get_cache_fname.

    Not imported from Nova: importing nova.virt.libvirt sets Nova up in
    this process, which is the API's client only.
    """
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


def forget_cached_snapshots(snapshot_ids):
    """Remove the image cache files of a sample's snapshots, on every host.

    An unshelve that downloads the snapshot (stock's, or a fallback) leaves
    it, made raw, in its host's ``_base``, and Nova removes an unused base
    file only after ``remove_unused_original_minimum_age_seconds``, a day by
    default: 4 GiB samples would fill the cloud's storage within one run,
    until the plugin's free-space floor keeps no disk and every later
    at_shelve sample measures the fallback instead. Called once the
    sample's servers are deleted; Nova deleted the snapshots when it
    unshelved them, so nothing can use these files again.
    """
    for snapshot_id in snapshot_ids:
        for storage in sorted(set(cloud.STORAGE.values())):
            try:
                os.unlink(os.path.join(storage, '_base',
                                       cache_file_name(snapshot_id)))
            except FileNotFoundError:
                pass


def _profile_columns(row, prefix, profile):
    """Seconds c1's nova-compute was busy, and busy in the plugin's code.

    Busy: a thread on a CPU or in a system call (py-spy's samples); the
    plugin's: the innermost frame of the plugin or Nova is the plugin's.
    """
    if not isinstance(profile, cloudstat.Profile):
        return
    busy, plugin = cloudstat.profile_seconds(
        profile.path, '/nova_shelve_accel/', ['/nova/'])
    row[prefix + 'py_busy_s'] = round(busy, 2)
    row[prefix + 'py_plugin_s'] = round(plugin, 2)


def _phase_columns(row, prefix, profile, *args):
    if not cloud.current_debug():
        return
    # A missing log line fails the run: a profile must not quietly vanish
    # when Nova changes what it logs.
    found = profile(*args)
    row.update((prefix + name, value) for name, value in found.items())


def run_rounds(bench, modes, sizes, rounds, debug):
    samples = []
    for number, order in enumerate(round_orders(modes, rounds), 1):
        for mode in order:
            if (cloud.current_mode(), cloud.current_debug()) != (mode,
                                                                 debug):
                print('== round %d: mode %s (restarting scheduler and '
                      'computes)' % (number, mode), flush=True)
                cloud.set_mode(mode, debug=debug)
                # The first operations after the services restart are
                # slow (stock Nova's first unshelves most of all): one
                # untimed round first, so each row measures a warm cloud.
                bench.sample(mode, min(sizes), 0)
            else:
                print('== round %d: mode %s' % (number, mode), flush=True)
            for size in sizes:
                row = bench.sample(mode, size, number)
                bench_report.print_sample(row)
                samples.append(row)
    return samples


def run_bursts(bench, modes, count, size, debug):
    bursts, completions = [], {}
    for mode in modes:
        print('== burst: mode %s, %d servers' % (mode, count), flush=True)
        cloud.set_mode(mode, debug=debug)
        row, completions[mode] = bench.burst(mode, count, size)
        bench_report.print_burst(row)
        bursts.append(row)
    return bursts, completions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='256M,1G,4G',
                        help='data written per root disk '
                             '(default %(default)s)')
    parser.add_argument('--rounds', type=int, default=2,
                        help='rounds of every mode and size, the modes in '
                             'order then reversed (default %(default)s)')
    parser.add_argument('--burst', type=int, default=30,
                        help='servers unshelved at once (0: no burst)')
    parser.add_argument('--burst-size', default='64M',
                        help='data written per burst server')
    parser.add_argument('--out', default='bench-results')
    parser.add_argument('--modes', default=','.join(DEFAULT_MODES),
                        help='modes to run (default %(default)s)')
    parser.add_argument('--no-debug', dest='debug', action='store_false',
                        help='leave the debug logs off (no phase profile)')
    parser.add_argument('--drop-caches', action='store_true',
                        help='empty the page cache before every timed '
                             'shelve and unshelve')
    parser.add_argument('--profile', action='store_true',
                        help="sample c1's nova-compute with py-spy during "
                             'every timed shelve (raw stacks in '
                             'OUT/profiles)')
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
    bursts, completions = [], {}
    with tempfile.TemporaryDirectory(dir='/var/tmp') as workdir:
        profile_dir = None
        if args.profile:
            profile_dir = os.path.join(args.out, 'profiles')
            os.makedirs(profile_dir, exist_ok=True)
        bench = Bench(conn, workdir, profile_dir, args.drop_caches)
        try:
            samples = run_rounds(bench, modes, sizes, args.rounds,
                                 args.debug)
            if args.burst:
                bursts, completions = run_bursts(
                    bench, modes, args.burst, parse_size(args.burst_size),
                    args.debug)
        finally:
            bench.close()
            cloud.set_mode('plugin')

    bench_report.report(args.out, samples, sizes, bursts, completions)
    print('Machine: %s, %d CPUs, QEMU TCG (no KVM)' % (
        subprocess.run(['uname', '-srm'], capture_output=True,
                       text=True).stdout.strip(), os.cpu_count()))


if __name__ == '__main__':
    main()
