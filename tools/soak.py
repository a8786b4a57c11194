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

"""Shelve and unshelve a few servers many times; nothing may be lost or left.

    python3 -m tools.soak [--cycles 200] [--servers 4] [--parallel 1]

Needs the loopback cloud of ``tools/cloud/cloud.sh up`` in mode plugin or
fast-shelve (``snapshot_upload = after_offload``: a shelve skips the
snapshot and the kept disk is uploaded after the offload; before a fallback
to c3 the soak waits for that upload), and root (it reads the instance
disks). Boots the servers on c1 and c2, each
with a marker in its disk, then runs the cycles round-robin over them: a
shelve (the cloud offloads at once), then an unshelve that is in turn a
plain one, one with ``--host c2`` and one with ``--host c1``; every 7th
cycle c1 and c2 are disabled so that the unshelve falls back to c3, and the
next unshelve of that server brings it back with ``--host c1``. After each
unshelve the marker must be in the running server's disk, and Glance must
have sent the snapshot exactly when the landing host's storage did not hold
the kept disk.

At the end the servers are deleted and, after the image cache passes,
nothing may remain: no instance directory or kept disk of theirs and no
staging or trash entry on any storage, no shelve snapshot or image of the
soak in Glance, no allocation in Placement. Prints a summary; exits
non-zero on any failure.

With ``--parallel N`` the servers are shared out among N threads that run
their cycles at the same time (shelves, unshelves and the image cache
passes overlap, as in a real cloud); an unshelve that falls back to c3 runs
alone, while c1 and c2 are disabled, and the others wait for it.
"""

import argparse
import collections
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid

from tests.e2e import cloud
from tests.e2e import invariants

TIMEOUT = 300
FALLBACK_EVERY = 7
# The unshelves of the other cycles, in turn: None is a plain unshelve.
TARGETS = (None, 'c2', 'c1')
# The image cache passes reclaim kept disks of deleted servers.
MIN_SETTLE_SECONDS = 45
# What a host logs when it takes over an upload lease: in a soak, where no
# host dies, only a lease taken from a live holder.
LEASE_TAKEN = 'Took over the upload lease'
# Failures after which the stacks of every nova-compute are written down.
STACK_DUMPS = 3


def log(message):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), message))
    sys.stderr.flush()


class Failure(Exception):
    pass


class GroupLock:
    """Shared by in-group unshelves; exclusive while the group is disabled.

    A fallback disables c1 and c2 for every server: no other unshelve may
    be scheduled meanwhile, or it would fall back too.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._sharing = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: not self._sharing)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Soak:

    def __init__(self, workdir, n_servers):
        self.workdir = workdir
        self.n_servers = n_servers
        self.servers = []
        self.image_id = None
        self.failures = []
        self._failures_lock = threading.Lock()
        self.shelve_times = []
        self.unshelve_times = {'reuse': [], 'download': []}
        self.snapshot_ids = set()
        self.disabled = set()
        self.group_lock = GroupLock()

    def fail(self, message):
        log('FAILURE: %s' % message)
        # Cycles fail in several threads: each failure takes its own number,
        # so that two at the same moment do not write the same dump files.
        with self._failures_lock:
            self.failures.append(message)
            number = len(self.failures)
        if number <= STACK_DUMPS:
            self._dump_stacks(number)

    def _dump_stacks(self, number):
        """What each nova-compute is doing when failure number is seen.

        A cycle fails on a timeout long after the service stopped; its
        threads' stacks are what says where it stopped.
        """
        for host in cloud.COMPUTES:
            path = os.path.join(cloud.STATE, 'logs',
                                'soak-failure-%d-%s.stacks' % (number, host))
            problem = cloud.dump_compute_stacks(host, path)
            log('  stacks of nova-compute on %s: %s' % (
                host, path if problem is None else 'none (%s)' % problem))

    # -- set-up -------------------------------------------------------------

    def set_up(self):
        self.image_id = cloud.upload_test_image(self.workdir, 'soak')
        for n in range(self.n_servers):
            host = cloud.GROUP_HOSTS[n % len(cloud.GROUP_HOSTS)]
            name = 'soak-%s' % uuid.uuid4().hex[:8]
            srv = cloud.openstack(
                'server', 'create', '--flavor', cloud.FLAVOR, '--image',
                self.image_id, '--nic', 'none', '--host', host, name)
            server = {'id': srv['id'], 'name': name, 'host': None,
                      'broken': False}
            self.servers.append(server)
            srv = cloud.wait_for_status(srv['id'], 'ACTIVE', TIMEOUT)
            cloud.openstack('server', 'stop', srv['id'], parse=False)
            cloud.wait_for_status(srv['id'], 'SHUTOFF', TIMEOUT)
            server['host'] = cloud.host_of(srv)
            server['marker'] = ('soak %s' % srv['id']).encode()
            cloud.write_marker(cloud.disk_path(server['host'], srv['id']),
                               server['marker'], self.workdir)
            log('booted %s on %s with a marker' % (name, server['host']))

    # -- cycles -------------------------------------------------------------

    def cycle(self, number):
        """Cycle number (from 1): shelve and unshelve one server."""
        server = self.servers[(number - 1) % len(self.servers)]
        if server['broken']:
            return
        fallback = number % FALLBACK_EVERY == 0
        if fallback:
            target, how = None, 'to c3 (c1, c2 disabled)'
        elif server['host'] == cloud.OUTSIDE_HOST:
            target, how = 'c1', '--host c1 (back from c3)'
        else:
            target = TARGETS[(number - 1) % len(TARGETS)]
            how = '--host %s' % target if target else 'plain'
        try:
            self._shelve(server)
            if fallback:
                # Outside the group the snapshot is what unshelves: a fast
                # shelve fills it after the offload.
                cloud.wait_for_image_status(server['snapshot'], 'active',
                                            TIMEOUT)
            with self._group(fallback):
                kind, seconds, host = self._unshelve(server, target)
            if fallback and host != cloud.OUTSIDE_HOST:
                raise Failure('unshelve with c1, c2 disabled landed on %s'
                              % host)
            if target and host != target:
                raise Failure('unshelve --host %s landed on %s'
                              % (target, host))
            log('cycle %d: %s shelved in %.1f s, unshelve %s: %s on %s in '
                '%.1f s' % (number, server['name'], self.shelve_times[-1],
                            how, kind, host, seconds))
        except Exception as e:
            # qemu-io failing to read the disk is a failure like any other.
            self.fail('cycle %d, %s, unshelve %s: %s%s' % (
                number, server['name'], how,
                '' if isinstance(e, (Failure, cloud.CloudError))
                else type(e).__name__ + ': ', e))
            server['broken'] = True

    @contextlib.contextmanager
    def _group(self, fallback):
        if not fallback:
            with self.group_lock.shared():
                yield
            return
        with self.group_lock.exclusive():
            self._set_group_enabled(False)
            try:
                yield
            finally:
                self._set_group_enabled(True)

    def run_cycles(self, numbers):
        for number in numbers:
            self.cycle(number)

    def _shelve(self, server):
        started = time.monotonic()
        cloud.openstack('server', 'shelve', server['id'], parse=False)
        cloud.wait_for_status(server['id'], 'SHELVED_OFFLOADED', TIMEOUT)
        self.shelve_times.append(time.monotonic() - started)
        snapshots = invariants.shelved_snapshots(server['name'])
        if len(snapshots) != 1:
            raise Failure('%d shelve snapshots' % len(snapshots))
        server['snapshot'] = snapshots[0]
        self.snapshot_ids.add(snapshots[0])
        # Where this shelve kept the disk, if it did. A disk kept by an
        # earlier shelve on another storage may wait for its image cache
        # pass: it is not this one.
        server['kept_on'] = None
        kept = [path for path in invariants.kept_entries(server['id'])
                if path.endswith('.' + server['snapshot'])]
        if kept:
            server['kept_on'] = os.path.dirname(os.path.dirname(kept[0]))
        elif server['host'] in cloud.GROUP_HOSTS:
            raise Failure('nothing kept when shelving from %s'
                          % server['host'])

    def _unshelve(self, server, target):
        glance = cloud.GlanceDataCounter()
        started = time.monotonic()
        args = ['--host', target] if target else []
        cloud.openstack('server', 'unshelve', *args, server['id'],
                        parse=False)
        srv = cloud.wait_for_status(server['id'], 'ACTIVE', TIMEOUT)
        seconds = time.monotonic() - started
        host = server['host'] = cloud.host_of(srv)
        found = cloud.read_marker(cloud.disk_path(host, server['id']),
                                  len(server['marker']))
        if found != server['marker']:
            raise Failure('marker lost on %s: %r' % (host, found[:32]))
        downloaded = glance.bytes_sent(server['snapshot'])
        base = glance.bytes_sent(self.image_id)
        reusable = server['kept_on'] == cloud.STORAGE[host]
        if reusable and (downloaded or base):
            raise Failure('Glance sent %d snapshot and %d image bytes to %s,'
                          ' whose storage held the kept disk'
                          % (downloaded, base, host))
        if not reusable and not downloaded:
            raise Failure('the kept disk was not on the storage of %s, yet'
                          ' Glance sent no snapshot data' % host)
        kind = 'reuse' if reusable else 'download'
        self.unshelve_times[kind].append(seconds)
        return kind, seconds, host

    def _set_group_enabled(self, enabled):
        for host in cloud.GROUP_HOSTS:
            cloud.set_compute_enabled(host, enabled)
            if enabled:
                self.disabled.discard(host)
            else:
                self.disabled.add(host)

    # -- the end --------------------------------------------------------------

    def tear_down(self, in_flight_before):
        """Delete everything of the soak; return what was left behind."""
        for host in sorted(self.disabled):
            cloud.set_compute_enabled(host, True)
        for server in self.servers:
            cloud.openstack('server', 'delete', server['id'], parse=False)
        deadline = time.monotonic() + TIMEOUT
        for server in self.servers:
            while any(s['ID'] == server['id'] for s in cloud.openstack(
                    'server', 'list', '--name', server['name'])):
                if time.monotonic() > deadline:
                    self.fail('%s not deleted after %ds'
                              % (server['name'], TIMEOUT))
                    break
                time.sleep(1)
        settle_from = time.time()
        log('servers deleted; waiting for the image cache passes')
        late = invariants.wait_for_image_cache_passes(
            cloud.COMPUTES, settle_from)
        if late:
            self.fail('no image cache pass of %s' % ', '.join(late))
        time.sleep(max(0, MIN_SETTLE_SECONDS - (time.time() - settle_from)))
        return self._leftovers(in_flight_before)

    def _leftovers(self, in_flight_before):
        left = {}
        for server in self.servers:
            files = (invariants.instance_dirs(server['id']) +
                     invariants.kept_entries(server['id']))
            if files:
                left.setdefault('files', []).extend(files)
            if invariants.allocations(server['id']):
                left.setdefault('allocations', []).append(server['name'])
            if cloud.domain_states(server['id']):
                left.setdefault('guests', []).append(server['name'])
        in_flight = sorted(invariants.in_flight_entries() - in_flight_before)
        if in_flight:
            left['staging/trash'] = in_flight
        images = {i['ID']: i['Name'] for i in cloud.openstack('image', 'list')}
        ours = [images[i] for i in sorted(images)
                if i in self.snapshot_ids or
                images[i] in {s['name'] + '-shelved' for s in self.servers}]
        if ours:
            left['snapshots'] = ours
        if self.image_id:
            cloud.openstack('image', 'delete', self.image_id, parse=False)
            if self.image_id in {i['ID'] for i in cloud.openstack(
                    'image', 'list')}:
                left['images'] = [self.image_id]
        return left


def median(values):
    return '%.1f s' % statistics.median(values) if values else '-'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cycles', type=int, default=200)
    parser.add_argument('--servers', type=int, default=4)
    parser.add_argument('--parallel', type=int, default=1,
                        help='threads running cycles at the same time')
    args = parser.parse_args()
    cloud.check_cloud_is_up()
    mode = cloud.current_mode()
    if mode not in ('plugin', 'fast-shelve'):
        sys.exit('the cloud runs in mode %s; the soak needs the plugin '
                 '(cloud.sh mode plugin or fast-shelve)' % mode)

    started = time.monotonic()
    in_flight_before = invariants.in_flight_entries()
    glance = cloud.GlanceDataCounter()
    logs_from = {host: cloud.compute_log_end(host)
                 for host in cloud.GROUP_HOSTS}
    with tempfile.TemporaryDirectory(prefix='soak-') as workdir:
        soak = Soak(workdir, args.servers)
        left = {}
        try:
            soak.set_up()
            # Cycle k shelves server (k - 1) % servers; each thread owns
            # every parallel-th server and runs its cycles in order.
            threads = [threading.Thread(target=soak.run_cycles, args=([
                k for k in range(1, args.cycles + 1)
                if (k - 1) % args.servers % args.parallel == w],))
                for w in range(args.parallel)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except (Failure, cloud.CloudError) as e:
            soak.fail('stopped: %s' % e)
        finally:
            left = soak.tear_down(in_flight_before)

    snapshot_downloads = [image for image, _sent in glance.downloads()
                          if image in soak.snapshot_ids]
    # A host that took over another's live upload lease makes the holder
    # stop (LeaseLost) and upload the snapshot a second time.
    stored = collections.Counter(image for image, status in glance.uploads()
                                 if image in soak.snapshot_ids and
                                 status == 204)
    twice = sorted(image for image, n in stored.items() if n > 1)
    if twice:
        soak.fail('snapshots stored more than once: %s' % ' '.join(twice))
    taken = [line for host in cloud.GROUP_HOSTS
             for line in cloud.compute_log_lines(host, LEASE_TAKEN,
                                                 logs_from[host])]
    if taken:
        soak.fail('upload leases taken over, where no host died: %s'
                  % taken[0])
    reuses = len(soak.unshelve_times['reuse'])
    fallbacks = len(soak.unshelve_times['download'])
    print('cycles:            %d on %d servers, %d at a time, mode %s'
          % (args.cycles, args.servers, args.parallel, mode))
    print('failures:          %d' % len(soak.failures))
    for failure in soak.failures:
        print('  %s' % failure)
    print('unshelves:         %d in-group reuses, %d fallbacks (Glance '
          'sent %d shelve snapshots)' % (reuses, fallbacks,
                                         len(snapshot_downloads)))
    print('uploads:           %d snapshots stored, %d more than once; '
          '%d upload leases taken over' % (len(stored), len(twice),
                                           len(taken)))
    print('median shelve:     %s' % median(soak.shelve_times))
    print('median unshelve:   %s (reuse %s, fallback %s)' % (
        median(soak.unshelve_times['reuse'] +
               soak.unshelve_times['download']),
        median(soak.unshelve_times['reuse']),
        median(soak.unshelve_times['download'])))
    print('leftovers:         %s' % (
        '; '.join('%s: %s' % (what, ' '.join(items))
                  for what, items in sorted(left.items())) or 'none'))
    print('time:              %.0f s' % (time.monotonic() - started))
    return 1 if soak.failures or left else 0


if __name__ == '__main__':
    sys.exit(main())
