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
and of two hosts claiming the same disk exactly one rename succeeds. Work in
flight lives under names that say which host does it
(``.staging-<host tag>-<token>-<kept name>``, ``.reclaiming-…``), so a
host that restarts knows what it left behind. Whether another host's work
is abandoned is judged by how long it has gone untouched as this host watched
it (see ``untouched``), never by comparing timestamps: those may come from
another host's clock.

Anyone who can write the shared storage could plant links or odd files in
it: nothing here follows a symbolic link, every entry is checked with
``lstat`` and every name against the pattern it must have, and whatever
does not match is reported once and left alone.
"""

import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import uuid

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import timeutils
from oslo_utils import units

from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import faults
from nova_shelve_accel import safe_files
from nova_shelve_accel import untouched
from nova_shelve_accel import upload_lease

LOG = logging.getLogger(__name__)

RECORD_NAME = 'kept.json'
# What a claim's record becomes in the instance directory once a guest
# started on the disk (see mark_unshelved).
UNSHELVED_MARK = 'kept.json.unshelved'
RECORD_VERSION = 1
ROOT_DISK = 'disk'
# What an unshelve on the root disk needs besides the disk itself. Ephemeral
# and swap disks are not kept: stock unshelve gives the guest fresh ones.
KEPT_FILES = (ROOT_DISK, 'disk.info', 'disk.config')
DISK_FORMATS = ('qcow2', 'raw')
# Kept disks are the service user's alone (their records too: see
# safe_files.NEW_FILE_MODE); QEMU reads a disk only once it is claimed back
# into an instance directory.
KEPT_DIR_MODE = 0o700
# What Nova gives an instance directory, restored when a disk is claimed.
INSTANCE_DIR_MODE = 0o755
# A keep, release or reclaim moves a disk through staging or trash in well
# under a minute; work in flight seen untouched for longer was interrupted.
STALE_SECONDS = 3600
# Longer than any pause between two looks at a name a host judges (the
# image cache pass runs every 40 minutes by default): a name not looked at
# for this long is gone, and forgotten.
FORGET_UNSEEN_SECONDS = 86400
# The limits Nova puts on qemu-img for images it does not trust, and a
# wall-clock bound for a storage that hangs.
QEMU_IMG_LIMITS = processutils.ProcessLimits(cpu_time=30,
                                             address_space=1 * units.Gi)
QEMU_IMG_TIMEOUT = 120

_UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
_KEPT_NAME = re.compile(r'^(?P<instance>%s)\.(?P<snapshot>%s)$'
                        % (_UUID, _UUID))
_UUID_NAME = re.compile(r'^%s$' % _UUID)
_IN_FLIGHT_NAME = re.compile(
    r'^\.(?P<kind>staging|reclaiming|quarantine)-(?P<host>[0-9a-f]{8})-'
    r'(?P<token>[0-9a-f]{8})-(?P<kept>%s\.%s)$' % (_UUID, _UUID))
STAGING = 'staging'
TRASH = 'reclaiming'
# A claimed disk whose guest could not be removed after a failed spawn: no
# claim and no stock spawn may use it until its host has removed the guest.
QUARANTINE = 'quarantine'
# Left by releases that read ages off the storage's clock; skipped.
_CLOCK_PROBE = '.clock-%s'
# A file each host of the storage leaves, holding its name: which hosts
# share this storage, as the hosts see it, not as the aggregates say.
_HOST_PROBE = '.host-%s'
_HOST_PROBE_NAME = re.compile(r'^\.host-(?P<tag>[0-9a-f]{8})$')


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
    # Bytes the kept files occupy; a kept disk does not change, so this is
    # what the storage's accounting adds up instead of walking the files.
    allocated_bytes: int = 0
    # True while the snapshot image is still queued and this disk is the
    # instance's only copy (``snapshot_upload = after_offload``).
    snapshot_pending: bool = False
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
        record = cls(**data)
        record.check()
        return record

    def check(self):
        """Raise ValueError unless every field has a value we can trust."""
        name = kept_name(self.instance_uuid, self.snapshot_id)
        if not isinstance(name, str) or not _KEPT_NAME.match(name):
            raise ValueError('instance %r or snapshot %r is not a UUID'
                             % (self.instance_uuid, self.snapshot_id))
        if self.disk_format not in DISK_FORMATS:
            raise ValueError('disk format %r' % (self.disk_format,))
        if not set(self.files) <= set(KEPT_FILES) or (
                ROOT_DISK not in self.files):
            raise ValueError('files %r' % (self.files,))
        if self.backing_file is not None and (
                not isinstance(self.backing_file, str) or
                self.backing_file in ('', '.', '..') or
                '/' in self.backing_file):
            raise ValueError('backing file %r is not a name in the image '
                             'cache' % (self.backing_file,))
        for field in ('disk_size', 'disk_mtime_ns', 'allocated_bytes'):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError('%s %r' % (field, value))
        if not isinstance(self.snapshot_pending, bool):
            raise ValueError('snapshot_pending %r' % (self.snapshot_pending,))


@dataclasses.dataclass(frozen=True)
class InFlight:
    """A staging or trash directory: a keep, release or reclaim under way."""

    path: str
    kind: str
    host_tag: str
    instance_uuid: str
    snapshot_id: str


@dataclasses.dataclass(frozen=True)
class Damaged:
    """A kept-disk directory whose record cannot be trusted."""

    path: str
    instance_uuid: str
    snapshot_id: str
    problem: str


def kept_name(instance_uuid, snapshot_id):
    return '%s.%s' % (instance_uuid, snapshot_id)


def host_tag(host):
    """Eight hex digits naming a host in file names, whatever its name."""
    return hashlib.sha256(host.encode('utf-8')).hexdigest()[:8]


def qemu_img_info(path, disk_format):
    """Return qemu-img's description of ``path`` opened as ``disk_format``.

    The format is given, never probed, so that a raw disk whose guest wrote a
    qcow2 header cannot be mistaken for a qcow2 disk with a backing file.
    """
    started = []
    try:
        out, _err = processutils.execute(
            'env', 'LC_ALL=C', 'LANG=C', 'qemu-img', 'info',
            '--output=json', '--force-share', '-f', disk_format, path,
            prlimit=QEMU_IMG_LIMITS, timeout=QEMU_IMG_TIMEOUT,
            on_execute=started.append)
    except subprocess.TimeoutExpired:
        # A hung storage: do not leave the process behind, and fail the
        # way every other qemu-img failure fails.
        for process in started:
            process.kill()
            process.wait()
        raise processutils.ProcessExecutionError(
            cmd='qemu-img info %s' % path,
            stderr='no answer within %d seconds (is the storage hung?)'
            % QEMU_IMG_TIMEOUT)
    return json.loads(out)


def _allocated_bytes(directory, names):
    return sum(os.lstat(os.path.join(directory, n)).st_blocks * 512
               for n in names)


class KeptDiskStore:
    """The kept disks of one instance storage, as one host sees it."""

    def __init__(self, instances_path, subdirectory, image_cache_subdirectory,
                 host):
        self.instances_path = instances_path
        self.path = os.path.join(instances_path, subdirectory)
        self.base_dir = os.path.join(instances_path, image_cache_subdirectory)
        self.host = host
        self.host_tag = host_tag(host)
        # Bytes kept disks occupy, as of the last inventory plus what this
        # host kept, claimed and reclaimed since: reading it costs nothing.
        self._used_bytes = None
        # Paths already reported as foreign or damaged: reported once.
        self._reported = set()
        self._watch = untouched.Watch(FORGET_UNSEEN_SECONDS)
        self.leases = upload_lease.UploadLeases(self.host_tag,
                                                self.untouched_for)

    def instance_dir(self, instance_uuid):
        return os.path.join(self.instances_path, instance_uuid)

    def kept_dir(self, instance_uuid, snapshot_id):
        return os.path.join(self.path, kept_name(instance_uuid, snapshot_id))

    def _in_flight_path(self, kind, instance_uuid, snapshot_id):
        return os.path.join(self.path, '.%s-%s-%s-%s' % (
            kind, self.host_tag, uuid.uuid4().hex[:8],
            kept_name(instance_uuid, snapshot_id)))

    def _report_once(self, path, message, *args):
        if path not in self._reported:
            self._reported.add(path)
            LOG.warning(message, *args)

    def ensure_directory(self):
        """Create the kept-disks directory, the service user's alone."""
        if not os.path.lexists(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                safe_files.create_new(
                    self.path, lambda p: os.mkdir(p, KEPT_DIR_MODE))
            except FileExistsError:
                pass            # another host made it meanwhile
        if not safe_files.is_real_dir(self.path):
            raise accel_exc.KeepRefused(
                '%s is not a directory (a link or a file '
                'stands there)' % self.path)
        if stat.S_IMODE(os.lstat(self.path).st_mode) != KEPT_DIR_MODE:
            os.chmod(self.path, KEPT_DIR_MODE)

    # -- which hosts share the storage -------------------------------------

    def leave_probe(self):
        """Leave this host's name on the storage for the other hosts to see.

        Replaced whole with one rename: a host reading it meanwhile sees
        the old file or the new one, never half of one.
        """
        self.ensure_directory()
        path = os.path.join(self.path, _HOST_PROBE % self.host_tag)
        tmp = path + '.tmp'
        safe_files.remove_tree(tmp)
        with os.fdopen(safe_files.open_new(tmp), 'w') as f:
            f.write(self.host + '\n')
        os.rename(tmp, path)

    def hosts_sharing(self):
        """Names of the hosts whose probe is on this storage, sorted.

        A probe counts only if the host it names has the tag in its file
        name: a file planted or damaged by hand names nobody.
        """
        if not safe_files.is_real_dir(self.path):
            return []
        with os.scandir(self.path) as entries:
            probes = [(e.name, m.group('tag')) for e in entries
                      for m in [_HOST_PROBE_NAME.match(e.name)] if m]
        hosts = set()
        for name, tag in probes:
            host = _read_probe(os.path.join(self.path, name))
            if host and host_tag(host) == tag:
                hosts.add(host)
        return sorted(hosts)

    # -- space -------------------------------------------------------------

    def free_percent(self):
        """Free space of the storage filesystem, in percent of its size."""
        st = os.statvfs(self.instances_path)
        if not st.f_blocks:
            return 0.0
        return 100.0 * st.f_bavail / st.f_blocks

    def used_bytes(self):
        """Bytes kept disks occupy, from the last inventory.

        ``inventory()`` refreshes it (the periodic pass runs one); keeps,
        claims and reclaims of this host adjust it in between, so that
        reading it costs no file I/O once the first inventory ran.
        """
        if self._used_bytes is None:
            try:
                self.inventory()
            except OSError as e:
                # Counted again at the next image cache pass.
                LOG.warning('Cannot count the space kept disks use in %s: '
                            '%s', self.path, e)
                self._used_bytes = 0
        return self._used_bytes

    def _account(self, delta):
        if self._used_bytes is not None:
            self._used_bytes = max(0, self._used_bytes + delta)

    # -- keep --------------------------------------------------------------

    def keep(self, instance_uuid, snapshot_id, disk_format=None, source=None,
             snapshot_pending=False, domain_format=None):
        """Turn the instance directory into a kept disk and return its record.

        ``disk_format`` is the format the disk was kept as before (a disk
        given back or quarantined); by default the format Nova recorded for
        it (``recorded_format``, with ``domain_format``). On success the
        instance directory (or ``source``, a quarantined one) no longer
        exists. On KeepRefused nothing was changed. A disk already kept for
        this very shelve (an offload run again after an interruption) is
        adopted as it is, when the instance directory holds no root disk (it
        may have been made again, empty, since). ``snapshot_pending`` says
        that the disk still has to be uploaded into its snapshot image.
        """
        inst_dir = source or self.instance_dir(instance_uuid)
        if not source and not safe_files.is_regular_file(
                os.path.join(inst_dir, ROOT_DISK)):
            adopted = self.find(instance_uuid, snapshot_id)
            if adopted is not None:
                return adopted
        if not safe_files.is_real_dir(inst_dir):
            raise accel_exc.KeepRefused(
                'instance directory %s does not exist or is '
                'not a directory' % inst_dir)
        disk_format = disk_format or self.recorded_format(
            instance_uuid, inst_dir, domain_format)
        record = dataclasses.replace(
            self._describe(inst_dir, instance_uuid, snapshot_id, disk_format),
            snapshot_pending=snapshot_pending)
        self.ensure_directory()
        _write_record(inst_dir, record)
        faults.cut_point('keep.record_written')
        self._move_in(inst_dir, record, 'keep')
        self._account(record.allocated_bytes)
        return record

    def _move_in(self, directory, record, step):
        """Make ``directory`` the kept disk of ``record``, pruned.

        ``step`` (keep or release) names the cut points on the way.
        """
        staging = self._in_flight_path(STAGING, record.instance_uuid,
                                       record.snapshot_id)
        os.rename(directory, staging)
        faults.cut_point(step + '.staged')
        try:
            _prune(staging, record.files)
            faults.cut_point(step + '.pruned')
            self._publish(staging, record)
        except OSError:
            # Back where it came from, or left for the recovery pass, which
            # publishes it while its instance needs it. Never dropped here:
            # even a disk whose snapshot was uploaded is the only copy once
            # somebody deletes that snapshot.
            try:
                os.rename(staging, directory)
            except OSError:
                LOG.exception('Could not move %s back to %s; the next '
                              'recovery pass keeps it.', staging,
                              directory)
            raise

    def _publish(self, staging, record):
        os.chmod(staging, KEPT_DIR_MODE)
        # The kept disk becomes visible, whole, with this rename; rename()
        # never replaces a directory that has files in it.
        os.rename(staging, self.kept_dir(record.instance_uuid,
                                         record.snapshot_id))

    def check_keepable(self, instance_uuid, snapshot_id, domain_format=None):
        """Raise KeepRefused unless ``keep`` would accept the instance dir.

        The same checks as ``keep``, writing nothing: shelve skips the
        snapshot only for a disk that the offload will keep.
        """
        inst_dir = self.instance_dir(instance_uuid)
        if not safe_files.is_real_dir(inst_dir):
            raise accel_exc.KeepRefused(
                'instance directory %s does not exist or is '
                'not a directory' % inst_dir)
        if (os.path.lexists(self.path) and
                not safe_files.is_real_dir(self.path)):
            raise accel_exc.KeepRefused(
                '%s is not a directory (a link or a file '
                'stands there)' % self.path)
        self._describe(inst_dir, instance_uuid, snapshot_id,
                       self.recorded_format(instance_uuid, inst_dir,
                                            domain_format))

    def recorded_format(self, instance_uuid, directory=None,
                        domain_format=None):
        """The format Nova recorded for the instance's root disk.

        See ``recorded_format``; ``directory`` holds the disk now (by
        default the instance directory).
        """
        return recorded_format(directory or self.instance_dir(instance_uuid),
                               self._nova_disk_path(instance_uuid),
                               domain_format)

    def _nova_disk_path(self, instance_uuid):
        # disk.info names the disk by the path Nova gave it, in the instance
        # directory, wherever the directory is now.
        return os.path.join(self.instance_dir(instance_uuid), ROOT_DISK)

    def _describe(self, inst_dir, instance_uuid, snapshot_id, disk_format):
        if disk_format not in DISK_FORMATS:
            raise accel_exc.KeepRefused(
                'disk format %s is not a file format we keep '
                '(%s)' % (disk_format, ', '.join(DISK_FORMATS)))
        disk = os.path.join(inst_dir, ROOT_DISK)
        if not safe_files.is_regular_file(disk):
            raise accel_exc.KeepRefused(
                'root disk %s does not exist or is not a '
                'regular file' % disk)
        recorded = _read_disk_info(inst_dir).get(
            self._nova_disk_path(instance_uuid))
        if recorded not in (None, disk_format):
            raise accel_exc.KeepRefused(
                'disk.info records %s as %s, not %s'
                % (disk, recorded, disk_format))
        try:
            details = qemu_img_info(disk, disk_format)
        except processutils.ProcessExecutionError as e:
            raise accel_exc.KeepRefused(
                'qemu-img cannot read %s as %s: %s'
                % (disk, disk_format, e.stderr.strip()))
        backing = self._backing_name(disk, details)
        st = os.lstat(disk)
        files = tuple(f for f in KEPT_FILES
                      if safe_files.is_regular_file(os.path.join(inst_dir, f)))
        return KeptDiskRecord(
            instance_uuid=instance_uuid, snapshot_id=snapshot_id,
            disk_format=disk_format, backing_file=backing,
            disk_size=st.st_size, disk_mtime_ns=st.st_mtime_ns,
            files=files, kept_by=self.host,
            kept_at=timeutils.utcnow().isoformat(),
            allocated_bytes=_allocated_bytes(inst_dir, files))

    def _backing_name(self, disk, details):
        backing = details.get('full-backing-filename') or details.get(
            'backing-filename')
        if not backing:
            return None
        # Only a backing file in the shared image cache is reachable from
        # every host of the storage and protected by our image cache pass.
        if os.path.dirname(os.path.realpath(backing)) != os.path.realpath(
                self.base_dir):
            raise accel_exc.KeepRefused(
                'root disk %s is backed by %s, outside the '
                'image cache %s' % (disk, backing, self.base_dir))
        if not safe_files.is_regular_file(backing):
            raise accel_exc.KeepRefused(
                'backing file %s of %s is missing or not a '
                'regular file' % (backing, disk))
        return os.path.basename(backing)

    # -- reuse -------------------------------------------------------------

    def find(self, instance_uuid, snapshot_id):
        """Return the record of the kept disk of this shelve, or None."""
        where = self.kept_dir(instance_uuid, snapshot_id)
        if not safe_files.is_real_dir(where):
            return None
        record = read_record(where)
        if record is None or (record.instance_uuid,
                              record.snapshot_id) != (instance_uuid,
                                                      snapshot_id):
            return None
        return record

    def verify(self, record, instance_uuid, snapshot_id, where=None):
        """Raise VerificationFailed unless the kept disk is safe to reuse."""
        where = where or self.kept_dir(record.instance_uuid,
                                       record.snapshot_id)
        if (record.instance_uuid, record.snapshot_id) != (instance_uuid,
                                                          snapshot_id):
            raise accel_exc.VerificationFailed(
                '%s was kept for instance %s at snapshot %s, not for %s at '
                '%s' % (where, record.instance_uuid, record.snapshot_id,
                        instance_uuid, snapshot_id))
        if not safe_files.is_real_dir(where):
            raise accel_exc.VerificationFailed('%s is not a directory' % where)
        odd = [f for f in record.files
               if not safe_files.is_regular_file(os.path.join(where, f))]
        if odd:
            raise accel_exc.VerificationFailed(
                '%s lacks %s (or has links or special '
                'files there)' % (where, ', '.join(odd)))
        disk = os.path.join(where, ROOT_DISK)
        st = os.lstat(disk)
        if (st.st_size, st.st_mtime_ns) != (record.disk_size,
                                            record.disk_mtime_ns):
            raise accel_exc.VerificationFailed(
                '%s changed after it was kept' % disk)
        try:
            details = qemu_img_info(disk, record.disk_format)
        except processutils.ProcessExecutionError as e:
            raise accel_exc.VerificationFailed(
                'qemu-img cannot read %s as %s: %s' % (
                    disk, record.disk_format, e.stderr.strip()))
        backing = details.get('full-backing-filename') or details.get(
            'backing-filename')
        expected = (os.path.join(self.base_dir, record.backing_file)
                    if record.backing_file else None)
        if backing != expected and not (
                backing and expected and
                os.path.realpath(backing) == os.path.realpath(expected)):
            raise accel_exc.VerificationFailed(
                '%s is backed by %s, the record says %s'
                % (disk, backing, expected))
        if expected and not safe_files.is_regular_file(expected):
            raise accel_exc.VerificationFailed(
                'backing file %s of %s is missing or '
                'not a regular file' % (expected, disk))

    def claim(self, instance_uuid, snapshot_id):
        """Move the kept disk into the instance directory; True if we won.

        The rename is the claim: of several hosts racing for the same disk,
        one rename succeeds and the others find the source gone. It goes
        through a name of this host's own first: on a network filesystem a
        rename of a name that another client has just moved away can still
        report success (GlusterFS does, now and then), so two hosts renaming
        straight to the instance directory could both believe they won.
        Only one staging name can hold the disk; whoever finds theirs empty
        lost.
        """
        inst_dir = self.instance_dir(instance_uuid)
        source = self.kept_dir(instance_uuid, snapshot_id)
        staging = self._take(source, STAGING, instance_uuid, snapshot_id)
        if staging is None:
            return False
        faults.cut_point('claim.staged')
        try:
            # rename() replaces an empty directory but never a populated one,
            # so files left by an earlier attempt are never overwritten.
            os.rename(staging, inst_dir)
        except OSError as e:
            if safe_files.vanished(e, staging):
                return False
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                self._put_back(staging, source)
                raise accel_exc.VerificationFailed(
                    'instance directory %s already exists and is not empty'
                    % inst_dir)
            raise
        # Back to an ordinary instance directory: QEMU, which may run as
        # another user, must reach the disk.
        os.chmod(inst_dir, INSTANCE_DIR_MODE)
        record = read_record(inst_dir)
        self._account(-(record.allocated_bytes if record else 0))
        return True

    def _put_back(self, staging, kept_dir):
        """Return a disk a claim could not use to where it was kept.

        If even that fails, the staging directory stays: the recovery pass
        publishes it, as it does an interrupted keep.
        """
        try:
            os.rename(staging, kept_dir)
        except OSError:
            LOG.exception('Could not put the kept disk %s back as %s; the '
                          'next recovery pass does.', staging, kept_dir)

    def check_claimed(self, record, instance_uuid, snapshot_id):
        """Verify the disk again where it now is, in the instance dir.

        What was checked before the rename could have been swapped by
        another writer of the storage in between.
        """
        self.verify(record, instance_uuid, snapshot_id,
                    where=self.instance_dir(instance_uuid))

    def release(self, instance_uuid, snapshot_id):
        """Give a claimed disk back to the storage after a failed spawn."""
        inst_dir = self.instance_dir(instance_uuid)
        record = self.claimed_record(instance_uuid)
        if record is None or (record.instance_uuid, record.snapshot_id) != (
                instance_uuid, snapshot_id):
            raise accel_exc.VerificationFailed(
                '%s holds no claimed disk of snapshot '
                '%s' % (inst_dir, snapshot_id))
        if record.snapshot_pending:
            # The only copy of the data, whatever the failed guest wrote:
            # record the disk as it is now, or no claim would accept it and
            # no upload would take it.
            try:
                record = dataclasses.replace(
                    self._describe(inst_dir, instance_uuid, snapshot_id,
                                   record.disk_format),
                    snapshot_pending=True)
            except accel_exc.KeepRefused as e:
                raise accel_exc.VerificationFailed(str(e))
            _write_record(inst_dir, record)
        self.ensure_directory()
        self._move_in(inst_dir, record, 'release')
        self._account(record.allocated_bytes)

    def quarantine(self, instance_uuid, snapshot_id):
        """Move a claimed instance directory out of every code path's way.

        Returns the new path. Neither a claim nor a stock spawn finds it
        there; the recovery pass resolves it.
        """
        path = self._in_flight_path(QUARANTINE, instance_uuid, snapshot_id)
        os.rename(self.instance_dir(instance_uuid), path)
        return path

    def mark_unshelved(self, instance_uuid):
        """A guest started on the claimed disk: the spawn is over.

        The claim's record becomes UNSHELVED_MARK, which tells the recovery
        at start-up that an unshelve cut short after this point is to be
        finished, not undone (Nova may have deleted the snapshot since).
        The recovery removes the mark once Nova saved the instance.
        """
        inst_dir = self.instance_dir(instance_uuid)
        upload_lease.remove_all(inst_dir)
        os.rename(os.path.join(inst_dir, RECORD_NAME),
                  os.path.join(inst_dir, UNSHELVED_MARK))

    def unshelved(self, instance_uuid):
        """Whether an unshelve started a guest on this instance's claim."""
        return safe_files.is_regular_file(
            os.path.join(self.instance_dir(instance_uuid), UNSHELVED_MARK))

    def finish_claim(self, instance_uuid):
        """The instance runs on the disk now: it is no longer a kept disk."""
        inst_dir = self.instance_dir(instance_uuid)
        try:
            upload_lease.remove_all(inst_dir)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in (RECORD_NAME, UNSHELVED_MARK):
            try:
                os.unlink(os.path.join(inst_dir, name))
            except FileNotFoundError:
                pass

    def claimed_record(self, instance_uuid):
        """The record left in an instance directory by a claim, or None."""
        inst_dir = self.instance_dir(instance_uuid)
        if not safe_files.is_real_dir(inst_dir):
            return None
        return read_record(inst_dir)

    def claimed_dirs(self, marks=(RECORD_NAME, UNSHELVED_MARK)):
        """Uuids of the instance directories holding a claim's record.

        ``marks`` are the names looked for: by default the record and the
        mark of an unshelve whose guest started.

        A claim moves a kept disk into its instance directory with its
        record, removed once the instance runs on it. One that stays was
        left by a failed or interrupted unshelve, and may hold the only copy
        of the instance's data. One listing of instances_path and one lstat
        per instance directory: for the periodic pass, never per request.
        """
        found = []
        with os.scandir(self.instances_path) as entries:
            names = [e.name for e in entries
                     if _UUID_NAME.match(e.name) and
                     e.is_dir(follow_symlinks=False)]
        for name in sorted(names):
            directory = os.path.join(self.instances_path, name)
            if any(os.path.lexists(os.path.join(directory, mark))
                   for mark in marks):
                found.append(name)
        return found

    # -- snapshot upload ---------------------------------------------------

    def unchanged(self, record, where=None):
        """True while the disk in ``where`` is the one ``record`` describes.

        ``where`` is by default the kept disk's directory. A claim moves the
        disk away before any guest runs on it; a disk given back after a
        failed spawn whose guest wrote to it has another mtime.
        """
        where = where or self.kept_dir(record.instance_uuid,
                                       record.snapshot_id)
        try:
            st = os.lstat(os.path.join(where, ROOT_DISK))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(st.st_mode) and (
            st.st_size, st.st_mtime_ns) == (record.disk_size,
                                            record.disk_mtime_ns)

    def mark_uploaded(self, record):
        """Record that the snapshot holds the disk; False if it does not.

        Only while the kept disk is still the one uploaded, with the very
        record the upload started from: a disk given back after a failed
        spawn has a newer record, which must not be overwritten (its disk
        would never verify again) nor called uploaded.
        """
        where = self.kept_dir(record.instance_uuid, record.snapshot_id)
        if read_record(where) != record or not self.unchanged(record):
            return False        # claimed, reclaimed or given back meanwhile
        try:
            _write_record(where, dataclasses.replace(record,
                                                     snapshot_pending=False))
        except FileNotFoundError:
            return False
        return True

    # -- inventory and reclaim ---------------------------------------------

    def inventory(self):
        """(kept, damaged, in_flight) entries of the kept-disks directory.

        Reads each kept disk's record once and refreshes ``used_bytes``.
        Entries that are not ours (links, files, other names) are reported
        once and left alone.
        """
        kept, damaged, in_flight = [], [], []
        if not safe_files.is_real_dir(self.path):
            self._used_bytes = 0
            return kept, damaged, in_flight
        used = 0
        with os.scandir(self.path) as entries:
            names = sorted((e.name, e.is_dir(follow_symlinks=False))
                           for e in entries)
        for name, is_dir in names:
            path = os.path.join(self.path, name)
            if name.startswith((_CLOCK_PROBE % '', _HOST_PROBE % '')):
                continue
            kept_match = _KEPT_NAME.match(name)
            flight_match = _IN_FLIGHT_NAME.match(name)
            if not is_dir or not (kept_match or flight_match):
                self._report_once(
                    path, 'Ignoring %s in the kept-disks directory: it is '
                    'not a kept disk (a link, a file or an unknown name). '
                    'Nothing reads or deletes it; remove it by hand.', path)
                continue
            if flight_match:
                instance, snapshot = flight_match.group('kept').split('.')
                in_flight.append(InFlight(
                    path, flight_match.group('kind'),
                    flight_match.group('host'), instance, snapshot))
                continue
            instance = kept_match.group('instance')
            snapshot = kept_match.group('snapshot')
            try:
                record = _load_record(path)
            except FileNotFoundError:
                if safe_files.is_real_dir(path):
                    damaged.append(Damaged(path, instance, snapshot,
                                           'it has no %s' % RECORD_NAME))
                # Otherwise claimed or reclaimed while we listed: not ours
                # to report.
                continue
            except (ValueError, TypeError, KeyError, OSError) as e:
                damaged.append(Damaged(path, instance, snapshot,
                                       'its %s is unreadable: %s'
                                       % (RECORD_NAME, e)))
                continue
            if (record.instance_uuid, record.snapshot_id) != (instance,
                                                              snapshot):
                damaged.append(Damaged(
                    path, instance, snapshot,
                    'its record names instance %s at snapshot %s'
                    % (record.instance_uuid, record.snapshot_id)))
                continue
            used += record.allocated_bytes
            kept.append(record)
        self._used_bytes = used
        return kept, damaged, in_flight

    def list_kept(self):
        """Records of every kept disk of the storage, oldest name first."""
        return self.inventory()[0]

    def pending_disks(self):
        """[(record, directory)] of every disk still to be uploaded.

        Kept disks whose record says so, and quarantined disks whose claimed
        record says so (described as the disk is now).
        """
        kept, _damaged, in_flight = self.inventory()
        pending = [(r, self.kept_dir(r.instance_uuid, r.snapshot_id))
                   for r in kept if r.snapshot_pending]
        for item in in_flight:
            if item.kind == QUARANTINE:
                record = self.describe_quarantined(item)
                if record is not None and record.snapshot_pending:
                    pending.append((record, item.path))
        return pending

    def find_pending(self, instance_uuid, snapshot_id):
        """(record, directory) of that disk if it waits for its upload.

        The kept disk, or failing that a quarantined one.
        """
        record = self.find(instance_uuid, snapshot_id)
        if record is not None:
            if not record.snapshot_pending:
                return None
            return record, self.kept_dir(instance_uuid, snapshot_id)
        for item in self.quarantined(instance_uuid, snapshot_id):
            record = self.describe_quarantined(item)
            if record is not None and record.snapshot_pending:
                return record, item.path
        return None

    def quarantined(self, instance_uuid, snapshot_id):
        """The quarantines of that instance's disk kept at that snapshot."""
        suffix = '-' + kept_name(instance_uuid, snapshot_id)
        try:
            with os.scandir(self.path) as entries:
                names = [e.name for e in entries
                         if e.name.startswith('.' + QUARANTINE) and
                         e.name.endswith(suffix) and
                         e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in sorted(names):
            match = _IN_FLIGHT_NAME.match(name)
            if match:
                found.append(InFlight(os.path.join(self.path, name),
                                      QUARANTINE, match.group('host'),
                                      instance_uuid, snapshot_id))
        return found

    def describe_quarantined(self, item):
        """The quarantined disk as it is now, or None if unreadable.

        Format and pending flag are those of the record the claim left in
        it; size and mtime are the disk's now (the failed guest may have
        written to it).
        """
        claimed = read_record(item.path)
        if claimed is None or (claimed.instance_uuid, claimed.snapshot_id) != (
                item.instance_uuid, item.snapshot_id):
            return None
        try:
            now = self._describe(item.path, item.instance_uuid,
                                 item.snapshot_id, claimed.disk_format)
        except (accel_exc.KeepRefused, OSError,
                processutils.ProcessExecutionError):
            return None
        return dataclasses.replace(now, kept_by=claimed.kept_by,
                                   kept_at=claimed.kept_at,
                                   snapshot_pending=claimed.snapshot_pending)

    def report_damaged(self, damaged):
        self._report_once(
            damaged.path, 'Not reusing %s: %s. It stays until instance %s '
            'no longer needs it (deleted, or shelved again), then it is '
            'reclaimed.', damaged.path, damaged.problem,
            damaged.instance_uuid)

    def protect_backing_file(self, record, touch=None):
        """Keep the kept disk's backing file young for the image cache.

        Nova's image cache pass removes base files that no instance on the
        storage uses once they are old enough, and it cannot see kept disks.
        Touching the file, as Nova does for the images it uses, keeps it.
        ``touch`` is how to touch it (Nova's privileged helper on a compute
        host, whose base files may belong to the QEMU user). Raises OSError.
        """
        self._touch_base(record.backing_file, touch)

    def protect_backing_of(self, directory, instance_uuid, touch=None):
        """Protect the backing file of the disk in ``directory``.

        For directories whose record cannot be trusted or is not there (a
        damaged kept disk, a quarantine, a staging directory, a claim left
        in an instance directory): the disk is read in the format its record
        says, or else the one Nova recorded, and only a backing file in the
        image cache is touched. Returns its name, or None.
        """
        record = read_record(directory)
        if record is not None and record.instance_uuid == instance_uuid:
            disk_format = record.disk_format
        else:
            disk_format = self.recorded_format(instance_uuid, directory)
        details = qemu_img_info(os.path.join(directory, ROOT_DISK),
                                disk_format)
        backing = details.get('full-backing-filename') or details.get(
            'backing-filename')
        if not backing or os.path.dirname(
                os.path.realpath(backing)) != os.path.realpath(
                    self.base_dir):
            return None
        self._touch_base(os.path.basename(backing), touch)
        return os.path.basename(backing)

    def _touch_base(self, name, touch):
        if not name:
            return
        path = os.path.join(self.base_dir, name)
        if not safe_files.is_regular_file(path):
            return
        (touch or (lambda p: os.utime(p, None)))(path)

    def reclaim(self, record, reason):
        """Delete a kept disk; False if another host reclaimed it first."""
        return self.reclaim_path(
            self.kept_dir(record.instance_uuid, record.snapshot_id),
            record.instance_uuid, record.snapshot_id, reason,
            record.allocated_bytes)

    def _take(self, source, kind, instance_uuid, snapshot_id):
        """Rename the directory ``source`` to an in-flight name of ``kind``.

        Returns that name, or None if ``source`` is gone (or is no real
        directory). Of hosts racing for ``source``, exactly one renames it:
        the rename is what makes a host its owner.
        """
        if not safe_files.is_real_dir(source):
            return None
        in_flight = self._in_flight_path(kind, instance_uuid, snapshot_id)
        try:
            os.rename(source, in_flight)
        except OSError as e:
            if safe_files.vanished(e, source):
                return None
            raise
        return in_flight

    def reclaim_path(self, source, instance_uuid, snapshot_id, reason,
                     allocated_bytes=0):
        """Delete the kept-disk directory ``source`` (damaged ones too)."""
        trash = self._take(source, TRASH, instance_uuid, snapshot_id)
        if trash is None:
            return False
        if not os.path.lexists(trash):
            # The rename reported success for a source another client had
            # already moved (see ``claim``): that host won.
            return False
        self._account(-allocated_bytes)
        LOG.info('Reclaiming kept root disk %s of instance %s: %s',
                 source, instance_uuid, reason)
        faults.cut_point('reclaim.trashed')
        safe_files.remove_tree(trash)
        return True

    # -- interrupted work --------------------------------------------------

    def untouched_for(self, path, tree=False):
        """Seconds this host has seen ``path`` unchanged (see ``untouched``).

        With ``tree``, the entries right inside it count too.
        """
        sig = (untouched.tree_signature(path) if tree
               else untouched.signature(os.lstat(path)))
        return self._watch.age(path, sig)

    def abandoned(self, in_flight, at_start):
        """Work in flight that nobody will finish, of all ``in_flight``.

        Ours at start-up (this host runs nothing yet), and anyone's this
        host saw untouched for STALE_SECONDS. Quarantined disks are all
        returned: no work of a host is under way in them, and who may
        resolve one depends on its instance and on the host that made it.
        """
        if not in_flight:
            return []
        found = []
        for item in in_flight:
            try:
                age = self.untouched_for(item.path)
            except FileNotFoundError:
                continue
            except OSError as e:
                # Listed but not reachable: GlusterFS 10 leaves a directory
                # so (ESTALE) after two hosts raced to rename it. One such
                # entry must not stop the pass for every other one.
                self._report_once(
                    item.path, 'Cannot look at %s (%s); it is left alone. '
                    'On a GlusterFS release without the fix of its issue '
                    '2752 a directory can stay unreachable from every '
                    'client after a racing rename: see the install guide '
                    '("Shared storage").', item.path, e)
                continue
            mine = item.host_tag == self.host_tag
            if item.kind == QUARANTINE or (at_start and mine) or (
                    age > STALE_SECONDS):
                found.append(item)
        return found

    def finish_staging(self, item):
        """Publish an interrupted keep or release; False if it cannot be."""
        record = read_record(item.path)
        if record is None or (record.instance_uuid, record.snapshot_id) != (
                item.instance_uuid, item.snapshot_id):
            return False
        _prune(item.path, record.files)
        self._publish(item.path, record)
        self._account(record.allocated_bytes)
        return True


def recorded_format(directory, disk_path, domain_format=None):
    """The format Nova recorded for a root disk; never a probe.

    ``directory`` holds the disk and its ``disk.info``, whose entry names the
    disk by ``disk_path``, the path Nova gave it. ``domain_format`` is the
    driver type of the disk in the instance's libvirt domain, when the
    domain was read. Nova opens the disk as they say: a guest of a raw disk
    can write a qcow2 header into it, so probing the file would let the
    guest choose how the host reads it (and which backing file). Raises
    KeepRefused when neither says, they disagree, or the format is not a
    file format kept here.
    """
    recorded = _read_disk_info(directory).get(disk_path)
    if recorded and domain_format and recorded != domain_format:
        raise accel_exc.KeepRefused(
            'disk.info records %s as %s, its libvirt domain '
            'as %s' % (disk_path, recorded, domain_format))
    found = recorded or domain_format
    if not found:
        raise accel_exc.KeepRefused(
            'Nova recorded no format for %s (no entry in %s '
            'and no libvirt domain)' % (
                disk_path, os.path.join(directory, 'disk.info')))
    if found not in DISK_FORMATS:
        raise accel_exc.KeepRefused(
            '%s is a %s disk, not a file format we keep (%s)'
            % (disk_path, found, ', '.join(DISK_FORMATS)))
    return found


def _read_disk_info(directory):
    path = os.path.join(directory, 'disk.info')
    if not os.path.lexists(path):
        return {}
    if not safe_files.is_regular_file(path):
        raise accel_exc.KeepRefused('%s is not a regular file' % path)
    try:
        with open(path) as f:
            info = json.load(f)
    except ValueError:
        raise accel_exc.KeepRefused('%s is not valid JSON' % path)
    if not isinstance(info, dict):
        raise accel_exc.KeepRefused('%s is not a JSON object' % path)
    return info


def _load_record(directory):
    """The record in ``directory``; raises on anything but a good record."""
    # O_NONBLOCK: opening a planted FIFO must not wait for a writer.
    fd = os.open(os.path.join(directory, RECORD_NAME),
                 os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError('not a regular file')
        # A record is a few hundred bytes; do not read a planted giant.
        return KeptDiskRecord.from_json(f.read(64 * 1024))


def read_record(directory):
    try:
        return _load_record(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, TypeError, KeyError, OSError) as e:
        LOG.warning('Kept disk record %s is unreadable: %s',
                    os.path.join(directory, RECORD_NAME), e)
        return None


def _read_probe(path):
    """The host name in the probe ``path``, or None if it holds none."""
    try:
        # As for a record: no link followed, no FIFO waited on, no giant.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, 'rb') as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        try:
            return f.read(1024).decode('utf-8').strip() or None
        except (OSError, UnicodeDecodeError):
            return None


def sharing_problems(host, peers, sharing):
    """(hosts of the group missing, hosts outside it) of a storage.

    ``peers`` are the other hosts of ``host``'s storage groups, from the
    aggregates; ``sharing`` the hosts whose probes are on its storage.
    A peer missing there does not mount this storage at instances_path (or
    never ran the plugin's driver); a host there but not in the group shares
    the storage without the filter knowing.
    """
    sharing = set(sharing) - {host}
    return sorted(set(peers) - sharing), sorted(sharing - set(peers))


def _write_record(directory, record):
    path = os.path.join(directory, RECORD_NAME)
    tmp = path + '.tmp'
    if os.path.lexists(tmp):
        os.unlink(tmp)
    with os.fdopen(safe_files.open_new(tmp), 'w') as f:
        f.write(record.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _prune(directory, keep):
    """Delete what an unshelve does not need: swap, ephemerals, logs."""
    with os.scandir(directory) as entries:
        names = [e.name for e in entries]
    for name in names:
        if name in keep or name == RECORD_NAME:
            continue
        safe_files.remove_tree(os.path.join(directory, name))
