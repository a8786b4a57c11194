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

"""The two commands as installed, each in a process of its own.

Nova's monkey patching reads nova.conf as the command starts, before its
main(): what an operator sees there is only seen from outside.
"""

import os
import subprocess
import sys

import fixtures
import testtools

from nova import version as nova_version

from nova_shelve_accel import cmd

# Each command with arguments that read nova.conf.
COMMANDS = {
    'nova-shelve-accel': ['kept', 'list'],
    'nova-shelve-accel-status': ['upgrade', 'check'],
}


def run(command, *args):
    script = os.path.join(os.path.dirname(sys.executable), command)
    return subprocess.run([script] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


class TestCommands(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def assert_no_answer(self, path):
        for command, args in COMMANDS.items():
            process = run(command, '--config-file', path, *args)
            self.assertEqual(cmd.CONFIG_ERROR, process.returncode,
                             '%s: %s' % (command, process.stderr))
            self.assertNotIn('Traceback', process.stderr)
            self.assertIn('Error: cannot read the configuration',
                          process.stderr)
            self.assertIn(path, process.stderr)
            self.assertEqual('', process.stdout)

    def test_a_missing_nova_conf_is_one_line_and_no_answer(self):
        self.assert_no_answer(os.path.join(self.tmp, 'missing.conf'))

    def test_a_nova_conf_that_does_not_parse_is_one_line_and_no_answer(self):
        path = os.path.join(self.tmp, 'nova.conf')
        with open(path, 'w') as f:
            f.write('[DEFAULT\nhost = c1\n')
        self.assert_no_answer(path)

    def test_version_is_the_plugins_not_novas(self):
        self.assertNotEqual(nova_version.version_string(), cmd.version())
        for command in COMMANDS:
            process = run(command, '--version')
            self.assertEqual(0, process.returncode, process.stderr)
            self.assertEqual(cmd.version(), process.stdout.strip())
