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

"""The cut points of the fault matrix: named, reached, inert by default."""

import importlib
import os
import re
import signal
from unittest import mock

import fixtures
import testtools

from nova_shelve_accel import faults
from tests.unit import disks

INSTANCE = '6f0f9c2a-0d0c-4c55-9a0e-0a4c7d3b2e11'
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'


class TestCutPoints(testtools.TestCase):

    def reload_with(self, **environ):
        # Cleanups run last first: the module is reloaded once the
        # variables are back as they were, so no later test sees them.
        self.addCleanup(importlib.reload, faults)
        for name in (faults.CRASH_ENV, faults.FAIL_ENV, faults.STOP_ENV):
            self.useFixture(fixtures.EnvironmentVariable(
                name, environ.get(name)))
        return importlib.reload(faults)

    def test_no_variable_is_left_set_for_the_next_test(self):
        self.reload_with(**{faults.FAIL_ENV: 'spawn.finished'})
        self.assertEqual('spawn.finished', faults._FAIL_AT)
        self.doCleanups()
        self.assertIsNone(faults._FAIL_AT)

    def test_inert_without_the_variables(self):
        reloaded = self.reload_with()
        with mock.patch('os.kill') as kill:
            for point in reloaded.POINTS:
                reloaded.cut_point(point)
        kill.assert_not_called()

    def assert_signals_at_the_named_point_only(self, env, before, point,
                                               signum):
        reloaded = self.reload_with(**{env: point})
        with mock.patch('os.kill') as kill:
            reloaded.cut_point(before)
            kill.assert_not_called()
            reloaded.cut_point(point)
        kill.assert_called_once_with(os.getpid(), signum)

    def test_crash_kills_this_process_at_the_named_point_only(self):
        self.assert_signals_at_the_named_point_only(
            faults.CRASH_ENV, 'claim.verified', 'claim.renamed',
            signal.SIGKILL)

    def test_stop_stops_this_process_at_the_named_point_only(self):
        self.assert_signals_at_the_named_point_only(
            faults.STOP_ENV, 'keep.record_written', 'keep.staged',
            signal.SIGSTOP)

    def test_fail_raises_at_the_named_point(self):
        reloaded = self.reload_with(**{faults.FAIL_ENV: 'spawn.finished'})
        reloaded.cut_point('spawn.guest_started')
        self.assertRaises(reloaded.InjectedFault, reloaded.cut_point,
                          'spawn.finished')

    def test_every_point_is_reached_in_the_code(self):
        # The fault matrix runs a row per point: a point that no code
        # reaches would pass a row without cutting anything.
        root = os.path.dirname(faults.__file__)
        source = ''
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith('.py') and name != 'faults.py':
                    with open(os.path.join(dirpath, name)) as f:
                        source += f.read()
        for point in faults.POINTS:
            step, _sep, what = point.partition('.')
            self.assertTrue(
                "cut_point('%s')" % point in source or (
                    "cut_point(step + '.%s')" % what in source and
                    "'%s')" % step in source), point)

    def test_every_point_in_the_code_is_listed(self):
        # A point the fault matrix does not know is a window nobody tests.
        root = os.path.dirname(faults.__file__)
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith('.py') and name != 'faults.py':
                    with open(os.path.join(dirpath, name)) as f:
                        source = f.read()
                    for point in re.findall(r"cut_point\('([a-z_.]+)'\)",
                                            source):
                        self.assertIn(point, faults.POINTS, name)

    def test_keep_claim_and_release_pass_their_own_points(self):
        reached = []
        path = self.useFixture(fixtures.TempDir()).path
        disks.make_qcow2_instance(path, INSTANCE)
        store = disks.make_store(path)
        with mock.patch.object(faults, 'cut_point', reached.append):
            store.keep(INSTANCE, SNAPSHOT, 'qcow2')
            store.claim(INSTANCE, SNAPSHOT)
            store.release(INSTANCE, SNAPSHOT)
            store.reclaim(store.find(INSTANCE, SNAPSHOT), 'test')
        self.assertEqual(['keep.record_written', 'keep.staged',
                          'keep.pruned', 'claim.staged', 'release.staged',
                          'release.pruned',
                          'reclaim.trashed'], reached)
        self.assertEqual([], os.listdir(store.path))


class TestFaultMatrixConstants(testtools.TestCase):
    """What the fault matrix, run without the plugin's dependencies, copies.

    tools/fault_matrix.py imports tests.e2e.matrix with the system's
    Python, which cannot import the upload_lease module.
    """

    def test_the_matrix_waits_for_the_real_lease_lifetime(self):
        from nova_shelve_accel import upload_lease
        from tests.e2e import matrix
        self.assertEqual(upload_lease.UPLOAD_LEASE_SECONDS,
                         matrix.UPLOAD_LEASE_SECONDS)

    def test_every_row_has_a_scenario(self):
        from tests.e2e import matrix
        for row in matrix.ROWS:
            self.assertIsNotNone(matrix.scenario(row), row)
