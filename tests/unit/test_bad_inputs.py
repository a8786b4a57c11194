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

"""Hostile and broken files on the shared storage, on real files.

Anyone who can write the storage (one compromised host of the group, a
careless operator) can plant anything in it. Each case ends with the kept
disk not reused (the unshelve downloads the snapshot, as stock Nova does) or
with a clear error naming the path, never with a file outside the storage
touched, and never with another instance's data lost.
"""

import dataclasses
import errno
import logging
import os
import stat
import subprocess
from unittest import mock

import fixtures
import testtools

from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import safe_files
from nova_shelve_accel import storage
from nova_shelve_accel import upload_lease
from tests.unit import disks

INSTANCE = '6f0f9c2a-0d0c-4c55-9a0e-0a4c7d3b2e11'
OTHER = '0b7c5d43-8d3e-4f8b-a1f7-3c5b7e9d2a10'
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'


class BadInputTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(root, 'instances')
        os.makedirs(self.instances_path)
        # Files of the host outside the storage, which nothing may touch.
        self.outside = os.path.join(root, 'host-files')
        os.makedirs(self.outside)
        disks.add_files(self.outside, 'secret', 'disk')
        self.outside_before = disks.tree(self.outside)
        self.store = disks.make_store(self.instances_path)
        self.inst_dir = os.path.join(self.instances_path, INSTANCE)
        self.kept_dir = self.store.kept_dir(INSTANCE, SNAPSHOT)
        self.log = self.useFixture(fixtures.FakeLogger(
            name='nova_shelve_accel', level=logging.INFO))

    def tearDown(self):
        self.assertEqual(self.outside_before, disks.tree(self.outside),
                         'a file outside the storage was touched')
        super().tearDown()

    def keep(self, instance=INSTANCE):
        disks.make_qcow2_instance(self.instances_path, instance)
        return self.store.keep(instance, SNAPSHOT, 'qcow2')

    def assert_not_reusable(self, record, message):
        error = self.assertRaises(accel_exc.VerificationFailed,
                                  self.store.verify, record, INSTANCE,
                                  SNAPSHOT)
        self.assertIn(message, str(error))
        return error

    def write_record_text(self, directory, text):
        with open(os.path.join(directory, storage.RECORD_NAME), 'w') as f:
            f.write(text)


class TestHostileRecords(BadInputTestCase):

    def test_truncated_record(self):
        record = self.keep()
        self.write_record_text(self.kept_dir, record.to_json()[:40])
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        [damaged] = self.store.inventory()[1]
        self.assertIn('unreadable', damaged.problem)

    def test_record_naming_another_instance(self):
        record = self.keep()
        self.write_record_text(self.kept_dir, dataclasses.replace(
            record, instance_uuid=OTHER).to_json())
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        self.assertIsNone(self.store.find(OTHER, SNAPSHOT))
        self.assertFalse(self.store.claim(OTHER, SNAPSHOT))

    def test_record_with_a_backing_file_outside_the_image_cache(self):
        record = self.keep()
        for forged in ('../../host-files/secret', '/etc/passwd', '..', ''):
            self.write_record_text(self.kept_dir, dataclasses.replace(
                record, backing_file=forged).to_json())
            self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT), forged)

    def test_record_listing_files_beyond_the_kept_ones(self):
        record = self.keep()
        self.write_record_text(self.kept_dir, dataclasses.replace(
            record, files=('disk', '../../host-files/secret')).to_json())
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))

    def test_record_with_negative_sizes(self):
        record = self.keep()
        self.write_record_text(self.kept_dir, dataclasses.replace(
            record, allocated_bytes=-1).to_json())
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))

    def test_a_giant_record_is_not_read_whole(self):
        self.keep()
        with open(os.path.join(self.kept_dir, storage.RECORD_NAME),
                  'w') as f:
            f.write('{' + ' ' * (1024 * 1024) + '}')
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))

    def test_a_record_that_is_a_link(self):
        self.keep()
        record_file = os.path.join(self.kept_dir, storage.RECORD_NAME)
        os.unlink(record_file)
        os.symlink(os.path.join(self.outside, 'secret'), record_file)
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        [damaged] = self.store.inventory()[1]
        self.assertIn('unreadable', damaged.problem)


class TestHostileDisks(BadInputTestCase):

    def test_truncated_qcow2(self):
        record = self.keep()
        disk = os.path.join(self.kept_dir, 'disk')
        os.truncate(disk, 100)
        forged = dataclasses.replace(
            record, disk_size=100, disk_mtime_ns=os.lstat(disk).st_mtime_ns)
        self.assert_not_reusable(forged, 'qemu-img cannot read')

    def test_raw_disk_with_a_qcow2_header_stays_raw(self):
        # The guest of a raw disk wrote a qcow2 header pointing at a host
        # file: read as raw, as recorded, it has no backing file at all.
        outside_image = os.path.join(self.outside, 'disk')
        disks.make_raw_instance(self.instances_path, INSTANCE)
        hostile = os.path.join(self.outside, '..', 'hostile.qcow2')
        disks.qemu_img('create', '-q', '-f', 'qcow2', '-b', outside_image,
                       '-F', 'raw', hostile, str(disks.DISK_SIZE))
        disk = os.path.join(self.inst_dir, 'disk')
        with open(hostile, 'rb') as src, open(disk, 'r+b') as dst:
            dst.write(src.read(4096))
        os.unlink(hostile)
        record = self.store.keep(INSTANCE, SNAPSHOT, 'raw')
        self.assertIsNone(record.backing_file)
        self.store.verify(record, INSTANCE, SNAPSHOT)

    def test_a_qcow2_disk_whose_backing_file_left_the_image_cache(self):
        record = self.keep()
        disk = os.path.join(self.kept_dir, 'disk')
        disks.qemu_img('rebase', '-u', '-f', 'qcow2', '-b',
                       os.path.join(self.outside, 'disk'), '-F', 'raw', disk)
        forged = dataclasses.replace(
            record, disk_size=os.lstat(disk).st_size,
            disk_mtime_ns=os.lstat(disk).st_mtime_ns)
        self.assert_not_reusable(forged, 'the record says')

    def test_a_disk_that_is_a_link(self):
        record = self.keep()
        disk = os.path.join(self.kept_dir, 'disk')
        os.unlink(disk)
        os.symlink(os.path.join(self.outside, 'disk'), disk)
        self.assert_not_reusable(record, 'lacks disk')

    def test_a_config_drive_that_is_a_fifo(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  extra_files=('disk.config',))
        record = self.store.keep(INSTANCE, SNAPSHOT, 'qcow2')
        config = os.path.join(self.kept_dir, 'disk.config')
        os.unlink(config)
        os.mkfifo(config)
        self.assert_not_reusable(record, 'lacks disk.config')

    def test_a_backing_file_that_is_a_link(self):
        record = self.keep()
        base = os.path.join(self.store.base_dir, record.backing_file)
        os.rename(base, base + '.real')
        os.symlink(base + '.real', base)
        self.assert_not_reusable(record, 'not a regular file')

    def test_an_instance_disk_that_is_a_link_is_not_kept(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        disk = os.path.join(self.inst_dir, 'disk')
        os.unlink(disk)
        os.symlink(os.path.join(self.outside, 'disk'), disk)
        error = self.assertRaises(accel_exc.KeepRefused, self.store.keep,
                                  INSTANCE, SNAPSHOT, 'qcow2')
        self.assertIn('not a regular file', str(error))


class TestHostileEntries(BadInputTestCase):
    """Links, files and odd names in the kept-disks directory."""

    def plant_link(self, name, target):
        os.makedirs(self.store.path, exist_ok=True)
        path = os.path.join(self.store.path, name)
        os.symlink(target, path)
        return path

    def test_a_kept_disk_that_is_a_link_to_a_host_directory(self):
        # Claimed and then released after a failed spawn, it would have
        # had its "swap and logs" pruned: the host's files.
        link = self.plant_link(storage.kept_name(INSTANCE, SNAPSHOT),
                               self.outside)
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        self.assertFalse(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertEqual(([], [], []), self.store.inventory())
        self.assertTrue(os.path.islink(link))
        self.assertIn('Ignoring %s' % link, self.log.output)

    def test_release_of_an_instance_dir_that_is_a_link(self):
        os.symlink(self.outside, self.inst_dir)
        self.assertRaises(accel_exc.VerificationFailed, self.store.release,
                          INSTANCE, SNAPSHOT)

    def test_reclaim_of_a_link_deletes_nothing(self):
        link = self.plant_link(storage.kept_name(INSTANCE, SNAPSHOT),
                               self.outside)
        self.assertFalse(self.store.reclaim_path(link, INSTANCE, SNAPSHOT,
                                                 'test'))
        self.assertTrue(os.path.islink(link))

    def test_trash_that_is_a_link_is_ignored(self):
        link = self.plant_link('.reclaiming-%s-1234abcd-%s.%s' % (
            self.store.host_tag, INSTANCE, SNAPSHOT), self.outside)
        _kept, _damaged, in_flight = self.store.inventory()
        self.assertEqual([], in_flight)
        # Removing it removes the link, not what it points to (checked in
        # tearDown).
        self.assertTrue(safe_files.remove_tree(link))
        self.assertFalse(os.path.lexists(link))

    def test_links_inside_a_pruned_directory_are_not_followed(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        os.symlink(self.outside, os.path.join(self.inst_dir, 'console'))
        os.makedirs(os.path.join(self.inst_dir, 'vtpm'))
        os.symlink(self.outside, os.path.join(self.inst_dir, 'vtpm', 'x'))
        self.store.keep(INSTANCE, SNAPSHOT, 'qcow2')
        self.assertEqual(['disk', 'disk.info', storage.RECORD_NAME],
                         sorted(os.listdir(self.kept_dir)))

    def test_foreign_files_and_directories_are_reported_once(self):
        self.keep()
        os.makedirs(os.path.join(self.store.path, 'lost+found'))
        disks.add_files(self.store.path, 'notes.txt',
                        storage.kept_name(OTHER, SNAPSHOT))
        for _ in range(3):
            kept, damaged, in_flight = self.store.inventory()
            self.assertEqual([INSTANCE], [r.instance_uuid for r in kept])
            self.assertEqual(([], []), (damaged, in_flight))
        for name in ('lost+found', 'notes.txt',
                     storage.kept_name(OTHER, SNAPSHOT)):
            path = os.path.join(self.store.path, name)
            self.assertTrue(os.path.lexists(path))
            self.assertEqual(1, self.log.output.count('Ignoring %s ' % path))

    def test_a_kept_directory_without_record(self):
        os.makedirs(self.kept_dir)
        [damaged] = self.store.inventory()[1]
        self.assertIn('it has no kept.json', damaged.problem)

    def test_kept_disks_directory_that_is_a_link(self):
        os.symlink(self.outside, self.store.path)
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        error = self.assertRaises(accel_exc.KeepRefused, self.store.keep,
                                  INSTANCE, SNAPSHOT, 'qcow2')
        self.assertIn(self.store.path, str(error))
        self.assertEqual(([], [], []), self.store.inventory())

    def test_a_directory_claimed_while_listed_is_not_reported(self):
        self.keep()
        real_load = storage._load_record

        def claimed_meanwhile(directory):
            self.store.claim(INSTANCE, SNAPSHOT)
            return real_load(directory)

        with mock.patch.object(storage, '_load_record', claimed_meanwhile):
            self.assertEqual(([], [], []), self.store.inventory())
        self.assertNotIn('by hand', self.log.output)
        self.assertNotIn('Not reusing', self.log.output)


class TestBrokenStorage(BadInputTestCase):

    def test_storage_not_mounted(self):
        # An empty mount point: nothing kept, nothing to claim, no error.
        self.assertEqual(([], [], []), self.store.inventory())
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        self.assertFalse(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertEqual(0, self.store.used_bytes())
        self.assertRaises(accel_exc.KeepRefused, self.store.keep, INSTANCE,
                          SNAPSHOT, 'qcow2')

    def fail_rename_into_kept(self, errno_value):
        real_rename = os.rename

        def rename(src, dst):
            if os.path.basename(dst).startswith(INSTANCE + '.'):
                raise OSError(errno_value, os.strerror(errno_value), dst)
            return real_rename(src, dst)

        return mock.patch('os.rename', rename)

    def test_enospc_during_keep_leaves_no_half_kept_disk(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        with self.fail_rename_into_kept(errno.ENOSPC):
            self.assertRaises(OSError, self.store.keep, INSTANCE, SNAPSHOT,
                              'qcow2')
        self.assertEqual([], os.listdir(self.store.path))
        self.assertEqual(([], [], []), self.store.inventory())

    def test_read_only_storage_during_keep(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        with mock.patch('os.open', side_effect=OSError(
                errno.EROFS, 'Read-only file system')):
            error = self.assertRaises(OSError, self.store.keep, INSTANCE,
                                      SNAPSHOT, 'qcow2')
        self.assertEqual(errno.EROFS, error.errno)
        # Nothing moved: the stock offload deletes the instance directory.
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))

    def test_enospc_during_release_keeps_the_disk_in_place(self):
        self.keep()
        self.store.claim(INSTANCE, SNAPSHOT)
        with mock.patch('os.rename', side_effect=OSError(
                errno.ENOSPC, 'No space left on device')):
            self.assertRaises(OSError, self.store.release, INSTANCE,
                              SNAPSHOT)
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))

    def test_kept_files_are_the_service_users_alone(self):
        self.keep()
        self.assertEqual(0o700, stat.S_IMODE(os.lstat(self.store.path)
                                             .st_mode))
        self.assertEqual(0o700, stat.S_IMODE(os.lstat(self.kept_dir)
                                             .st_mode))
        self.assertEqual(0o600, stat.S_IMODE(os.lstat(os.path.join(
            self.kept_dir, storage.RECORD_NAME)).st_mode))

    def test_qemu_img_runs_with_novas_limits_and_a_timeout(self):
        record = self.keep()
        with mock.patch('oslo_concurrency.processutils.execute',
                        return_value=('{}', '')) as execute:
            self.assertRaises(accel_exc.VerificationFailed, self.store.verify,
                              record, INSTANCE, SNAPSHOT)
        kwargs = execute.call_args.kwargs
        self.assertEqual(storage.QEMU_IMG_LIMITS, kwargs['prlimit'])
        self.assertEqual(30, kwargs['prlimit'].cpu_time)
        self.assertEqual(storage.QEMU_IMG_TIMEOUT, kwargs['timeout'])

    def test_a_hung_qemu_img_is_killed_and_fails_like_any_error(self):
        record = self.keep()
        process = mock.Mock()

        def hang(*args, on_execute=None, **kwargs):
            on_execute(process)
            raise subprocess.TimeoutExpired(args, kwargs['timeout'])

        with mock.patch('oslo_concurrency.processutils.execute', hang):
            self.assert_not_reusable(record, 'no answer within 120 seconds')
        process.kill.assert_called_once_with()
        process.wait.assert_called_once_with()

    def test_a_storage_this_host_may_not_read_counts_nothing(self):
        self.keep()
        store = disks.make_store(self.instances_path, 'compute-b')
        with mock.patch('os.scandir', side_effect=PermissionError(
                errno.EACCES, 'Permission denied')):
            self.assertEqual(0, store.used_bytes())
        self.assertIn('Permission denied', self.log.output)

    def test_a_claimed_directory_is_reachable_by_qemu_again(self):
        self.keep()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertEqual(0o755, stat.S_IMODE(os.lstat(self.inst_dir)
                                             .st_mode))


class TestHostileLeases(BadInputTestCase):
    """Odd files named ``upload.lease`` (or ``kept.json``) in a kept disk.

    A planted FIFO must not hang the upload or the periodic pass that
    reads it: the guard turns a hang into a failure.
    """

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.record = self.keep()
        # What a planted entry is named: the newest lease there.
        self.lease = os.path.join(self.kept_dir,
                                  upload_lease.UPLOAD_LEASE + '.1')

    def assert_lease_taken(self):
        token = self.store.leases.take(self.kept_dir)
        self.assertIsNotNone(token)
        taken = os.path.join(self.kept_dir, upload_lease.UPLOAD_LEASE + '.2')
        self.assertTrue(stat.S_ISREG(os.lstat(taken).st_mode))
        with open(taken) as f:
            self.assertEqual(token, '2/' + f.read())
        # Nothing of the planted entry is left behind.
        self.assertEqual(sorted(['disk', 'disk.info', storage.RECORD_NAME,
                                 upload_lease.UPLOAD_LEASE + '.2']),
                         sorted(os.listdir(self.kept_dir)))
        return token

    def test_a_lease_that_is_a_link_is_taken_over_not_followed(self):
        os.symlink(os.path.join(self.outside, 'secret'), self.lease)
        self.assert_lease_taken()

    def test_a_dangling_link_does_not_create_its_target(self):
        target = os.path.join(self.outside, 'created-by-the-lease')
        os.symlink(target, self.lease)
        self.assert_lease_taken()
        self.assertFalse(os.path.lexists(target))

    def test_renew_does_not_touch_a_link_swapped_in(self):
        token = self.store.leases.take(self.kept_dir)
        secret = os.path.join(self.outside, 'secret')
        os.unlink(self.lease)
        os.symlink(secret, self.lease)
        self.assertRaises(accel_exc.LeaseLost, self.store.leases.renew,
                          self.kept_dir, token)
        # Nor is the link's target removed when the lease is dropped.
        self.store.leases.drop(self.kept_dir, token)
        self.assertTrue(os.path.islink(self.lease))

    def test_a_lease_that_is_a_fifo_is_taken_over(self):
        os.mkfifo(self.lease)
        self.assert_lease_taken()

    def test_a_lease_that_is_a_directory_is_taken_over(self):
        os.makedirs(os.path.join(self.lease, 'sub'))
        self.assert_lease_taken()

    def test_a_record_that_is_a_fifo_is_damaged(self):
        record_file = os.path.join(self.kept_dir, storage.RECORD_NAME)
        os.unlink(record_file)
        os.mkfifo(record_file)
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        [damaged] = self.store.inventory()[1]
        self.assertIn('unreadable', damaged.problem)
