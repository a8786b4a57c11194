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

import os
import subprocess
import sys
import time

import fixtures
import testtools

from tests.e2e import cloud

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
