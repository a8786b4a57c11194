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

"""The fault matrix: one row per cut point of nova_shelve_accel.faults.

Each row boots a server on c1 with a marker in its disk and drives it to
its cut point with a nova-compute started with NOVA_SHELVE_ACCEL_CRASH_AT
(and NOVA_SHELVE_ACCEL_FAIL_AT where a step must fail first), so that the
process kills itself there as ``kill -9`` would. Then the computes start
normally, their image cache pass runs, a server left offloaded is unshelved
again, and the row checks the design's invariants: the server is ACTIVE
with its marker, one running guest, allocations on one provider, and
nothing left on the storages; after its deletion, nothing at all.

The ``upload`` rows run with ``snapshot_upload = after_offload`` (the
cloud's mode ``fast-shelve``, switched to for them and back at the end):
shelve skips the snapshot and the kept disk is uploaded into the queued
image after the offload, and c1 crashes in that upload. Once c1 is back
the snapshot must become active (c1 resumes its own upload at start-up),
and an unshelve with c1 and c2 disabled must land on c3 with the data
Glance sends from that snapshot. A crash while shelve skips the snapshot
comes before the offload: the row reports the state Nova leaves and brings
the server back to ACTIVE from it.

On a cloud whose g1 storage is GlusterFS, the ``client_lost`` rows kill
c1's storage client in the middle of a keep, a claim and an upload's
conversion: the step meets a dead mount, c1 gets a new client and is
restarted, and the row checks the same invariants.

The ``takeover`` row lets another host finish what a dead one left: c1
dies in the upload and stays down until c2 has taken the upload over,
which c2 may do only once it has itself seen c1's lease untouched for
``UPLOAD_LEASE_SECONDS``. On a cloud whose c2 runs with its clock off
(``cloud.sh up --skew c2=+2h``) the row shows that the skew neither takes a
live lease early nor keeps a dead one.

``tools/fault_matrix.py`` runs every row; the end-to-end tests run a few.
"""

import os
import signal
import threading
import time
import uuid

from nova_shelve_accel import faults
from tests.e2e import cloud
from tests.e2e import invariants

TIMEOUT = 300
# How long a periodic cut point gets to be reached.
PERIODIC_CRASH_WAIT = 90
# A cut point of the recovery at start may also be reached by the first
# image cache pass after the start.
RECOVERY_CRASH_WAIT = 60
# How long the background upload after a shelve gets to reach its cut
# point, and the restarted host to finish it.
UPLOAD_CRASH_WAIT = 120
UPLOAD_WAIT = 300

# The step of the kept disk's life each family of cut points belongs to.
SCENARIOS = {
    'keep': 'shelve',
    'claim': 'unshelve',
    'spawn': 'unshelve',
    'release': 'failed_unshelve',
    'reclaim': 'reclaim',
    'recover': 'recover',
    'upload': 'upload',
    'during_upload': 'unshelve_during_conversion',
    'client_lost': 'client_lost',
    'takeover': 'takeover',
}
# Rows that cut nothing: a window two operations share, driven from
# outside (named family.what as the cut points are).
SCENARIO_ROWS = (
    # An in-group unshelve of a server while its own upload converts its
    # kept disk: the conversion held QEMU's image lock, and the guest
    # started on the claimed disk failed with "Failed to get write lock".
    'during_upload.unshelve_while_converting',
)
# Rows that only a network filesystem has: c1's storage client (its
# glusterfs process) killed in the middle of a keep, of a claim, and of a
# conversion for the upload, and remounted once the step has met the dead
# mount. Keep and claim stop c1 at a cut point (NOVA_SHELVE_ACCEL_STOP_AT)
# while its client is killed; the upload's conversion is stopped from
# outside.
CLIENT_ROWS = (
    'client_lost.keep',
    'client_lost.claim',
    'client_lost.upload',
)
# Where keep and claim stop: their disk is in c1's staging directory.
CLIENT_STOPS = {
    'client_lost.keep': 'keep.staged',
    'client_lost.claim': 'claim.staged',
}
# c1 killed in its upload and kept down: c2 takes the upload over.
TAKEOVER_ROWS = ('takeover.upload',)
TAKEOVER_CUT = 'upload.started'
# upload_lease.UPLOAD_LEASE_SECONDS (the tools run this module with the
# system's Python, without the plugin's dependencies; a unit test keeps the
# two equal).
UPLOAD_LEASE_SECONDS = 300
# c2 takes over a lease it saw untouched for UPLOAD_LEASE_SECONDS: it looks
# at its scan, every upload.SCAN_SECONDS, and c1 touched the lease up to a
# quarter of that before it died; then it converts and uploads.
TAKEOVER_WAIT = UPLOAD_LEASE_SECONDS * 5 // 4 + 120 + 300
ROWS = faults.POINTS + SCENARIO_ROWS + CLIENT_ROWS + TAKEOVER_ROWS
# The cloud's mode each scenario needs (cloud.sh mode); 'plugin' otherwise.
MODES = {
    'upload': 'fast-shelve',
    'unshelve_during_conversion': 'fast-shelve',
    'takeover': 'fast-shelve',
}
ROW_MODES = {'client_lost.upload': 'fast-shelve'}
# How long the step gets to meet the dead mount before the remount.
CLIENT_LOST_WAIT = 60
# Data written into the server's disk for the unshelve during the
# conversion: enough for the row to see the conversion and hold it.
CONVERSION_DATA = 1024 ** 3
# The upload cut point reached while shelve runs, before the offload.
SNAPSHOT_SKIPPED = 'upload.snapshot_skipped'
# The cut point whose crash leaves the interrupted unshelve that the
# recovery rolls back, and the step made to fail so that a release runs.
INTERRUPTED_UNSHELVE = 'spawn.guest_started'
FAILED_STEP = 'spawn.guest_started'
# Killed after Nova deleted the snapshot, before its last save: the
# restarted host must finish the unshelve (the snapshot is gone).
SNAPSHOT_DELETED = 'spawn.snapshot_deleted'
# Killed with the converted copy of the disk in the snapshots directory.
SCRATCH_LEFT = 'upload.converted'

CHECKS = ('crashed', 'final state', 'marker', 'guests', 'allocations',
          'leftovers', 'deleted')
# What some rows check besides.
EXTRA_CHECKS = {
    SNAPSHOT_DELETED: ('finished',),
    SCRATCH_LEFT: ('scratch',),
    SCENARIO_ROWS[0]: ('window', 'reused', 'upload stopped'),
    TAKEOVER_ROWS[0]: ('taken over',),
}
# Checked as well by the upload rows whose crash comes after the offload:
# the snapshot became active, and the unshelve outside the storage group
# got its data from it.
UPLOAD_CHECKS = ('snapshot', 'fallback')


class RowError(Exception):
    """The row cannot go on; the message says what happened."""


class Row:
    """The outcome of one cut point."""

    def __init__(self, point):
        self.point = point
        uploads = (scenario(point) == 'upload' and point != SNAPSHOT_SKIPPED
                   or point in ('client_lost.upload',) + TAKEOVER_ROWS)
        self.required = CHECKS + (
            UPLOAD_CHECKS if uploads else ()) + EXTRA_CHECKS.get(point, ())
        self.crashed = None
        self.after_restart = '-'
        self.at_end = '-'
        # check name -> (passed, what was seen)
        self.checks = {}
        self.notes = []
        self.seconds = 0.0

    def check(self, name, passed, seen):
        self.checks[name] = (passed, seen)

    def fail(self, message):
        self.notes.append(message)

    @property
    def failures(self):
        failed = ['%s: %s' % (name, seen)
                  for name, (passed, seen) in self.checks.items()
                  if not passed]
        missing = [name for name in self.required
                   if name not in self.checks]
        if missing:
            failed.append('not checked: %s' % ', '.join(missing))
        return failed + [n for n in self.notes if n.startswith('FAIL ')]

    @property
    def passed(self):
        return not self.failures

    def cells(self):
        def seen(name):
            return self.checks.get(name, (None, '-'))[1]
        extra = '; '.join('%s: %s' % (name, seen(name))
                          for name in EXTRA_CHECKS.get(self.point, ()))
        return [self.point, seen('crashed'), self.after_restart,
                seen('snapshot'), seen('fallback'), extra or '-',
                self.at_end, seen('marker'), seen('leftovers'),
                seen('allocations'), seen('guests'), seen('deleted'),
                'PASS' if self.passed else 'FAIL']


COLUMNS = ['point', 'crashed?', 'state after restart', 'snapshot',
           'fallback', 'extra', 'state at end', 'marker', 'leftovers',
           'allocations', 'guests', 'after delete', 'result']


def table(rows):
    lines = [COLUMNS] + [row.cells() for row in rows]
    widths = [max(len(str(line[i])) for line in lines)
              for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(lines):
        out.append('  '.join(str(cell).ljust(width)
                             for cell, width in zip(line, widths)).rstrip())
        if n == 0:
            out.append('  '.join('-' * width for width in widths))
    return '\n'.join(out)


def scenario(point):
    return SCENARIOS.get(point.split('.')[0])


def rows(storage):
    """Every row the cloud's storage ('local' or 'gluster') can run."""
    return tuple(row for row in ROWS
                 if storage == 'gluster' or row not in CLIENT_ROWS)


def mode_of(point):
    """The cloud mode a row runs in unless the matrix is given one."""
    return ROW_MODES.get(point, MODES.get(scenario(point), 'plugin'))


def describe(srv):
    """STATUS[/task_state][@host] of a server."""
    text = srv['status']
    if srv.get('OS-EXT-STS:task_state'):
        text += '/' + srv['OS-EXT-STS:task_state']
    if cloud.host_of(srv):
        text += '@' + cloud.host_of(srv)
    return text


def faults_of(host):
    """The fault variables in the environment of host's nova-compute."""
    try:
        with open('/proc/%s/environ' % cloud.compute_pid(host), 'rb') as f:
            environ = f.read().split(b'\0')
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [v.decode() for v in environ
            if v.startswith(tuple(name.encode() + b'=' for name in (
                faults.CRASH_ENV, faults.FAIL_ENV, faults.STOP_ENV)))]


class Matrix:
    """Runs rows; one image for all of them, made in workdir."""

    def __init__(self, workdir, log=None, mode=None):
        """Rows run in workdir, saying what they do through log.

        ``mode``: the cloud's mode for every row (cloud.sh mode); by
        default each row's own (MODES, else plugin).
        """
        self.workdir = workdir
        self.mode = mode
        self.log = log or (lambda message: None)
        self.image_id = None
        self.providers = None
        # host -> pid of the nova-compute this row started there
        self._pids = {}
        # Glance's requests since the upload row's shelve.
        self._glance = None
        # The mode the cloud ran in before a row switched it.
        self._mode_before = None
        # Upload scratch directories on the storages when c1 died.
        self._scratch_at_crash = []

    # -- set-up -------------------------------------------------------------

    def set_up(self):
        cloud.check_cloud_is_up()
        if cloud.current_mode() != 'plugin':
            raise cloud.CloudError('the cloud runs in mode %s; the fault '
                                   'matrix needs the plugin'
                                   % cloud.current_mode())
        self.image_id = cloud.upload_test_image(self.workdir, 'fault-matrix')
        self.providers = invariants.provider_names()
        self.normal_computes()

    def tear_down(self):
        try:
            if self._mode_before:
                self.log('back to mode %s' % self._mode_before)
                cloud.set_mode(self._mode_before)
                self._mode_before = None
            self.normal_computes()
        finally:
            if self.image_id:
                cloud.openstack('image', 'delete', self.image_id,
                                parse=False)
                self.image_id = None

    def __enter__(self):
        self.set_up()
        return self

    def __exit__(self, *exc):
        self.tear_down()

    def normal_computes(self):
        """Start every compute that is down or runs with faults, normally."""
        for host in cloud.COMPUTES:
            if not cloud.compute_alive(host) or faults_of(host):
                self._restart(host)

    def use_mode(self, mode):
        """Run the cloud in mode; tear_down switches back."""
        if cloud.current_mode() == mode and not cloud.current_upload_delay():
            return
        self.log('switching the cloud to mode %s' % mode)
        if self._mode_before is None:
            self._mode_before = cloud.current_mode()
        cloud.set_mode(mode)

    # -- one row ------------------------------------------------------------

    def run(self, point):
        row = Row(point)
        started = time.monotonic()
        self._disabled = set()
        self._in_flight_before = invariants.in_flight_entries()
        self._pids = {host: cloud.compute_pid(host) for host in cloud.COMPUTES}
        server = None
        try:
            if point not in ROWS:
                raise RowError('%s is neither a cut point of '
                               'nova_shelve_accel.faults.POINTS nor a '
                               'scenario row' % point)
            drive = getattr(self, '_drive_%s' % scenario(point), None)
            if drive is None:
                raise RowError('no scenario for the cut point %s' % point)
            self.use_mode(self.mode or mode_of(point))
            # The mode switch restarts every compute.
            self._pids = {host: cloud.compute_pid(host)
                          for host in cloud.COMPUTES}
            server = self._boot_with_marker()
            restarted, since = drive(row, server)
            srv = cloud.server(server['id'])
            row.after_restart = describe(srv)
            self.log('%s: after restart %s; waiting for the image cache '
                     'pass of %s' % (point, row.after_restart,
                                     ', '.join(restarted)))
            late = invariants.wait_for_image_cache_passes(restarted, since)
            if late:
                row.fail('FAIL no image cache pass of %s within 180 s'
                         % ', '.join(late))
            after = getattr(self, '_after_%s' % scenario(point), None)
            if after is not None:
                after(row, server)
            self._finish(row, server)
            self.log('%s: at end %s' % (point, row.at_end))
        except (RowError, cloud.CloudError) as e:
            row.fail('FAIL %s' % e)
        except Exception as e:
            row.fail('FAIL %s: %s' % (type(e).__name__, e))
        finally:
            self._check_no_outside_restart(row)
            self._clean_up(row, server)
            row.seconds = time.monotonic() - started
        return row

    def _check_no_outside_restart(self, row):
        """Fail the row if anyone else restarted a compute meanwhile."""
        others = [host for host in cloud.COMPUTES
                  if cloud.compute_pid(host) != self._pids.get(host)]
        if others:
            row.fail('FAIL nova-compute on %s was restarted outside the '
                     'fault matrix during the row (cloud.sh mode?): the '
                     'row says nothing; run the matrix while nobody else '
                     'uses the cloud' % ', '.join(others))

    def _boot_with_marker(self):
        name = 'fm-%s' % uuid.uuid4().hex[:8]
        srv = cloud.openstack(
            'server', 'create', '--flavor', cloud.FLAVOR, '--image',
            self.image_id, '--nic', 'none', '--host', 'c1', name)
        srv = self._wait_done(srv['id'])
        if srv['status'] != 'ACTIVE' or cloud.host_of(srv) != 'c1':
            raise RowError('boot on c1 ended %s' % describe(srv))
        cloud.openstack('server', 'stop', srv['id'], parse=False)
        self._wait_done(srv['id'])
        marker = ('fault matrix %s' % srv['id']).encode()
        cloud.write_marker(cloud.disk_path('c1', srv['id']), marker,
                           self.workdir)
        self.log('booted %s (%s) on c1 with a marker' % (name, srv['id']))
        return {'id': srv['id'], 'name': name, 'marker': marker}

    # -- driving a server to a cut point -----------------------------------
    #
    # Each returns the hosts restarted normally last and the time the last
    # of them was ready: the image cache passes to wait for.

    def _drive_shelve(self, row, server):
        self._restart('c1', crash_at=row.point)
        cloud.openstack('server', 'shelve', server['id'], parse=False)
        self._record_crash(row, self._await_cut(server['id'], ['c1']))
        self._restart('c1')
        return ['c1'], time.time()

    def _drive_unshelve(self, row, server, fail_at=None):
        self._shelve(row, server)
        self._set_enabled('c2', False)
        self._restart('c1', crash_at=row.point, fail_at=fail_at)
        cloud.openstack('server', 'unshelve', server['id'], parse=False)
        self._record_crash(row, self._await_cut(server['id'], ['c1']))
        self._restart('c1')
        self._set_enabled('c2', True)
        return ['c1'], time.time()

    def _drive_failed_unshelve(self, row, server):
        return self._drive_unshelve(row, server, fail_at=FAILED_STEP)

    def _drive_recover(self, row, server):
        self._shelve(row, server)
        self._set_enabled('c2', False)
        self._restart('c1', crash_at=INTERRUPTED_UNSHELVE)
        cloud.openstack('server', 'unshelve', server['id'], parse=False)
        if not self._await_cut(server['id'], ['c1']):
            row.fail('FAIL set-up: c1 did not crash at %s, so no unshelve '
                     'was interrupted' % INTERRUPTED_UNSHELVE)
            row.check('crashed', False, 'no (set-up)')
        else:
            self._restart('c1', crash_at=row.point, must_start=False)
            self._record_crash(row, self._await_death(
                ['c1'], RECOVERY_CRASH_WAIT))
        self._restart('c1')
        self._set_enabled('c2', True)
        return ['c1'], time.time()

    def _drive_reclaim(self, row, server):
        self._shelve(row, server)
        # Outside its storage group an instance unshelves from its
        # snapshot, which the upload of a fast shelve fills after the
        # offload.
        for image_id in invariants.shelved_snapshots(server['name']):
            cloud.wait_for_image_status(image_id, 'active', UPLOAD_WAIT)
        # The kept disk is still in use when the computes start with the cut
        # point, so no pass can reach it before the unshelve elsewhere makes
        # the disk stale.
        self._set_enabled('c1', False)
        self._set_enabled('c2', False)
        self._restart_all(cloud.GROUP_HOSTS, crash_at=row.point)
        cloud.openstack('server', 'unshelve', server['id'], parse=False)
        srv = self._wait_done(server['id'])
        if cloud.host_of(srv) != cloud.OUTSIDE_HOST:
            raise RowError('unshelve with c1 and c2 disabled ended %s'
                           % describe(srv))
        self._set_enabled('c1', True)
        self._set_enabled('c2', True)
        self._record_crash(row, self._await_death(cloud.GROUP_HOSTS,
                                                  PERIODIC_CRASH_WAIT))
        self._restart_all(cloud.GROUP_HOSTS)
        return list(cloud.GROUP_HOSTS), time.time()

    def _drive_upload(self, row, server):
        self._restart('c1', crash_at=row.point)
        self._glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'shelve', server['id'], parse=False)
        if row.point == SNAPSHOT_SKIPPED:
            dead = self._await_cut(server['id'], ['c1'])
        else:
            # The upload runs in the background, during or after the
            # offload: wait for the crash rather than for the shelve.
            dead = self._await_death(['c1'], UPLOAD_CRASH_WAIT)
        self._record_crash(row, dead)
        if row.point == SCRATCH_LEFT:
            self._scratch_at_crash = invariants.upload_scratch()
        self._restart('c1')
        return ['c1'], time.time()

    def _drive_unshelve_during_conversion(self, row, server):
        """Unshelve on the kept disk while its upload converts it.

        c2 disabled: the unshelve lands on c1, where the upload runs and
        pauses its conversion (SIGSTOP) while the guest starts.
        """
        row.check('crashed', True, 'no crash (scenario row)')
        cloud.write_data(cloud.disk_path('c1', server['id']),
                         CONVERSION_DATA, self.workdir)
        self._set_enabled('c2', False)
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'shelve', server['id'], parse=False)
        pid = self._await_conversion(server['id'])
        # Held where a slow storage would hold it, the disk open: the
        # unshelve must claim and start the guest on it meanwhile.
        os.kill(pid, signal.SIGSTOP)
        try:
            cloud.openstack('server', 'unshelve', server['id'], parse=False)
            running = self._running_when_spawning(pid, server['id'])
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                # The upload stopped its conversion once the unshelve
                # claimed the disk: what the row expects, not a failure.
                pass
        row.check('window', running, 'conversion %s when the unshelve '
                  'spawned' % ('running' if running else 'over'))
        srv = self._wait_done(server['id'])
        self._set_enabled('c2', True)
        downloads = glance.downloads()
        row.check('reused', srv['status'] == 'ACTIVE' and
                  cloud.host_of(srv) == 'c1' and not downloads,
                  '%s, %d image downloads' % (describe(srv), len(downloads)))
        stored = [status for _image, status in glance.uploads()
                  if status == 204]
        images = invariants.shelved_snapshots(server['name'])
        row.check('upload stopped', not stored and not images,
                  '%d uploads stored, snapshots left: %s'
                  % (len(stored), images or 'none'))
        return ['c1'], time.time()

    def _drive_client_lost(self, row, server):
        """Kill c1's storage client in the middle of a step, then remount.

        The step goes on against the dead mount (every call on the shared
        storage fails with ENOTCONN) until it gives up; then c1 gets a new
        client and, as after any outage, its nova-compute is restarted.
        Nothing may be lost and nothing left.
        """
        if cloud.storage_kind() != 'gluster':
            raise RowError('%s needs the cloud on GlusterFS (cloud.sh up '
                           '--storage gluster); this one has %s storage'
                           % (row.point, cloud.storage_kind()))
        what = row.point.split('.')[1]
        if what == 'claim':
            self._shelve(row, server)
            self._set_enabled('c2', False)
        if what == 'upload':
            cloud.write_data(cloud.disk_path('c1', server['id']),
                             CONVERSION_DATA, self.workdir)
            self._glance = cloud.GlanceDataCounter()
            cloud.openstack('server', 'shelve', server['id'], parse=False)
            pid = self._await_conversion(server['id'])
            self._kill_client_under(row, pid, 'its conversion')
            self._await_exit(pid, CLIENT_LOST_WAIT)
        else:
            self._restart('c1', stop_at=CLIENT_STOPS[row.point])
            cloud.openstack('server', what == 'keep' and 'shelve' or
                            'unshelve', server['id'], parse=False)
            self._kill_client_under(row, self._await_stop('c1'), 'c1')
            srv = self._wait_done(server['id'], CLIENT_LOST_WAIT)
            row.notes.append('with the dead mount the %s ended %s'
                             % (what, describe(srv)))
        self.log('%s: remounting c1\'s storage' % row.point)
        cloud.remount_storage('c1')
        self._restart('c1')
        if what == 'claim':
            self._set_enabled('c2', True)
        return ['c1'], time.time()

    def _drive_takeover(self, row, server):
        """c1 dies in its upload and stays down until c2 finished it."""
        self._restart('c1', crash_at=TAKEOVER_CUT)
        self._glance = cloud.GlanceDataCounter()
        log_from = cloud.compute_log_end('c2')
        cloud.openstack('server', 'shelve', server['id'], parse=False)
        dead = self._await_death(['c1'], UPLOAD_CRASH_WAIT)
        self._record_crash(row, dead)
        if dead:
            died = time.monotonic()
            images = invariants.shelved_snapshots(server['name'])
            if len(images) != 1:
                raise RowError('shelve left snapshots %s' % images)
            self.log('%s: c1 died in the upload; waiting up to %d s for c2 '
                     'to take it over' % (row.point, TAKEOVER_WAIT))
            try:
                cloud.wait_for_image_status(images[0], 'active',
                                            TAKEOVER_WAIT)
                active = True
            except cloud.CloudError:
                active = False
            after = time.monotonic() - died
            by_c2 = all(cloud.compute_log_lines('c2', text, log_from)
                        for text in ('Took over the upload lease',
                                     'Uploaded the root disk into snapshot '
                                     '%s' % images[0]))
            row.check('taken over',
                      active and by_c2 and
                      after >= UPLOAD_LEASE_SECONDS,
                      '%s %.0f s after c1 died (lease: %d s)' % (
                          'by c2' if by_c2 else 'NOT by c2', after,
                          UPLOAD_LEASE_SECONDS))
        self._restart('c1')
        return ['c1'], time.time()

    def _after_takeover(self, row, server):
        self._after_upload(row, server)

    def _kill_client_under(self, row, pid, whose):
        """Kill c1's storage client while pid is stopped, then resume it."""
        os.kill(pid, signal.SIGSTOP)
        try:
            cloud.kill_storage_client('c1')
        finally:
            os.kill(pid, signal.SIGCONT)
        row.check('crashed', True, 'client of c1 killed under %s' % whose)
        self.log('%s: client of c1 killed under %s (pid %d)'
                 % (row.point, whose, pid))

    def _await_stop(self, host):
        """The pid of host's nova-compute once it stopped at its point."""
        deadline = time.monotonic() + TIMEOUT
        while not cloud.compute_stopped(host):
            if not cloud.compute_alive(host):
                raise RowError('nova-compute on %s died instead of stopping '
                               'at its cut point' % host)
            if time.monotonic() > deadline:
                raise RowError('nova-compute on %s did not stop at its cut '
                               'point within %ds' % (host, TIMEOUT))
            time.sleep(0.1)
        return cloud.compute_pid(host)

    @staticmethod
    def _await_exit(pid, timeout):
        deadline = time.monotonic() + timeout
        while (os.path.exists('/proc/%d' % pid) and
               time.monotonic() < deadline):
            time.sleep(0.5)

    def _after_client_lost(self, row, server):
        if row.point == 'client_lost.upload':
            self._after_upload(row, server)

    def _await_conversion(self, server_id):
        """The pid of the qemu-img converting the server's kept disk."""
        deadline = time.monotonic() + UPLOAD_CRASH_WAIT
        while time.monotonic() < deadline:
            pid = cloud.conversion_of(server_id)
            if pid:
                return pid
            time.sleep(0.01)
        raise RowError('no conversion of the kept disk of %s began within '
                       '%ds' % (server_id, UPLOAD_CRASH_WAIT))

    def _running_when_spawning(self, pid, server_id):
        """Whether pid still ran once the unshelve reached the spawn."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            srv = cloud.server(server_id)
            alive = os.path.exists('/proc/%d' % pid)
            if srv.get('OS-EXT-STS:task_state') == 'spawning' or (
                    srv['status'] in ('ACTIVE', 'ERROR')):
                return alive
            if not alive:
                return False
            time.sleep(0.1)
        return False

    def _shelve(self, row, server):
        cloud.openstack('server', 'shelve', server['id'], parse=False)
        srv = self._wait_done(server['id'])
        if srv['status'] != 'SHELVED_OFFLOADED':
            raise RowError('shelve ended %s' % describe(srv))
        if not cloud.kept_disks(server['id']):
            row.notes.append('nothing kept at shelve')

    def _record_crash(self, row, dead):
        if dead:
            row.check('crashed', True, 'yes (%s)' % ', '.join(dead))
        else:
            row.check('crashed', False, 'NO')
            row.notes.append('did not crash at the cut')

    # -- after the restart ----------------------------------------------------

    def _after_unshelve(self, row, server):
        if row.point != SNAPSHOT_DELETED:
            return
        # Finished by the restarted host, not undone: Nova had deleted the
        # snapshot, which an unshelve from scratch would need.
        srv = cloud.server(server['id'])
        images = invariants.shelved_snapshots(server['name'])
        row.check('finished', srv['status'] == 'ACTIVE' and
                  not srv.get('OS-EXT-STS:task_state') and not images,
                  '%s after restart, snapshots %s' % (
                      describe(srv), images or 'gone'))

    def _after_upload(self, row, server):
        if row.point == SNAPSHOT_SKIPPED:
            self._resume_interrupted_shelve(row, server)
            return
        if row.point == SCRATCH_LEFT:
            left = invariants.upload_scratch()
            row.check('scratch', self._scratch_at_crash and not left,
                      'left by the crash: %d, after restart: %d' % (
                          len(self._scratch_at_crash), len(left)))
        # The upload starts while the offload ends: a crash before the
        # offload's last save leaves it to the recovery at start, which
        # offloads again (or to Nova, between its last two saves).
        srv = self._wait_done(server['id'])
        if srv['status'] != 'SHELVED_OFFLOADED':
            raise RowError('after the restart the server is %s, not '
                           'shelved-offloaded' % describe(srv))
        snapshot_id = self._check_snapshot(row, server)
        if snapshot_id:
            self._fall_back(row, server, snapshot_id)
        else:
            row.check('fallback', False, 'impossible: no active snapshot')

    def _resume_interrupted_shelve(self, row, server):
        """Bring back to ACTIVE a server whose shelve a crash cut short.

        The crash comes before the shelve saved anything: Nova leaves the
        task and the image the API made for the snapshot as they were.
        """
        srv = cloud.server(server['id'])
        row.notes.append('Nova left the server %s' % describe(srv))
        if srv.get('OS-EXT-STS:task_state') == 'shelving':
            # Nothing resumes a shelve after a restart (nor in stock Nova):
            # as an operator would, reset the state and boot the guest.
            cloud.openstack('server', 'set', '--auto-approve', '--state',
                            'active', server['id'], parse=False)
            cloud.openstack('server', 'reboot', '--hard', server['id'],
                            parse=False)
            row.notes.append('reset to active and rebooted')
            srv = self._wait_done(server['id'])
        if srv['status'] == 'SHUTOFF' and not srv.get('OS-EXT-STS:task_state'):
            cloud.openstack('server', 'start', server['id'], parse=False)
            row.notes.append('started')
            srv = self._wait_done(server['id'])
        if srv['status'] in ('SHELVED', 'SHELVED_OFFLOADED'):
            return          # the shelve was recorded: _finish unshelves
        # The server is not shelved: an image of its shelve is the one the
        # API created for the snapshot that never came, which nothing
        # records. The row deletes it as an operator would, and says so.
        for image_id in invariants.shelved_snapshots(server['name']):
            image = cloud.image(image_id)
            row.notes.append('the interrupted shelve left image %s %s; '
                             'deleted it' % (image_id, image['status']))
            cloud.openstack('image', 'delete', image_id, parse=False)

    def _check_snapshot(self, row, server):
        """The snapshot's id once active, else None (and why, in the row).

        The restarted host resumes its own upload at start-up; an upload
        that stays queued must still have the kept disk, with the data.
        Once active, the kept disk's record must say so, and Glance must
        have taken the data once: a crash after it did must not make the
        restarted host upload again.
        """
        images = invariants.shelved_snapshots(server['name'])
        if len(images) != 1:
            row.check('snapshot', False, 'images %s' % images)
            return None
        try:
            image = cloud.wait_for_image_status(images[0], 'active',
                                                UPLOAD_WAIT)
        except cloud.CloudError as e:
            kept = cloud.kept_disks(server['id'])
            intact = bool(kept) and cloud.read_marker(
                os.path.join(kept[0], 'disk'),
                len(server['marker'])) == server['marker']
            row.check('snapshot', intact, '%s, kept disk %s' % (
                cloud.image(images[0])['status'],
                'intact' if intact else 'LOST'))
            row.notes.append(str(e))
            return None
        # The record is written after Glance activated the image.
        deadline = time.monotonic() + TIMEOUT
        while True:
            pending = [cloud.kept_record(d)['snapshot_pending']
                       for d in cloud.kept_disks(server['id'])]
            if pending != [True] or time.monotonic() > deadline:
                break
            time.sleep(1)
        uploads = [status for image_id, status in self._glance.uploads()
                   if image_id == image['id']]
        row.check('snapshot', pending == [False] and uploads == [204],
                  'active, %s upload%s%s' % (
                      len(uploads), '' if len(uploads) == 1 else 's',
                      '' if pending == [False]
                      else ', kept.json pending %s' % pending))
        return image['id']

    def _fall_back(self, row, server, snapshot_id):
        """Unshelve with the storage group disabled: c3 downloads it."""
        size = cloud.image(snapshot_id)['size']
        self._set_enabled('c1', False)
        self._set_enabled('c2', False)
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', server['id'], parse=False)
        srv = self._wait_done(server['id'])
        self._set_enabled('c1', True)
        self._set_enabled('c2', True)
        sent = [n for image, n in glance.downloads() if image == snapshot_id]
        row.check('fallback',
                  cloud.host_of(srv) == cloud.OUTSIDE_HOST and
                  sent == [size],
                  '%s, snapshot sent %s of %d bytes' % (
                      describe(srv), '+'.join(map(str, sent)) or 'none',
                      size))
        # The kept disk is stale now: c1 and c2's image cache pass gives
        # it back to the storage.
        since = time.time()
        late = invariants.wait_for_image_cache_passes(cloud.GROUP_HOSTS,
                                                      since)
        if late:
            row.fail('FAIL no image cache pass of %s within 180 s after '
                     'the fallback' % ', '.join(late))

    def _finish(self, row, server):
        srv = cloud.server(server['id'])
        if (srv['status'] in ('SHELVED_OFFLOADED', 'SHELVED') and
                not srv.get('OS-EXT-STS:task_state')):
            row.notes.append('retried unshelve from %s' % srv['status'])
            cloud.openstack('server', 'unshelve', server['id'], parse=False)
            srv = self._wait_done(server['id'])
        row.at_end = describe(srv)
        active = (srv['status'] == 'ACTIVE' and
                  not srv.get('OS-EXT-STS:task_state'))
        row.check('final state', active, row.at_end)
        host = cloud.host_of(srv)
        self._check_marker(row, server, host if active else None)
        guests = cloud.domain_states(server['id'])
        row.check('guests',
                  active and guests == {host: 'running'},
                  ', '.join('%s %s' % hs for hs in sorted(guests.items()))
                  or 'none')
        allocs = invariants.allocations(server['id'], self.providers)
        row.check('allocations', active and list(allocs) == [host],
                  '+'.join(sorted(allocs)) or 'none')
        left = invariants.storage_leftovers(
            server['id'], host, self._in_flight_before)
        row.check('leftovers', not left,
                  ' '.join(os.path.basename(p) for p in left) or 'none')

    def _check_marker(self, row, server, host):
        if host is None:
            row.check('marker', False, 'not running')
            return
        marker = server['marker']
        try:
            found = cloud.read_marker(cloud.disk_path(host, server['id']),
                                      len(marker))
        except Exception as e:
            row.check('marker', False, 'unreadable: %s' % e)
            return
        row.check('marker', found == marker,
                  'intact' if found == marker else 'LOST')

    # -- clean-up -------------------------------------------------------------

    def _clean_up(self, row, server):
        """Leave the cloud as the row found it, whatever happened."""
        for host in sorted(self._disabled):
            self._guarded(row, self._set_enabled, host, True)
        self._guarded(row, self.normal_computes)
        if server:
            self._guarded(row, self._delete, row, server)

    def _guarded(self, row, func, *args):
        try:
            func(*args)
        except Exception as e:
            row.fail('FAIL clean-up: %s: %s' % (type(e).__name__, e))

    @staticmethod
    def _ask_delete(server_id):
        try:
            cloud.openstack('server', 'delete', server_id, parse=False)
        except cloud.CloudError as e:
            if 'no server' not in str(e).lower():
                raise

    def _delete(self, row, server):
        self._ask_delete(server['id'])
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                srv = cloud.server(server['id'])
            except cloud.CloudError as e:
                if 'no server' in str(e).lower():
                    break
                raise
            if time.monotonic() > deadline:
                row.check('deleted', False, 'still %s after %ds'
                          % (describe(srv), TIMEOUT))
                return
            if (srv['status'] == 'ERROR' and
                    not srv.get('OS-EXT-STS:task_state')):
                # The delete failed (the compute went away meanwhile, say):
                # ask again, as a user would.
                row.notes.append('delete asked again (%s)' % describe(srv))
                self._ask_delete(server['id'])
                time.sleep(5)
            time.sleep(cloud.POLL_SECONDS)
        left = invariants.server_gone(server['id'], server['name'],
                                      self.providers)
        row.check('deleted', not left, ', '.join(
            os.path.basename(p) for p in left) or 'clean')
        # What the row's server left must not weigh on the next rows.
        for image in invariants.shelved_snapshots(server['name']):
            cloud.openstack('image', 'delete', image, parse=False)
        for host in cloud.domain_states(server['id']):
            cloud.virsh(host, 'destroy', server['id'])
            cloud.virsh(host, 'undefine', '--nvram', server['id'])

    # -- the cloud ------------------------------------------------------------

    def _restart(self, host, crash_at=None, fail_at=None, must_start=True,
                 stop_at=None):
        what = ' '.join(v for v in (crash_at and 'CRASH_AT=' + crash_at,
                                    fail_at and 'FAIL_AT=' + fail_at,
                                    stop_at and 'STOP_AT=' + stop_at) if v)
        self.log('restarting nova-compute on %s %s' % (host,
                                                       what or 'normally'))
        ok, output = cloud.restart_compute(host, crash_at, fail_at, stop_at)
        self._pids[host] = cloud.compute_pid(host)
        if not ok and must_start:
            last = (output.strip().splitlines() or [''])[-1]
            raise RowError('nova-compute on %s did not start%s: %s' % (
                host, ' with ' + what if what else '', last))

    def _restart_all(self, hosts, crash_at=None):
        """Restart several computes at once (each restart takes a while)."""
        errors = []

        def restart(host):
            try:
                self._restart(host, crash_at=crash_at)
            except RowError as e:
                errors.append(e)
        threads = [threading.Thread(target=restart, args=(host,))
                   for host in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def _set_enabled(self, host, enabled):
        cloud.set_compute_enabled(host, enabled)
        if enabled:
            self._disabled.discard(host)
        else:
            self._disabled.add(host)

    def _wait_done(self, server_id, timeout=TIMEOUT):
        """The server once no task runs on it (or in ERROR)."""
        deadline = time.monotonic() + timeout
        while True:
            srv = cloud.server(server_id)
            if (srv['status'] == 'ERROR' or
                    not srv.get('OS-EXT-STS:task_state') and
                    srv['status'] != 'BUILD'):
                return srv
            if time.monotonic() > deadline:
                raise RowError('server is still %s after %ds'
                               % (describe(srv), timeout))
            time.sleep(cloud.POLL_SECONDS)

    def _await_cut(self, server_id, hosts):
        """The hosts that died before the server's task ended."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            dead = self._dead(hosts)
            if dead:
                return dead
            srv = cloud.server(server_id)
            if (srv['status'] == 'ERROR' or
                    not srv.get('OS-EXT-STS:task_state')):
                self.log('task ended: %s' % describe(srv))
                # A cut point after the last save would still kill it.
                time.sleep(2)
                return self._dead(hosts)
            if time.monotonic() > deadline:
                raise RowError('neither a crash nor the end of the task '
                               'within %ds: %s' % (TIMEOUT, describe(srv)))
            time.sleep(cloud.POLL_SECONDS)

    def _await_death(self, hosts, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self._dead(hosts)
            if dead:
                return dead
            time.sleep(1)
        return []

    def _dead(self, hosts):
        """Which of the computes this row started have died.

        Anyone else restarting them (cloud.sh mode, another test) would
        take the cut point away: the row cannot say anything then.
        """
        for host in hosts:
            if cloud.compute_pid(host) != self._pids.get(host):
                raise RowError(
                    'nova-compute on %s was restarted outside the fault '
                    'matrix (pid %s, now %s); run the matrix while nobody '
                    'else uses the cloud' % (host, self._pids.get(host),
                                             cloud.compute_pid(host)))
        return [host for host in hosts if not cloud.compute_alive(host)]
