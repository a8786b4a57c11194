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

"""The qemu-img conversion of an upload: paused, lock-free, never orphaned."""

import os
import signal
import subprocess
import sys
import threading
import time

import fixtures

from nova import test

from nova_shelve_accel.virt.libvirt import qemu
from tests.unit import disks


class TestConversionPauses(test.NoDBTestCase):
    """qemu-img is stopped while the host starts guests; never left so."""

    def setUp(self):
        super().setUp()
        self.busy = False
        self.pauser = qemu.Pauser(lambda: self.busy)
        # A process that runs until killed, as a long conversion does.
        self.process = subprocess.Popen(['sleep', '60'])
        self.addCleanup(self.process.wait)
        self.addCleanup(self.process.kill)
        self.pauser.start(self.process)
        self.addCleanup(self.pauser.stop, self.process)

    def state(self):
        with open('/proc/%d/stat' % self.process.pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0]

    def wait_for_state(self, states):
        for _ in range(100):
            if self.state() in states:
                return
            time.sleep(qemu.POLL_SECONDS / 2)
        self.fail('process state %s, not %s' % (self.state(), states))

    def test_stopped_while_busy_and_continued_after(self):
        self.wait_for_state('S')
        self.busy = True
        self.wait_for_state('T')
        self.busy = False
        self.wait_for_state('S')

    def test_continued_when_the_conversion_ends_during_a_pause(self):
        self.busy = True
        self.wait_for_state('T')
        self.pauser.stop(self.process)
        self.wait_for_state('S')

    def test_a_pause_lasts_at_most_spawn_yield_seconds(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.virt.libvirt.qemu.SPAWN_YIELD_SECONDS', 0.5))
        self.busy = True
        self.wait_for_state('T')
        self.wait_for_state('S')


class TestConversionTakesNoLock(test.NoDBTestCase):
    """An unshelve never competes with the upload for the kept disk."""

    def test_a_guest_can_open_the_disk_for_writing_during_the_conversion(
            self):
        # Claiming the disk renames it and starts QEMU on it, which takes
        # the image's write lock: a conversion holding a read lock, running
        # or paused, failed that unshelve ("Failed to get write lock").
        workdir = self.useFixture(fixtures.TempDir()).path
        disk = os.path.join(workdir, 'disk')
        copy = os.path.join(workdir, 'copy')
        disks.qemu_img('create', '-q', '-f', 'qcow2', disk, '1G')
        # Enough data that the conversion runs for a while.
        disks.qemu_io('qcow2', disk, 'write -P 0x5a 0 512M')
        converting = []
        thread = threading.Thread(target=lambda: converting.append(
            qemu.convert_for_snapshot(disk, 'qcow2', copy, 'qcow2')))
        thread.start()
        self.addCleanup(thread.join)
        pid = self.wait_for_conversion_to_open(disk)
        os.kill(pid, signal.SIGSTOP)    # paused, as for a spawn on its host
        try:
            disks.qemu_io('qcow2', disk, 'write -P 0x11 0 4k')
        finally:
            os.kill(pid, signal.SIGCONT)

    @staticmethod
    def wait_for_conversion_to_open(disk):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir('/proc')):
                try:
                    with open('/proc/%s/cmdline' % pid, 'rb') as f:
                        argv = f.read().split(b'\0')
                    fds = os.listdir('/proc/%s/fd' % pid)
                    opened = any(os.readlink('/proc/%s/fd/%s' % (pid, fd)) ==
                                 disk for fd in fds)
                except OSError:
                    continue
                if argv[:2] == [b'qemu-img', b'convert'] and opened:
                    return int(pid)
            time.sleep(0.001)
        raise AssertionError('no qemu-img convert opened %s' % disk)


class TestConversionDiesWithItsParent(test.NoDBTestCase):

    def test_a_killed_parent_leaves_no_conversion_behind(self):
        # The parent starts a child with our preexec function and is then
        # killed, as nova-compute by kill -9.
        script = (
            'import subprocess, sys, time\n'
            'from nova_shelve_accel.virt.libvirt import qemu\n'
            'child = subprocess.Popen(["sleep", "60"],'
            ' preexec_fn=qemu.die_with_parent)\n'
            'print(child.pid, flush=True)\n'
            'time.sleep(60)\n')
        parent = subprocess.Popen([sys.executable, '-c', script],
                                  stdout=subprocess.PIPE)
        child_pid = int(parent.stdout.readline())
        os.kill(child_pid, 0)       # running
        parent.kill()
        parent.wait()
        for _ in range(100):
            try:
                os.kill(child_pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(child_pid, signal.SIGKILL)
        self.fail('the child outlived its killed parent')
