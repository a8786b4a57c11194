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

"""Kept root disks on an instance storage shared by a group of hosts.

A kept disk is the instance directory of a shelve-offloaded instance, reduced
to the files an unshelve needs, moved under ``<instances_path>/<subdir>/`` and
named ``<instance uuid>.<snapshot id>``. A ``kept.json`` record in it says
what was kept so that any host of the storage can check the disk before using
it. This module knows files and qemu-img, not Nova.

Every change of state is a rename within one filesystem, which is atomic even
between hosts of a shared filesystem: a kept disk appears whole or not at all,
and of two hosts claiming the same disk exactly one rename succeeds.
"""

import dataclasses
import errno
import json
import os
import shutil
import time
import uuid

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import timeutils

LOG = logging.getLogger(__name__)

RECORD_NAME = 'kept.json'
RECORD_VERSION = 1
ROOT_DISK = 'disk'
# What an unshelve on the root disk needs besides the disk itself. Ephemeral
# and swap disks are not kept: stock unshelve gives the guest fresh ones.
KEPT_FILES = (ROOT_DISK, 'disk.info', 'disk.config')
DISK_FORMATS = ('qcow2', 'raw')
# Prefixes of in-flight work inside the kept-disks directory; never claimed.
_STAGING = '.staging-'
_TRASH = '.reclaiming-'
# A keep or release moves a disk through staging in well under a minute.
STALE_STAGING_SECONDS = 3600


class KeepRefused(Exception):
    """The instance directory cannot be kept; the caller deletes it."""


class VerificationFailed(Exception):
    """A kept disk is not safe to reuse for the instance asking for it."""


@dataclasses.dataclass(frozen=True)
class KeptDiskRecord:
    """What was kept, written as ``kept.json`` beside the disk."""

    instance_uuid: str
    snapshot_id: str
    disk_format: str
    backing_file: str | None
    disk_size: int
    disk_mtime_ns: int
    files: tuple
    kept_by: str
    kept_at: str
    version: int = RECORD_VERSION

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError('not a JSON object')
        if data.get('version') != RECORD_VERSION:
            raise ValueError('unknown record version %r' % data.get('version'))
        data['files'] = tuple(data['files'])
        return cls(**data)


def kept_name(instance_uuid, snapshot_id):
    return '%s.%s' % (instance_uuid, snapshot_id)


def qemu_img_info(path, disk_format):
    """Return qemu-img's description of ``path`` opened as ``disk_format``.

    The format is given, never probed, so that a raw disk whose guest wrote a
    qcow2 header cannot be mistaken for a qcow2 disk with a backing file.
    """
    out, _err = processutils.execute(
        'qemu-img', 'info', '--output=json', '--force-share',
        '-f', disk_format, path)
    return json.loads(out)


def _allocated_bytes(path):
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class KeptDiskStore:
    """The kept disks of one instance storage, as one host sees it."""

    def __init__(self, instances_path, subdirectory, image_cache_subdirectory):
        self.instances_path = instances_path
        self.path = os.path.join(instances_path, subdirectory)
        self.base_dir = os.path.join(instances_path, image_cache_subdirectory)

    def instance_dir(self, instance_uuid):
        return os.path.join(self.instances_path, instance_uuid)

    def kept_dir(self, instance_uuid, snapshot_id):
        return os.path.join(self.path, kept_name(instance_uuid, snapshot_id))

    def _unique(self, prefix, name):
        return os.path.join(self.path, '%s%s.%s' % (
            prefix, name, uuid.uuid4().hex[:8]))

    # -- space -------------------------------------------------------------

    def free_percent(self):
        """Free space of the storage filesystem, in percent of its size."""
        st = os.statvfs(self.instances_path)
        if not st.f_blocks:
            return 0.0
        return 100.0 * st.f_bavail / st.f_blocks

    def used_bytes(self):
        """Bytes that kept disks, including ones being reclaimed, occupy."""
        if not os.path.isdir(self.path):
            return 0
        return _allocated_bytes(self.path)

    # -- keep --------------------------------------------------------------

    def keep(self, instance_uuid, snapshot_id, disk_format, host):
        """Turn the instance directory into a kept disk and return its record.

        On success the instance directory no longer exists. On KeepRefused
        nothing was changed.
        """
        inst_dir = self.instance_dir(instance_uuid)
        record = self._describe(inst_dir, instance_uuid, snapshot_id,
                                disk_format, host)
        os.makedirs(self.path, exist_ok=True)
        # Disks kept at an earlier shelve of this instance are stale: the
        # instance ran since, elsewhere, and its data moved on.
        for stale in self.list_kept():
            if stale.instance_uuid == instance_uuid:
                self.reclaim(stale, 'superseded by a newer shelve')
        _write_record(inst_dir, record)
        self._move_in(inst_dir, record)
        return record

    def _move_in(self, directory, record):
        """Make ``directory`` the kept disk of ``record``, pruned."""
        staging = self._unique(
            _STAGING, kept_name(record.instance_uuid, record.snapshot_id))
        os.rename(directory, staging)
        try:
            _prune(staging, record.files)
            # The kept disk becomes visible, whole, with this rename.
            os.rename(staging, self.kept_dir(record.instance_uuid,
                                             record.snapshot_id))
        except OSError:
            # Half-kept is never claimable: drop it. The snapshot holds the
            # data, and empty_trash() removes what rmtree cannot.
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _describe(self, inst_dir, instance_uuid, snapshot_id, disk_format,
                  host):
        if disk_format not in DISK_FORMATS:
            raise KeepRefused('disk format %s is not a file format we keep '
                              '(%s)' % (disk_format, ', '.join(DISK_FORMATS)))
        disk = os.path.join(inst_dir, ROOT_DISK)
        if not os.path.isfile(disk):
            raise KeepRefused('root disk %s does not exist' % disk)
        info = _read_disk_info(inst_dir)
        if info.get(disk) not in (None, disk_format):
            raise KeepRefused('disk.info says %s is %s, the image backend '
                              'says %s' % (disk, info[disk], disk_format))
        try:
            details = qemu_img_info(disk, disk_format)
        except processutils.ProcessExecutionError as e:
            raise KeepRefused('qemu-img cannot read %s as %s: %s'
                              % (disk, disk_format, e.stderr.strip()))
        backing = self._backing_name(disk, details)
        st = os.stat(disk)
        return KeptDiskRecord(
            instance_uuid=instance_uuid, snapshot_id=snapshot_id,
            disk_format=disk_format, backing_file=backing,
            disk_size=st.st_size, disk_mtime_ns=st.st_mtime_ns,
            files=tuple(f for f in KEPT_FILES
                        if os.path.exists(os.path.join(inst_dir, f))),
            kept_by=host, kept_at=timeutils.utcnow().isoformat())

    def _backing_name(self, disk, details):
        backing = details.get('full-backing-filename') or details.get(
            'backing-filename')
        if not backing:
            return None
        # Only a backing file in the shared image cache is reachable from
        # every host of the storage and protected by our image cache pass.
        if os.path.dirname(os.path.realpath(backing)) != os.path.realpath(
                self.base_dir):
            raise KeepRefused('root disk %s is backed by %s, outside the '
                              'image cache %s' % (disk, backing,
                                                  self.base_dir))
        if not os.path.exists(backing):
            raise KeepRefused('backing file %s of %s is missing'
                              % (backing, disk))
        return os.path.basename(backing)

    # -- reuse -------------------------------------------------------------

    def find(self, instance_uuid, snapshot_id):
        """Return the record of the kept disk of this shelve, or None."""
        return _read_record(self.kept_dir(instance_uuid, snapshot_id))

    def verify(self, record, instance_uuid, snapshot_id):
        """Raise VerificationFailed unless the kept disk is safe to reuse."""
        where = self.kept_dir(record.instance_uuid, record.snapshot_id)
        if (record.instance_uuid, record.snapshot_id) != (instance_uuid,
                                                          snapshot_id):
            raise VerificationFailed(
                '%s was kept for instance %s at snapshot %s, not for %s at '
                '%s' % (where, record.instance_uuid, record.snapshot_id,
                        instance_uuid, snapshot_id))
        missing = [f for f in record.files
                   if not os.path.exists(os.path.join(where, f))]
        if missing:
            raise VerificationFailed('%s lacks %s' % (where,
                                                      ', '.join(missing)))
        disk = os.path.join(where, ROOT_DISK)
        st = os.stat(disk)
        if (st.st_size, st.st_mtime_ns) != (record.disk_size,
                                            record.disk_mtime_ns):
            raise VerificationFailed('%s changed after it was kept' % disk)
        try:
            details = qemu_img_info(disk, record.disk_format)
        except processutils.ProcessExecutionError as e:
            raise VerificationFailed('qemu-img cannot read %s as %s: %s' % (
                disk, record.disk_format, e.stderr.strip()))
        backing = details.get('backing-filename')
        if (os.path.basename(backing) if backing else None) != (
                record.backing_file):
            raise VerificationFailed('%s is backed by %s, the record says %s'
                                     % (disk, backing, record.backing_file))
        if backing and not os.path.exists(
                os.path.join(self.base_dir, record.backing_file)):
            raise VerificationFailed('backing file %s of %s is missing' % (
                os.path.join(self.base_dir, record.backing_file), disk))

    def claim(self, instance_uuid, snapshot_id):
        """Move the kept disk into the instance directory; True if we won.

        The rename is the claim: of several hosts racing for the same disk,
        one rename succeeds and the others find the source gone.
        """
        inst_dir = self.instance_dir(instance_uuid)
        try:
            # rename() replaces an empty directory but never a populated one,
            # so files left by an earlier attempt are never overwritten.
            os.rename(self.kept_dir(instance_uuid, snapshot_id), inst_dir)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise VerificationFailed(
                    'instance directory %s already exists and is not empty'
                    % inst_dir)
            raise
        return True

    def release(self, instance_uuid, snapshot_id):
        """Give a claimed disk back to the storage after a failed spawn."""
        inst_dir = self.instance_dir(instance_uuid)
        record = _read_record(inst_dir)
        if record is None or (record.instance_uuid, record.snapshot_id) != (
                instance_uuid, snapshot_id):
            raise VerificationFailed('%s holds no claimed disk of snapshot '
                                     '%s' % (inst_dir, snapshot_id))
        self._move_in(inst_dir, record)

    def finish_claim(self, instance_uuid):
        """The instance runs on the disk now: it is no longer a kept disk."""
        try:
            os.unlink(os.path.join(self.instance_dir(instance_uuid),
                                   RECORD_NAME))
        except FileNotFoundError:
            pass

    # -- inventory and reclaim ---------------------------------------------

    def list_kept(self):
        """Records of every kept disk of the storage, oldest name first."""
        if not os.path.isdir(self.path):
            return []
        records = []
        for name in sorted(os.listdir(self.path)):
            if name.startswith('.'):
                continue
            record = _read_record(os.path.join(self.path, name))
            if record is None or kept_name(
                    record.instance_uuid, record.snapshot_id) != name:
                LOG.warning('Ignoring %s: it is not a kept disk with a valid '
                            '%s record; move it away or delete it by hand.',
                            os.path.join(self.path, name), RECORD_NAME)
                continue
            records.append(record)
        return records

    def protect_backing_file(self, record):
        """Keep the kept disk's backing file young for the image cache.

        Nova's image cache pass removes base files that no instance on the
        storage uses once they are old enough, and it cannot see kept disks.
        Touching the file, as Nova does for the images it uses, keeps it.
        """
        if record.backing_file:
            try:
                os.utime(os.path.join(self.base_dir, record.backing_file))
            except FileNotFoundError:
                pass

    def reclaim(self, record, reason):
        """Delete a kept disk; False if another host reclaimed it first."""
        source = self.kept_dir(record.instance_uuid, record.snapshot_id)
        trash = self._unique(_TRASH, os.path.basename(source))
        try:
            os.rename(source, trash)
        except FileNotFoundError:
            return False
        LOG.info('Reclaiming kept root disk %s of instance %s: %s',
                 source, record.instance_uuid, reason)
        shutil.rmtree(trash)
        return True

    def empty_trash(self):
        """Remove what interrupted keeps, releases and reclaims left.

        A staging directory younger than STALE_STAGING_SECONDS may belong to
        a keep in progress on another host of the storage, so it stays.
        """
        if not os.path.isdir(self.path):
            return
        now = time.time()
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith(_TRASH) or (
                    name.startswith(_STAGING) and
                    now - _mtime(path) > STALE_STAGING_SECONDS):
                LOG.info('Removing %s, left by an interrupted operation on '
                         'kept disks.', path)
                shutil.rmtree(path, ignore_errors=True)


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return time.time()


def _read_disk_info(directory):
    try:
        with open(os.path.join(directory, 'disk.info')) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError:
        raise KeepRefused('%s is not valid JSON'
                          % os.path.join(directory, 'disk.info'))


def _read_record(directory):
    try:
        with open(os.path.join(directory, RECORD_NAME)) as f:
            return KeptDiskRecord.from_json(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, TypeError, KeyError) as e:
        LOG.warning('Kept disk record %s is unreadable: %s',
                    os.path.join(directory, RECORD_NAME), e)
        return None


def _write_record(directory, record):
    path = os.path.join(directory, RECORD_NAME)
    with open(path + '.tmp', 'w') as f:
        f.write(record.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + '.tmp', path)


def _prune(directory, keep):
    """Delete what an unshelve does not need: swap, ephemerals, logs."""
    for name in os.listdir(directory):
        if name in keep or name == RECORD_NAME:
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
