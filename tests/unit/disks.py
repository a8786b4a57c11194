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

"""Real instance directories for the tests, made with the real qemu-img.

An instance storage here is a temporary directory laid out as Nova lays out
``[DEFAULT] instances_path``: the image cache in ``_base/`` and one directory
per instance holding ``disk``, ``disk.info`` and whatever else the guest had.
"""

import json
import os
import subprocess
import time

import fixtures

from nova_shelve_accel import storage
from nova_shelve_accel import untouched

KEPT_SUBDIR = '_shelve_kept'
BASE_SUBDIR = '_base'
DISK_SIZE = 1024 * 1024
# Disks are made an hour old, so that anything writing to them later moves
# their mtime whatever the timestamp granularity of the filesystem.
AGE_SECONDS = 3600


class WatchClock(fixtures.Fixture):
    """The clock hosts watch the storage by, moved on by ``advance``.

    It runs as the real one does, plus what the test advanced it by: hours
    pass in an instant, for every host of the test.
    """

    def _setUp(self):
        self.offset = 0
        real = untouched.clock
        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.untouched.clock',
            lambda: real() + self.offset))

    def advance(self, seconds):
        self.offset += seconds


def make_store(instances_path, host='compute-a'):
    return storage.KeptDiskStore(instances_path, KEPT_SUBDIR, BASE_SUBDIR,
                                 host)


def qemu_img(*args):
    subprocess.run(('qemu-img',) + args, check=True, capture_output=True)


def qemu_io(disk_format, disk, command):
    subprocess.run(('qemu-io', '-f', disk_format, '-c', command, disk),
                   check=True, capture_output=True)


def age(path, seconds=AGE_SECONDS):
    then = time.time_ns() - seconds * 10 ** 9
    os.utime(path, ns=(then, then))


def make_base(instances_path, name='0123456789abcdef', directory=None):
    """A raw base image in the image cache (or in ``directory``)."""
    directory = directory or os.path.join(instances_path, BASE_SUBDIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    qemu_img('create', '-q', '-f', 'raw', path, str(DISK_SIZE))
    return path


def instance_dir(instances_path, instance_uuid):
    path = os.path.join(instances_path, instance_uuid)
    os.makedirs(path, exist_ok=True)
    return path


def write_disk_info(inst_dir, disk_format):
    disk = os.path.join(inst_dir, 'disk')
    with open(os.path.join(inst_dir, 'disk.info'), 'w') as f:
        json.dump({disk: disk_format}, f)


def add_files(inst_dir, *names):
    for name in names:
        with open(os.path.join(inst_dir, name), 'wb') as f:
            f.write(b'x' * 512)


def make_qcow2_instance(instances_path, instance_uuid, backing=None,
                        disk_info='qcow2', extra_files=()):
    """An instance directory whose root disk is a qcow2 overlay of a base.

    ``backing`` defaults to a new base image in ``_base``; ``disk_info`` is
    the format ``disk.info`` records (None: no disk.info).
    """
    inst_dir = instance_dir(instances_path, instance_uuid)
    if backing is None:
        backing = make_base(instances_path)
    disk = os.path.join(inst_dir, 'disk')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw',
             disk, str(DISK_SIZE))
    age(disk)
    if disk_info:
        write_disk_info(inst_dir, disk_info)
    add_files(inst_dir, *extra_files)
    return disk


def make_raw_instance(instances_path, instance_uuid, disk_info='raw',
                      size=DISK_SIZE, extra_files=()):
    """An instance directory whose root disk is a flat raw file."""
    inst_dir = instance_dir(instances_path, instance_uuid)
    disk = os.path.join(inst_dir, 'disk')
    qemu_img('create', '-q', '-f', 'raw', disk, str(size))
    age(disk)
    if disk_info:
        write_disk_info(inst_dir, disk_info)
    add_files(inst_dir, *extra_files)
    return disk


def tree(path):
    """Every file below ``path`` with its size and mtime, to compare."""
    found = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            found[os.path.relpath(full, path)] = (st.st_size,
                                                  st.st_mtime_ns)
    return found
