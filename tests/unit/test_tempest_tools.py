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

"""tools/tempest.sh and its helpers, where they work without a cloud."""

import importlib.util
import os
import struct
import subprocess

import fixtures
from oslo_utils.imageutils import format_inspector
import subunit
import testtools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TEMPEST_TOOLS = os.path.join(REPO, 'tools', 'tempest')


def _load(name):
    """A module of tools/tempest, which is no package."""
    spec = importlib.util.spec_from_file_location(
        'tempest_' + name, os.path.join(TEMPEST_TOOLS, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestGuestImage(testtools.TestCase):
    """The disk of Tempest's guests (configure.image_file)."""

    def setUp(self):
        super().setUp()
        self.workdir = self.useFixture(fixtures.TempDir()).path
        self.image = _load('configure').image_file(self.workdir)
        self.raw = os.path.join(self.workdir, 'base.raw')
        # What Nova makes of it: the base file is the image in raw.
        subprocess.run(['qemu-img', 'convert', '-O', 'raw', self.image,
                        self.raw], check=True)

    def _sector(self):
        with open(self.raw, 'rb') as f:
            return f.read(512)

    def test_passes_the_safety_checks_nova_runs(self):
        inspector = format_inspector.detect_file_format(self.image)
        self.assertEqual('qcow2', str(inspector))
        inspector.safety_check()
        base = format_inspector.detect_file_format(self.raw)
        base.safety_check()

    def test_boot_sector_prints_its_lines_and_has_one_partition(self):
        sector = self._sector()
        self.assertEqual(b'\x55\xaa', sector[510:])
        # mov si, <address of the text>: the text follows the code.
        text_at = struct.unpack('<H', sector[7:9])[0] - 0x7c00
        end = sector.index(b'\0', text_at)
        lines = sector[text_at:end].decode().split('\r\n')
        self.assertEqual(10, len([line for line in lines if line]))
        self.assertEqual(0x83, sector[446 + 4])
        self.assertEqual(bytes(48), sector[462:510])

    def test_virtual_size_is_the_images(self):
        self.assertEqual(64 * 1024 * 1024, os.path.getsize(self.raw))


class TestReport(testtools.TestCase):
    """report.py compares the modes' subunit streams."""

    def setUp(self):
        super().setUp()
        self.out = self.useFixture(fixtures.TempDir()).path
        self.report = _load('report')

    def _stream(self, mode, outcomes, reused=None):
        with open(os.path.join(self.out, mode + '.subunit'), 'wb') as f:
            result = subunit.StreamResultToBytes(f)
            for test_id, status in outcomes.items():
                result.status(test_id=test_id, test_status='inprogress')
                result.status(test_id=test_id, test_status=status)
        if reused is not None:
            with open(os.path.join(self.out, mode + '.reused'), 'w') as f:
                f.write('%d\n' % reused)

    def test_counts_per_mode_and_failures_only_with_the_plugin(self):
        self._stream('stock', {'t.a': 'success', 't.b': 'fail',
                               't.c': 'success', 't.d': 'skip'}, reused=0)
        self._stream('plugin', {'t.a': 'fail', 't.b': 'fail',
                                't.c': 'success', 't.d': 'skip'}, reused=3)
        text = self.report.report(self.out, ['stock', 'plugin'])
        lines = text.splitlines()
        stock = [line for line in lines if line.startswith('stock ')][0]
        plugin = [line for line in lines if line.startswith('plugin ')][0]
        self.assertEqual(['2', '1', '1', '0'], stock.split()[-4:])
        self.assertEqual(['1', '1', '2', '3'], plugin.split()[-4:])
        self.assertIn('  t.a (passes in stock: ONLY WITH THE PLUGIN)', lines)
        self.assertIn('  t.b (fails in stock too)', lines)
        self.assertIn('1 failure(s) only with the plugin.', lines)

    def test_no_failure_no_alarm(self):
        self._stream('stock', {'t.a': 'success'})
        self._stream('fast-shelve', {'t.a': 'success'})
        text = self.report.report(self.out, ['stock', 'fast-shelve'])
        self.assertNotIn('Failed', text)
        self.assertNotIn('only with the plugin', text)
        # No count of reuses was written: unknown, not zero.
        self.assertTrue(text.splitlines()[2].endswith('?'))


class TestTempestArguments(testtools.TestCase):
    """tools/tempest.sh refuses bad arguments before touching anything."""

    def _run(self, *args):
        state = self.useFixture(fixtures.TempDir()).path
        return subprocess.run(
            ['bash', os.path.join(REPO, 'tools', 'tempest.sh')] + list(args),
            capture_output=True, text=True,
            env=dict(os.environ, SHELVE_ACCEL_STATE=state))

    def test_unknown_test_set(self):
        done = self._run('--tests', 'smoke')
        self.assertEqual(2, done.returncode)
        self.assertIn('--tests smoke', done.stderr)

    def test_unknown_mode(self):
        done = self._run('--modes', 'plugin,turbo')
        self.assertEqual(2, done.returncode)
        self.assertIn("unknown mode 'turbo'", done.stderr)

    def test_no_cloud(self):
        done = self._run('--modes', 'stock')
        self.assertEqual(2, done.returncode)
        self.assertIn('no cloud is up', done.stderr)
