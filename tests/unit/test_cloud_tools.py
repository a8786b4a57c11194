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

"""The loopback cloud's tools, where they work without a cloud."""

import datetime
import json
import os
import subprocess
import sys
import time

import fixtures
import testtools

from nova.virt.libvirt import imagecache

from tests.e2e import cloud
from tools import bench_shelve
from tools import cloudstat
from tools import phases

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
WALL_CLOCK_SOURCE = os.path.join(REPO, 'tools', 'cloud', 'wall-clock.c')

# A Python process waiting in a function of a known name, as a nova-compute
# waits on its storage.
_WAITING = '''
import time
def waiting_for_the_storage():
    time.sleep(60)
waiting_for_the_storage()
'''


class TestComputeStacks(testtools.TestCase):
    """The stacks the soak writes down when a nova-compute hangs."""

    def setUp(self):
        super().setUp()
        self.state = self.useFixture(fixtures.TempDir()).path
        os.mkdir(os.path.join(self.state, 'run'))
        self.useFixture(fixtures.MonkeyPatch('tests.e2e.cloud.STATE',
                                             self.state))
        # py-spy is a test requirement: it is in this environment.
        self.useFixture(fixtures.MonkeyPatch('tests.e2e.cloud.VENV',
                                             sys.prefix))
        self.dump = os.path.join(self.state, 'c9.stacks')

    def _run_as_compute(self, *command):
        child = subprocess.Popen(command)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        with open(os.path.join(self.state, 'run', 'nova-compute-c9.pid'),
                  'w') as f:
            f.write('%d\n' % child.pid)

    def _read_dump(self):
        with open(self.dump) as f:
            return f.read()

    def test_the_dump_shows_where_the_service_waits(self):
        self._run_as_compute(sys.executable, '-c', _WAITING)
        deadline = time.monotonic() + 20
        while True:
            problem = cloud.dump_compute_stacks('c9', self.dump)
            if (problem is None and
                    'waiting_for_the_storage' in self._read_dump()):
                break
            # The interpreter may not have reached the function yet.
            self.assertLess(time.monotonic(), deadline,
                            'no dump shows the wait: %s %s'
                            % (problem, self._read_dump()))
            time.sleep(0.2)

    def test_a_host_without_a_recorded_service_has_no_dump(self):
        self.assertEqual('no nova-compute recorded for c9',
                         cloud.dump_compute_stacks('c9', self.dump))
        self.assertFalse(os.path.exists(self.dump))

    def test_a_process_that_is_not_python_is_said_in_one_line(self):
        self._run_as_compute('sleep', '60')
        problem = cloud.dump_compute_stacks('c9', self.dump)
        self.assertIsNotNone(problem)
        self.assertNotIn('\n', problem)
        self.assertIn(problem, self._read_dump())

    def test_a_cloud_without_py_spy_is_said(self):
        self.useFixture(fixtures.MonkeyPatch('tests.e2e.cloud.VENV',
                                             self.state))
        self._run_as_compute(sys.executable, '-c', _WAITING)
        problem = cloud.dump_compute_stacks('c9', self.dump)
        self.assertEqual('cannot run %s/bin/py-spy: No such file or directory'
                         % self.state, problem)


# Busy on a CPU for a while (CPU time, however loaded the machine), then
# asleep: what a benchmark's profile of nova-compute must tell apart. It
# says "started" once running its own code: py-spy cannot read a process
# whose interpreter is still starting.
_BUSY_THEN_ASLEEP = '''
import sys, time
def busy():
    end = time.process_time() + %(busy)s
    while time.process_time() < end:
        pass
print('started', flush=True)
busy()
print('asleep', flush=True)
time.sleep(60)
'''


class TestBenchmarkProfile(testtools.TestCase):
    """The py-spy profile and CPU seconds the benchmark reports."""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def _write(self, name, text):
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
        return path

    def _start(self, name, busy, until='started'):
        """A Python process running tmp/name, busy for busy CPU seconds."""
        script = self._write(name, _BUSY_THEN_ASLEEP % {'busy': busy})
        return self._run(script, until)

    def _run(self, script, until='started'):
        """Run script until it prints until."""
        child = subprocess.Popen([sys.executable, script],
                                 stdout=subprocess.PIPE, text=True)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.addCleanup(child.stdout.close)
        while child.stdout.readline().strip() != until:
            self.assertIsNone(child.poll(), 'the process ended')
        return child

    def _profile(self, child, seconds):
        path = os.path.join(self.tmp, 'profile.txt')
        # py-spy is a test requirement: it is in this environment.
        with cloudstat.Profile(os.path.join(sys.prefix, 'bin', 'py-spy'),
                               child.pid, path):
            time.sleep(seconds)
        return path

    def test_busy_code_is_counted_with_its_file(self):
        child = self._start('nova_shelve_accel/busy.py', busy=30)
        path = self._profile(child, 2)
        busy, plugin = cloudstat.profile_seconds(
            path, '/nova_shelve_accel/', ['/nova/'])
        self.assertGreater(busy, 1.0)
        self.assertEqual(busy, plugin)
        self.assertEqual('busy', cloudstat.top_frames(path)[0][0].split()[0])

    def test_nova_called_through_the_plugin_is_novas_time(self):
        self._write('nova/inner.py', _BUSY_THEN_ASLEEP.split(
            "print('started'")[0] % {'busy': 30})
        script = self._write('nova_shelve_accel/outer.py', (
            'import sys\n'
            'sys.path.insert(0, %r)\n'
            'import inner\n'
            'def through_the_plugin():\n'
            '    inner.busy()\n'
            "print('started', flush=True)\n"
            'through_the_plugin()\n') % os.path.join(self.tmp, 'nova'))
        path = self._profile(self._run(script), 2)
        busy, plugin = cloudstat.profile_seconds(
            path, '/nova_shelve_accel/', ['/nova/'])
        self.assertGreater(busy, 1.0)
        self.assertEqual(0.0, plugin)

    def test_an_idle_process_has_no_samples(self):
        child = self._start('idle.py', busy=0, until='asleep')
        path = self._profile(child, 1.5)
        self.assertEqual((0.0, 0.0),
                         cloudstat.profile_seconds(path, 'idle.py', []))

    def test_a_finished_command_counts_for_its_parent(self):
        # nova-compute's qemu-img commands end between two samples: their
        # time is in nova-compute's reaped children.
        own = os.getpid()
        before = cloudstat._process_cpu(reaped=True)[own][2]
        subprocess.run([sys.executable, '-c', _BUSY_THEN_ASLEEP.replace(
            'time.sleep(60)', '') % {'busy': 0.5}], check=True,
            stdout=subprocess.DEVNULL)
        alone = cloudstat._process_cpu()[own][2]
        with_children = cloudstat._process_cpu(reaped=True)[own][2]
        self.assertGreaterEqual(with_children - before,
                                0.4 * cloudstat.TICKS)
        self.assertGreaterEqual(with_children - alone,
                                0.4 * cloudstat.TICKS)


class TestForgetCachedSnapshots(testtools.TestCase):
    """The benchmark gives back what stock's unshelves cached."""

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.storage = {'g1': os.path.join(root, 'g1'),
                        'c3': os.path.join(root, 'c3')}
        for path in self.storage.values():
            os.makedirs(os.path.join(path, '_base'))
        self.useFixture(fixtures.MonkeyPatch('tests.e2e.cloud.STORAGE', {
            'c1': self.storage['g1'], 'c2': self.storage['g1'],
            'c3': self.storage['c3']}))

    def _cache(self, storage, image_id):
        path = os.path.join(self.storage[storage], '_base',
                            imagecache.get_cache_fname(image_id))
        with open(path, 'w') as f:
            f.write('cached image')
        return path

    def test_the_name_is_novas(self):
        image_id = 'a3f2c0de-4c44-4a5e-9d3b-0d6f3e1c2b7a'
        self.assertEqual(imagecache.get_cache_fname(image_id),
                         bench_shelve.cache_file_name(image_id))

    def test_only_the_samples_snapshots_go_on_every_storage(self):
        snapshot, other, original = (
            '0e57600b-f259-4ee7-8149-4da4f938afce',
            '29443c61-46ec-48be-89fa-13c57c9bd901',
            '7f1b9cdf-39d9-4c83-9916-3c895306f21f')
        gone = [self._cache('g1', snapshot), self._cache('c3', snapshot),
                self._cache('c3', other)]
        kept = [self._cache('g1', original), self._cache('c3', original)]
        bench_shelve.forget_cached_snapshots([snapshot, other])
        self.assertEqual([False] * 3, [os.path.exists(p) for p in gone])
        self.assertEqual([True] * 2, [os.path.exists(p) for p in kept])

    def test_a_snapshot_nothing_cached_is_no_error(self):
        bench_shelve.forget_cached_snapshots(
            ['0e57600b-f259-4ee7-8149-4da4f938afce'])


class TestTokenSeconds(testtools.TestCase):
    """Keystone's validations counted within an operation's seconds only."""

    LINES = [
        # Before the request (its second is earlier than the start).
        '[08/Dec/2026:00:25:52 +0000] "GET /v3/auth/tokens HTTP/1.1" 200 '
        '2929 0.400000',
        '[08/Dec/2026:00:25:53 +0000] "GET /v3/auth/tokens HTTP/1.1" 200 '
        '2929 0.654770',
        # Not a validation: a token issued.
        '[08/Dec/2026:00:25:53 +0000] "POST /v3/auth/tokens HTTP/1.1" 201 '
        '3000 0.500000',
        '[08/Dec/2026:00:25:54 +0000] "GET /v3/auth/tokens?allow_expired=1 '
        'HTTP/1.1" 200 2932 0.312395',
        # After the operation.
        '[08/Dec/2026:00:25:56 +0000] "GET /v3/auth/tokens HTTP/1.1" 200 '
        '2929 0.250000',
    ]

    def setUp(self):
        super().setUp()
        logs = self.useFixture(fixtures.TempDir()).path
        with open(os.path.join(logs, 'keystone-access.log'), 'w') as f:
            f.write('\n'.join(self.LINES) + '\n')
        self.useFixture(fixtures.MonkeyPatch('tools.phases.LOGS', logs))

    @staticmethod
    def _at(clock):
        return datetime.datetime.strptime(
            '2026-12-08 %s +0000' % clock,
            '%Y-%m-%d %H:%M:%S.%f %z').timestamp()

    def test_the_validations_during_the_operation(self):
        self.assertEqual(0.967, phases._token_seconds(
            self._at('00:25:53.100'), self._at('00:25:55.900')))

    def test_an_operation_with_every_token_cached_has_none(self):
        self.assertEqual(0, phases._token_seconds(
            self._at('00:25:57.000'), self._at('00:25:57.950')))


class TestHostClocks(testtools.TestCase):
    """Times the cloud's hosts record, read on this machine's clock."""

    def setUp(self):
        super().setUp()
        self.state = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MonkeyPatch('tests.e2e.cloud.STATE',
                                             self.state))
        self.storage = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MonkeyPatch(
            'tests.e2e.cloud.STORAGE',
            {'c1': self.storage, 'c2': self.storage}))

    def _skew(self, host, offset):
        with open(os.path.join(self.state, 'skew-%s' % host), 'w') as f:
            f.write(offset + '\n')

    def test_offsets_as_cloud_sh_writes_them(self):
        for offset, seconds in (('+2h', 7200), ('-10m', -600),
                                ('-90s', -90), ('+1d', 86400),
                                ('+30', 30)):
            self._skew('c1', offset)
            self.assertEqual(seconds, cloud.clock_offset('c1'), offset)

    def test_a_host_on_the_machine_clock_is_not_off(self):
        self.assertEqual(0, cloud.clock_offset('c3'))

    def test_a_bad_offset_is_an_error_naming_the_file(self):
        self._skew('c1', '2 hours')
        error = self.assertRaises(cloud.CloudError, cloud.clock_offset, 'c1')
        self.assertIn(os.path.join(self.state, 'skew-c1'), str(error))

    def test_pass_starts_of_skewed_hosts_are_on_the_machine_clock(self):
        self._skew('c1', '-10m')
        self._skew('c2', '+2h')
        now = time.time()
        with open(os.path.join(self.storage, 'compute_nodes'), 'w') as f:
            json.dump({'c1': now - 600, 'c2': now + 7200}, f)
        starts = cloud.image_cache_pass_starts()
        self.assertEqual({'c1', 'c2'}, set(starts))
        self.assertAlmostEqual(now, starts['c1'], places=3)
        self.assertAlmostEqual(now, starts['c2'], places=3)


# What a process on a skewed host reads of its clocks, and of a file it has
# just created: the wall clock, the monotonic clock, how long a short sleep
# took, and the file's modification time as the kernel stamped it.
_READ_CLOCKS = '''
import datetime, json, os, sys, time
start = time.monotonic()
time.sleep(0.2)
slept = time.monotonic() - start
with open(sys.argv[1], 'w'):
    pass
print(json.dumps({
    'wall': time.time(),
    'datetime': datetime.datetime.now(datetime.timezone.utc).timestamp(),
    'monotonic': time.monotonic(),
    'slept': slept,
    'mtime': os.stat(sys.argv[1]).st_mtime,
}))
'''

# Threads read the wall clock all along while the main thread runs commands
# through a fork that runs Python before exec (preexec_fn), as Nova's
# processutils does: a child forked while a reader holds a lock of the
# clock library would never exec. Prints how many commands ran.
_FORK_WHILE_READING = '''
import subprocess, sys, threading, time
def read():
    while True:
        time.time()
for _ in range(3):
    threading.Thread(target=read, daemon=True).start()
for done in range(int(sys.argv[1])):
    subprocess.run(['true'], preexec_fn=lambda: None, check=True)
print(done + 1)
'''


class TestWallClock(testtools.TestCase):
    """The clock of a skewed host's nova-compute (tools/cloud/wall-clock.c)."""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.library = os.path.join(self.tmp, 'wall-clock.so')
        # gcc is a requirement of the unit lane (libvirt-python needs it).
        subprocess.run(['gcc', '-shared', '-fPIC', '-O2', '-Wall',
                        '-Werror', '-o', self.library, WALL_CLOCK_SOURCE,
                        '-ldl'], check=True)

    def _run(self, offset, *args, timeout=60):
        env = dict(os.environ, LD_PRELOAD=self.library,
                   WALL_CLOCK_OFFSET=offset)
        return subprocess.run([sys.executable, '-c', *args], env=env,
                              capture_output=True, text=True,
                              timeout=timeout)

    def _clocks(self, offset):
        before = time.time()
        done = self._run(offset, _READ_CLOCKS,
                         os.path.join(self.tmp, 'stamped'))
        self.assertEqual(0, done.returncode, done.stderr)
        return before, json.loads(done.stdout), time.time()

    def _assert_shifted(self, offset, seconds):
        before, read, after = self._clocks(offset)
        for clock in ('wall', 'datetime'):
            self.assertGreaterEqual(read[clock], before + seconds, clock)
            self.assertLessEqual(read[clock], after + seconds, clock)
        # The kernel stamps files; the host's clock does not enter.
        self.assertGreaterEqual(read['mtime'], before - 1)
        self.assertLessEqual(read['mtime'], after + 1)
        # The monotonic clock is the machine's: this process's own reading
        # after the child ended is later than the child's.
        self.assertLess(read['monotonic'], time.monotonic())
        # Sleeps wait on the monotonic clock, unchanged.
        self.assertGreaterEqual(read['slept'], 0.2)
        self.assertLess(read['slept'], 10)

    def test_the_wall_clock_is_ahead_by_hours(self):
        self._assert_shifted('+2h', 7200)

    def test_the_wall_clock_is_behind_by_minutes(self):
        self._assert_shifted('-10m', -600)

    def test_seconds_and_days_are_units_too(self):
        self._assert_shifted('-90s', -90)
        self._assert_shifted('+1d', 86400)

    def test_a_bad_offset_stops_the_process_and_says_why(self):
        for offset in ('2h', '+2x', '+', '+2h30m'):
            done = self._run(offset, 'print("started")')
            self.assertEqual(2, done.returncode, offset)
            self.assertEqual('', done.stdout, offset)
            self.assertIn("bad WALL_CLOCK_OFFSET '%s'" % offset, done.stderr)

    def test_commands_forked_while_threads_read_the_clock_all_run(self):
        done = self._run('-10m', _FORK_WHILE_READING, '300', timeout=120)
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertEqual('300', done.stdout.strip())


class TestTokenExpirationArgument(testtools.TestCase):
    """cloud.sh refuses a token lifetime keystoneauth cannot live with."""

    def cloud_sh(self, *args):
        state = self.useFixture(fixtures.TempDir()).path
        env = dict(os.environ, SHELVE_ACCEL_STATE=state)
        env.pop('SHELVE_ACCEL_TOKEN_EXPIRATION', None)
        proc = subprocess.run(
            ['bash', os.path.join(REPO, 'tools', 'cloud', 'cloud.sh')] +
            list(args), capture_output=True, text=True, env=env)
        return proc.returncode, proc.stderr, os.listdir(state)

    def test_up_refuses_a_lifetime_under_130_s_before_doing_anything(self):
        code, err, state = self.cloud_sh('up', '--token-expiration', '60')
        self.assertEqual(1, code)
        self.assertIn("bad token expiration '60'", err)
        self.assertIn('130 or more', err)
        self.assertEqual([], state)

    def test_up_refuses_a_lifetime_that_is_no_number(self):
        code, err, state = self.cloud_sh('up', '--token-expiration=1h')
        self.assertEqual(1, code)
        self.assertIn("bad token expiration '1h'", err)
        self.assertEqual([], state)

    def test_token_expiration_needs_a_cloud(self):
        code, err, _state = self.cloud_sh('token-expiration', '150')
        self.assertEqual(1, code)
        self.assertIn('no cloud in', err)
