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

"""Upload kept disks into their queued snapshot images, after the offload.

With ``[shelve_accel] snapshot_upload = after_offload`` shelve skips the
snapshot of an instance whose root disk is kept. The Glance image the API
created stays queued, and the kept disk, marked ``snapshot_pending`` in its
record, is the instance's only copy until this module has uploaded it:

* right after the offload (or ``snapshot_upload_delay`` later) on the host
  that kept it, with the shelving request's credentials;
* otherwise by any host of the storage that finds a pending disk nobody
  uploads (its uploader restarted or died), with the ``[service_user]``
  credentials. A lease file in the kept-disk directory, touched while the
  upload runs, lets one host at a time upload a disk;
* a pending disk quarantined after a failed spawn is uploaded from the
  quarantine by any host the same way: it may stay there for long (its
  host may be down), and its snapshot must not wait for it.

While the upload is pending, the queued image is ``protected`` in Glance
(the driver protects it when the offload keeps the disk): nobody deletes the
only image of the data by mistake. The upload lifts the protection once the
image is active. If the image disappears all the same, the upload stops
for good and says so; ``nova-shelve-accel kept restore`` makes a new
snapshot from the kept disk.

The disk is converted as Nova's cold libvirt snapshot converts it, into the
snapshots directory (a scratch directory named for this host, removed
after the upload, at start-up and by the image cache pass when a crash
left it) but at the lowest CPU and I/O priority, and the image gets the
metadata Nova's snapshot gives.
The copy is used only if the disk was still kept, unchanged, after the
conversion: a claim moves the disk away before a guest runs on it. While
the copy streams to Glance the upload stops as soon as the disk is claimed
(Nova deletes the queued image after that unshelve). A failed upload is
retried with backoff; the disk stays kept and pending meanwhile.
"""

import contextlib
import functools
import os
import re
import threading
import time
import uuid

import futurist
from oslo_context import context as oslo_context
from oslo_log import log as logging
from oslo_utils import units

from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import context as nova_context
from nova import exception
from nova.image import glance
from nova import objects
from nova.virt.libvirt import driver as libvirt_driver

from nova_shelve_accel import compat
from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import faults
from nova_shelve_accel import notifications
from nova_shelve_accel import safe_files
from nova_shelve_accel import service_user
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import upload_lease
from nova_shelve_accel.virt.libvirt import qemu

CONF = accel_conf.CONF
LOG = logging.getLogger(__name__)

# Between two scans of the storage for pending uploads nobody runs.
SCAN_SECONDS = 60
# Waits before retrying a failed upload: doubled at each failure.
RETRY_FIRST_SECONDS = 60
RETRY_MAX_SECONDS = 3600
# The upload streams the converted disk in chunks of this size and checks,
# every CHECK_BYTES, that the disk is still kept and the lease still ours.
CHUNK_BYTES = 1 * units.Mi
CHECK_BYTES = 16 * units.Mi
# An upload starts once the offload that kept the disk is over (its last
# steps would otherwise share the storage with the conversion), waiting at
# most this long; it waits, and its conversion pauses, while this host
# starts guests (qemu.SPAWN_YIELD_SECONDS at most each time): an unshelve
# beside an upload must stay fast.
OFFLOAD_WAIT_SECONDS = 60
POLL_SECONDS = 0.2
# Scratch directories of conversions, in the snapshots directory:
# SCRATCH_PREFIX<host tag>-<token>. The uploader touches its own while the
# copy streams; one untouched for storage.STALE_SECONDS was left by a crash.
SCRATCH_PREFIX = '.shelve-accel-upload-'
_SCRATCH_NAME = re.compile(r'^%s(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$'
                           % re.escape(SCRATCH_PREFIX))
SCRATCH_TOUCH_SECONDS = 60
# Glance statuses of an image that will never take the data.
_GONE = ('deleted', 'pending_delete', 'killed')
# The task states of a shelve and its offload.
_SHELVING = (task_states.SHELVING, task_states.SHELVING_IMAGE_PENDING_UPLOAD,
             task_states.SHELVING_IMAGE_UPLOADING,
             task_states.SHELVING_OFFLOADING)


# What upload_pending did.
UPLOADED = 'uploaded'
NOT_PENDING = 'not pending'
NOT_NEEDED = 'not needed'
LEASED = 'another host uploads it'


class SnapshotUploader:
    """The background uploads of one compute host."""

    def __init__(self, store, spawns_in_progress=lambda: False,
                 find_instance=None):
        """The uploads of a host, or of a command, on ``store``.

        ``spawns_in_progress()`` says whether this host starts guests (the
        upload yields to them); ``find_instance(uuid)`` reads an instance
        with its system metadata, None if there is none (by default from
        this host's cell database).
        """
        self._store = store
        self._spawns_in_progress = spawns_in_progress
        self._find_instance = find_instance or instance_of
        self._image_api = glance.API()
        # Uploads wait for a worker of their own pool, not in Nova's: a
        # burst of fast shelves must not fill the long-task pool that
        # nova-compute builds instances in.
        self._executor = _new_executor(
            CONF.shelve_accel.max_concurrent_snapshot_uploads)
        self._lock = threading.Lock()
        # (instance, snapshot) of the uploads scheduled or running here.
        self._active = set()
        # (instance, snapshot) -> (monotonic time of the next try, failures)
        self._retries = {}
        # (instance, snapshot) whose image is gone: not tried again until
        # this service restarts.
        self._lost = set()
        # Scratch directories of the conversions running here.
        self._scratch = set()
        self._stopping = threading.Event()
        self._last_scan = None

    # -- scheduling --------------------------------------------------------

    def schedule(self, context, instance_uuid, snapshot_id, delay=0,
                 at_start=False):
        """Upload that kept disk in the background; False if already on."""
        key = (instance_uuid, snapshot_id)
        with self._lock:
            if key in self._active or self._stopping.is_set():
                return False
            self._active.add(key)
        self._executor.submit(_in_context(self._run), context, key,
                              time.monotonic() + delay, at_start)
        return True

    def scan_if_due(self):
        """Start the uploads that nobody runs, at most every SCAN_SECONDS."""
        now = time.monotonic()
        if self._last_scan is not None and (
                now - self._last_scan < SCAN_SECONDS):
            return
        self._last_scan = now
        self.scan(at_start=False)

    def scan(self, at_start):
        """Schedule every pending kept disk of the storage not uploading.

        Whether another host uploads it is decided by its lease, when the
        upload starts.
        """
        try:
            pending = [(r, where) for r, where in self._store.pending_disks()
                       if (r.instance_uuid, r.snapshot_id) not in self._lost]
        except OSError:
            LOG.exception('Cannot look for pending snapshot uploads in %s.',
                          self._store.path)
            return
        now = time.monotonic()
        for record, where in pending:
            key = (record.instance_uuid, record.snapshot_id)
            next_try = self._retries.get(key, (0, 0))[0]
            if next_try <= now and not self._in_upload_delay(where):
                self.schedule(service_context(), *key,
                              at_start=at_start)

    def _in_upload_delay(self, where):
        """Whether the disk in ``where`` was kept < snapshot_upload_delay ago.

        The host that kept it waits that long before uploading, so that an
        unshelve meanwhile makes the upload needless; the other hosts of
        the storage wait at least as long, counted from when they first see
        its record (its timestamps come from the keeping host's clock), or
        they would upload it at their next scan.
        """
        delay = CONF.shelve_accel.snapshot_upload_delay
        try:
            return bool(delay) and not self._untouched(
                os.path.join(where, storage.RECORD_NAME), delay)
        except OSError:
            return False        # the upload finds out what is wrong

    def _untouched(self, path, seconds, tree=False):
        """Whether this host has seen ``path`` unchanged for ``seconds``.

        A name gone meanwhile counts as untouched: there is nothing left
        to wait for.
        """
        try:
            return self._store.untouched_for(path, tree=tree) >= seconds
        except FileNotFoundError:
            return True

    def stop(self):
        """Stop every upload at its next check (the service is stopping)."""
        self._stopping.set()
        # The queued ones return at once.
        self._executor.shutdown(wait=False)

    # -- one upload --------------------------------------------------------

    def _run(self, context, key, not_before, at_start):
        instance_uuid, snapshot_id = key
        started = None
        try:
            # snapshot_upload_delay counts from the shelve, not from the
            # time a worker came free.
            delay = not_before - time.monotonic()
            if delay > 0 and self._stopping.wait(delay):
                return
            if self._stopping.is_set():
                return
            started = time.monotonic()
            self.upload_pending(context, instance_uuid, snapshot_id,
                                at_start)
            self._retries.pop(key, None)
        except accel_exc.SnapshotLost as e:
            self._retries.pop(key, None)
            self._lost.add(key)
            LOG.error('Cannot upload the kept root disk into snapshot %s: '
                      '%s. The disk stays kept, the only copy of the '
                      'instance, and is not uploaded again. Make a new '
                      'snapshot from it with "nova-shelve-accel kept restore '
                      '%s" on a host of its storage group.', snapshot_id, e,
                      instance_uuid, instance_uuid=instance_uuid)
            notifications.notify(
                'shelve_accel.snapshot_upload.lost', instance_uuid,
                context=context, project_id=self._project_of(instance_uuid),
                snapshot_id=snapshot_id, reason=str(e))
        except accel_exc.UploadAbandoned as e:
            self._retries.pop(key, None)
            LOG.info('Stopped uploading the kept root disk into snapshot %s: '
                     '%s. The image stays queued.', snapshot_id, e,
                     instance_uuid=instance_uuid)
            notifications.notify(
                'shelve_accel.snapshot_upload.abandoned', instance_uuid,
                context=context, project_id=self._project_of(instance_uuid),
                snapshot_id=snapshot_id, reason=str(e))
        except Exception as e:
            failures = self._retries.get(key, (0, 0))[1] + 1
            wait = min(RETRY_FIRST_SECONDS * 2 ** (failures - 1),
                       RETRY_MAX_SECONDS)
            self._retries[key] = (time.monotonic() + wait, failures)
            LOG.error('Uploading the kept root disk into snapshot %s failed '
                      '(attempt %d, after %.1f s): %s. The disk stays kept, '
                      'the only copy of the instance, and the upload is '
                      'tried again in about %d s.', snapshot_id, failures,
                      time.monotonic() - (started or time.monotonic()), e,
                      wait, instance_uuid=instance_uuid,
                      exc_info=not isinstance(e, accel_exc.UploadFailed))
            notifications.notify(
                'shelve_accel.snapshot_upload.error', instance_uuid,
                context=context, project_id=self._project_of(instance_uuid),
                snapshot_id=snapshot_id, reason=str(e),
                attempt=failures, retry_in_s=wait,
                duration_s=round(time.monotonic() - (
                    started or time.monotonic()), 3))
        finally:
            with self._lock:
                self._active.discard(key)

    def _project_of(self, instance_uuid):
        """The instance's project, for a notification; None if unknown."""
        try:
            instance = self._find_instance(instance_uuid)
        except Exception:
            return None     # the database is what failed, maybe
        return instance.project_id if instance else None

    def upload_pending(self, context, instance_uuid, snapshot_id,
                       at_start=False):
        """Upload that pending disk now, in this thread; say what happened.

        UPLOADED, or NOT_PENDING (claimed, reclaimed or uploaded
        meanwhile), NOT_NEEDED (its instance is gone or shelved again) or
        LEASED (another host uploads it). Raises what the upload raises.
        """
        found = self._store.find_pending(instance_uuid, snapshot_id)
        if found is None:
            return NOT_PENDING
        record, where = found
        instance = self._offloaded_instance(instance_uuid)
        if instance is None or instance.system_metadata.get(
                'shelved_image_id') != snapshot_id:
            return NOT_NEEDED   # the recovery reclaims it
        token = self._store.leases.take(where, at_start=at_start)
        if token is None:
            LOG.debug('Another host uploads snapshot %s.', snapshot_id,
                      instance=instance)
            return LEASED
        heartbeat = _Heartbeat(self._store, where, token)
        try:
            heartbeat.start()
            self._upload_leased(context, instance, record, where, heartbeat)
        finally:
            heartbeat.stop()
            self._store.leases.drop(where, token)
        return UPLOADED

    def _upload_leased(self, context, instance, record, where, heartbeat):
        snapshot_id = record.snapshot_id
        image = self._queued_image(context, snapshot_id)
        if image.get('status') == 'active':
            # Uploaded before a restart cut the bookkeeping short.
            LOG.info('Snapshot %s is already active; recording that the kept '
                     'disk is uploaded.', snapshot_id, instance=instance)
            self._finish(context, instance, record, where)
            return
        if image.get('status') != 'queued':
            raise accel_exc.UploadFailed(
                'snapshot %s is %s, not queued'
                % (snapshot_id, image.get('status')))
        faults.cut_point('upload.started')
        disk = os.path.join(where, storage.ROOT_DISK)

        def check():
            self._yield_to_spawns()
            if self._stopping.is_set():
                raise accel_exc.UploadFailed('the compute service is stopping')
            if not self._store.unchanged(record, where):
                raise accel_exc.UploadAbandoned(
                    'the kept disk was claimed by an '
                    'unshelve or changed')
            heartbeat.check()

        check()     # before converting a disk that is not ours any more
        self.upload(context, instance, image, disk, record.disk_format,
                    check, busy=self._spawns_in_progress)
        faults.cut_point('upload.finished')
        image = self._queued_image(context, snapshot_id)
        if image.get('status') != 'active':
            raise accel_exc.UploadFailed(
                'Glance took the data but snapshot %s is %s'
                % (snapshot_id, image.get('status')))
        faults.cut_point('upload.activated')
        self._finish(context, instance, record, where)

    def _queued_image(self, context, snapshot_id):
        """The snapshot image; SnapshotLost if it will never take data."""
        try:
            image = self._image_api.get(context, snapshot_id)
        except exception.ImageNotFound:
            raise accel_exc.SnapshotLost(
                'snapshot image %s is gone from Glance'
                % snapshot_id)
        if image.get('status') in _GONE:
            raise accel_exc.SnapshotLost(
                'snapshot image %s is %s in Glance'
                % (snapshot_id, image.get('status')))
        return image

    def _offloaded_instance(self, instance_uuid):
        """The instance, read once the shelve that kept its disk is over."""
        deadline = time.monotonic() + OFFLOAD_WAIT_SECONDS
        while True:
            instance = self._find_instance(instance_uuid)
            if (instance is None or instance.task_state not in _SHELVING or
                    time.monotonic() >= deadline or
                    self._stopping.wait(POLL_SECONDS)):
                return instance

    def _yield_to_spawns(self):
        """Wait while this host starts guests, at most SPAWN_YIELD_SECONDS."""
        deadline = time.monotonic() + qemu.SPAWN_YIELD_SECONDS
        while (self._spawns_in_progress() and
               time.monotonic() < deadline):
            if self._stopping.wait(POLL_SECONDS):
                return

    def _finish(self, context, instance, record, where):
        # Active now: the image is the user's again, to keep or delete.
        protect_snapshot(self._image_api, context, record.snapshot_id,
                         False, instance)
        kept = where == self._store.kept_dir(record.instance_uuid,
                                             record.snapshot_id)
        # A quarantined disk keeps its record: its host keeps it again as
        # the instance's pending mark then says.
        if kept and not self._store.mark_uploaded(record):
            return          # claimed meanwhile: the unshelve clears it
        faults.cut_point('upload.record_updated')
        # Read again: the copy read when the upload began may predate the
        # offload's last save (an upload starts during the offload), and
        # saving it would write its whole system metadata back, dropping
        # the kept-disk marker the offload saved.
        instance = self._find_instance(instance.uuid)
        if instance is not None:
            clear_pending_mark(instance, record.snapshot_id)

    def upload(self, context, instance, image, disk, disk_format, check,
               busy=None):
        """Convert ``disk`` and upload it into the queued ``image``.

        As Nova's cold libvirt snapshot does: the same conversion, the same
        image format and metadata. ``check`` runs after the conversion and
        while the data streams; it raises to stop the upload. The
        conversion pauses while ``busy()`` says so.
        """
        image_format = CONF.libvirt.snapshot_image_format or disk_format
        metadata = snapshot_metadata(instance, image_format, image['name'])
        started = time.monotonic()
        LOG.info('Uploading the root disk %s (%.1f MiB) into snapshot %s '
                 'as %s.', disk, os.path.getsize(disk) / units.Mi,
                 image['id'], image_format, instance=instance)
        notifications.notify(
            'shelve_accel.snapshot_upload.start', instance.uuid,
            context=context, project_id=instance.project_id,
            snapshot_id=image['id'], path=disk,
            disk_file_bytes=os.path.getsize(disk), image_format=image_format)
        with self._scratch_directory() as scratch:
            copy = os.path.join(scratch, image['id'])
            qemu.convert_for_snapshot(disk, disk_format, copy,
                                      image_format, busy=busy)
            faults.cut_point('upload.converted')
            # The copy is the disk as kept only if nothing claimed the disk
            # while qemu-img read it.
            check()
            size = os.path.getsize(copy)
            touch = _Toucher(scratch)
            with open(copy, 'rb') as data:
                with compute_utils.disk_ops_semaphore:
                    self._image_api.update(
                        context, image['id'], metadata,
                        _CheckedReader(data, lambda: (touch(), check()),
                                       CONF.shelve_accel
                                       .snapshot_upload_max_mib_per_second))
        duration = time.monotonic() - started
        LOG.info('Uploaded the root disk into snapshot %s: %.1f MiB in '
                 '%.1f s.', image['id'], size / units.Mi, duration,
                 instance=instance)
        notifications.notify(
            'shelve_accel.snapshot_upload.end', instance.uuid,
            context=context, project_id=instance.project_id,
            snapshot_id=image['id'], image_bytes=size,
            duration_s=round(duration, 3))

    @contextlib.contextmanager
    def _scratch_directory(self):
        """A directory of this host's in the snapshots directory."""
        directory = CONF.libvirt.snapshots_directory
        os.makedirs(directory, exist_ok=True)
        scratch = os.path.join(directory, '%s%s-%s' % (
            SCRATCH_PREFIX, self._store.host_tag, uuid.uuid4().hex[:8]))
        safe_files.create_new(scratch, lambda p: os.mkdir(p, 0o700))
        self._scratch.add(scratch)
        try:
            yield scratch
        finally:
            safe_files.remove_tree(scratch)
            self._scratch.discard(scratch)

    def clean_scratch(self, at_start):
        """Remove the copies that crashed conversions left behind.

        This host's own at start-up or when no upload here uses them; other
        hosts' once this host saw them untouched for storage.STALE_SECONDS
        (their conversion writes into them while it runs). A copy is never
        the only one: the kept disk it came from is still there.
        """
        directory = CONF.libvirt.snapshots_directory
        try:
            with os.scandir(directory) as entries:
                found = [(e.path, _SCRATCH_NAME.match(e.name))
                         for e in entries if e.is_dir(follow_symlinks=False)]
            found = [(path, match.group('host')) for path, match in found
                     if match]
        except FileNotFoundError:
            return          # no snapshot was ever taken here
        except OSError as e:
            LOG.warning('Cannot look for conversions left behind in %s: %s',
                        directory, e)
            return
        for path, host in found:
            if host == self._store.host_tag:
                if not at_start and path in self._scratch:
                    continue
            else:
                try:
                    if not self._untouched(path, storage.STALE_SECONDS,
                                           tree=True):
                        continue
                except OSError as e:
                    LOG.warning('Cannot tell whether %s is in use: %s',
                                path, e)
                    continue
            LOG.info('Removing %s, left by a snapshot upload that was '
                     'interrupted.', path)
            try:
                safe_files.remove_tree(path)
            except OSError as e:
                LOG.warning('Cannot remove %s: %s', path, e)


def protect_snapshot(image_api, context, snapshot_id, protected,
                     instance=None):
    """Set the snapshot image's ``protected``; False if Glance refused.

    Protected while the kept disk is its only data, so that nobody deletes
    the image by mistake (Glance refuses to delete a protected image).
    """
    try:
        image_api.update(context, snapshot_id, {'protected': protected},
                         purge_props=False)
    except exception.ImageNotFound:
        return True         # nothing left to protect
    except Exception as e:
        LOG.warning('Could not set protected=%s on snapshot %s: %s',
                    protected, snapshot_id, e, instance=instance)
        return False
    return True


def clear_pending_mark(instance, snapshot_id):
    """Let the scheduler fall back to the snapshot again; False if not now.

    Saved only while the instance is offloaded and idle: an unshelve in
    progress removes the mark itself, and the recovery pass clears a mark
    left behind.
    """
    if instance.system_metadata.get(shelved.PENDING_UPLOAD_KEY) != (
            snapshot_id):
        return True
    if instance.task_state is not None:
        # Read while an operation was under way: its system metadata may
        # be older than what that operation saves, and the save below
        # writes all of it.
        return False
    del instance.system_metadata[shelved.PENDING_UPLOAD_KEY]
    try:
        instance.save(expected_task_state=[None])
    except (exception.UnexpectedTaskStateError, exception.InstanceNotFound):
        return False
    return True


def snapshot_metadata(instance, image_format, name):
    """The image metadata Nova's libvirt snapshot gives a snapshot.

    From the very method Nova's snapshot uses; it reads nothing of the
    driver object, so that the commands, which have none, give the same.
    """
    return libvirt_driver.LibvirtDriver._create_snapshot_metadata(
        None, instance.image_meta, instance, image_format, name)


def instance_of(instance_uuid):
    """The instance with its system metadata, from this cell; or None."""
    try:
        return objects.Instance.get_by_uuid(
            nova_context.get_admin_context(), instance_uuid,
            expected_attrs=['system_metadata'])
    except exception.InstanceNotFound:
        return None


def check_service_user():
    """Log, at start-up, what keeps resumed uploads from reaching Glance.

    Without it the first sign of wrong ``[service_user]`` credentials is an
    upload failing, maybe hours later, while the kept disk is the only copy.
    """
    unset, why = service_user.problem()
    if why is None:
        return
    if unset:
        LOG.warning('[shelve_accel] snapshot_upload = after_offload, but %s: '
                    'an upload resumed after a restart of nova-compute, or '
                    'by another host of the storage, sends no token, which '
                    'only a Glance without Keystone accepts. Set the '
                    '[service_user] credentials of the nova service user.',
                    why)
    else:
        LOG.error('[shelve_accel] snapshot_upload = after_offload, but %s. '
                  'Uploads of kept disks resumed after a restart or by '
                  'another host fail until the credentials are corrected, '
                  'and each kept disk stays the only copy of its instance '
                  'meanwhile. Correct [service_user] in nova.conf and '
                  'restart nova-compute; "nova-shelve-accel-status upgrade '
                  'check" tells when they work.', why)


def service_context():
    """Credentials for Glance work that outlived the request behind it."""
    context = nova_context.get_admin_context()
    auth = service_user.credentials()
    if auth is not None:
        context.user_auth_plugin = auth
    return context


def _new_executor(workers):
    """A pool of ``workers`` threads, of the kind Nova runs with.

    Nova runs either on eventlet or on native threads; its own pools follow
    the mode, and so does this one.
    """
    if compat.threading_mode():
        return futurist.ThreadPoolExecutor(workers)
    return futurist.GreenThreadPoolExecutor(workers)


def _in_context(func):
    """func, run with the caller's request context current (for logging)."""
    context = oslo_context.get_current()

    @functools.wraps(func)
    def run(*args, **kwargs):
        if context is not None:
            context.update_store()
        return func(*args, **kwargs)
    return run


class _Toucher:
    """Touches a directory at most every SCRATCH_TOUCH_SECONDS."""

    def __init__(self, path):
        self._path = path
        self._touched = time.monotonic()

    def __call__(self):
        if time.monotonic() - self._touched < SCRATCH_TOUCH_SECONDS:
            return
        self._touched = time.monotonic()
        try:
            os.utime(self._path, None, follow_symlinks=False)
        except OSError:
            pass


class _Heartbeat:
    """Keeps the upload lease young from a thread of its own.

    The conversion can take minutes, longer than a lease lives untouched.
    """

    def __init__(self, store, directory, token):
        self._store = store
        self._directory = directory
        self._token = token
        self._done = threading.Event()
        self._lost = None
        self._thread = None

    def start(self):
        # A thread of its own: in a pool it could queue behind the very
        # uploads that wait for this one to finish.
        self._thread = threading.Thread(target=_in_context(self._beat),
                                        daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._done.wait(upload_lease.UPLOAD_LEASE_SECONDS / 4):
            try:
                self._store.leases.renew(self._directory, self._token)
            except accel_exc.LeaseLost as e:
                self._lost = e
                return

    def check(self):
        """Raise UploadAbandoned unless the lease is still ours.

        Read from the storage, not from the last beat: a holder that hung
        longer than a lease lives finds out before it streams on.
        """
        if self._lost is None:
            try:
                self._store.leases.check(self._directory, self._token)
            except accel_exc.LeaseLost as e:
                self._lost = e
        if self._lost is not None:
            raise accel_exc.UploadAbandoned(str(self._lost))

    def stop(self):
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class _CheckedReader:
    """A file for glanceclient to read, checking as it goes."""

    def __init__(self, data, check, max_mbps):
        self._data = data
        self._check = check
        self._max_bytes_per_second = max_mbps * units.Mi
        self._read = 0
        self._next_check = 0
        self._started = time.monotonic()

    def read(self, size=-1):
        if size is None or size < 0:
            return b''.join(iter(self))
        size = min(size, CHUNK_BYTES)
        if self._read >= self._next_check:
            self._check()
            self._next_check = self._read + CHECK_BYTES
        chunk = self._data.read(size)
        if not chunk:
            # Glance activates the image when the data ends: check last.
            self._check()
            return chunk
        self._read += len(chunk)
        self._throttle()
        return chunk

    def _throttle(self):
        if not self._max_bytes_per_second:
            return
        ahead = self._read / self._max_bytes_per_second - (
            time.monotonic() - self._started)
        if ahead > 0:
            time.sleep(ahead)

    def __iter__(self):
        while True:
            chunk = self.read(CHUNK_BYTES)
            if not chunk:
                return
            yield chunk
