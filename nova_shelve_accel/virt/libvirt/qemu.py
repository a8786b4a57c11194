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

"""The qemu-img processes of an upload: how they run beside guests.

A conversion of a kept disk runs on a host that also starts guests, some
of them on that very disk: it runs at the lowest CPU and I/O priority,
takes no image lock, is stopped outright (SIGSTOP) while the host starts a
guest, and dies with nova-compute, so that a killed service leaves no
stopped copy behind.
"""

import ctypes
import os
import signal
import threading
import time

from oslo_concurrency import processutils

from nova.compute import utils as compute_utils
import nova.conf
import nova.privsep.utils

CONF = nova.conf.CONF

# A conversion gives way to guests starting on its host at most this long
# at a time (the upload waits as long before it converts): an unshelve
# beside an upload must stay fast, and the upload must still end.
SPAWN_YIELD_SECONDS = 30
POLL_SECONDS = 0.2


def convert_for_snapshot(disk, disk_format, copy, image_format,
                         busy=None):
    """Convert as Nova's cold libvirt snapshot does, at the lowest priority.

    The arguments of Nova's ``extract_snapshot`` (``-t none`` where the
    storage allows O_DIRECT, ``-c`` with ``[libvirt] snapshot_compression``
    for qcow2), but under ``nice``/``ionice`` and without taking the image
    lock: the upload runs beside guests and unshelves on the same host, of
    this very disk too, and must yield to them. While
    ``busy()`` says so, qemu-img is stopped outright (SIGSTOP); it dies
    with the thread that started it, so that a killed nova-compute leaves
    no stopped copy behind.
    """
    out_format = {'iso': 'raw', 'ploop': 'parallels'}.get(image_format,
                                                          image_format)
    cache_mode = ('none' if nova.privsep.utils.supports_direct_io(
        os.path.dirname(copy)) else 'writeback')
    # -U (--force-share): no image lock. The disk stays claimable while it
    # is read, paused or not; an unshelve that claims it moves it away and
    # starts a guest on it, and the upload then does not use the copy.
    command = ['nice', '-n', '19', 'ionice', '-c', '3', 'qemu-img',
               'convert', '-U', '-t', cache_mode, '-O', out_format,
               '-f', disk_format]
    if CONF.libvirt.snapshot_compression and out_format == 'qcow2':
        command.append('-c')
    pauser = Pauser(busy) if busy else None
    with compute_utils.disk_ops_semaphore:
        processutils.execute(*command, disk, copy,
                             preexec_fn=die_with_parent,
                             on_execute=pauser and pauser.start,
                             on_completion=pauser and pauser.stop)


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent():
    # Runs in the child between fork and exec; nice and ionice exec on, so
    # the setting reaches qemu-img.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Pauser:
    """Stops a process while ``busy()``, SPAWN_YIELD_SECONDS at a time.

    ``start`` and ``stop`` are processutils.execute's ``on_execute`` and
    ``on_completion``.
    """

    def __init__(self, busy):
        self._busy = busy
        self._done = threading.Event()
        self._process = None

    def start(self, process):
        self._process = process
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self, process):
        self._done.set()

    def _run(self):
        stopped_at = None
        while not self._done.wait(POLL_SECONDS):
            if stopped_at is None:
                if self._busy():
                    self._signal(signal.SIGSTOP)
                    stopped_at = time.monotonic()
            elif (not self._busy() or
                  time.monotonic() - stopped_at > SPAWN_YIELD_SECONDS):
                self._signal(signal.SIGCONT)
                stopped_at = None
        if stopped_at is not None:
            self._signal(signal.SIGCONT)

    def _signal(self, signum):
        try:
            self._process.send_signal(signum)
        except ProcessLookupError:
            pass
