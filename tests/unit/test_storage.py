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

"""Kept disks on a real instance storage: real files, real qemu-img."""

import dataclasses
import errno
import json
import logging
import os
import shutil
import time
from unittest import mock

import fixtures
import testtools

from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import safe_files
from nova_shelve_accel import storage
from nova_shelve_accel import upload_lease
from tests.unit import disks
from tests.unit import races
from tests.unit import skew

INSTANCE = '6f0f9c2a-0d0c-4c55-9a0e-0a4c7d3b2e11'
OTHER_INSTANCE = '0b7c5d43-8d3e-4f8b-a1f7-3c5b7e9d2a10'
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
NEW_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000002'
HOST = 'compute-a'


class StoreTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.store = disks.make_store(self.instances_path)
        self.clock = self.useFixture(disks.WatchClock())
        self.inst_dir = os.path.join(self.instances_path, INSTANCE)
        self.kept_dir = os.path.join(self.instances_path, disks.KEPT_SUBDIR,
                                     '%s.%s' % (INSTANCE, SNAPSHOT))
        self.log = self.useFixture(fixtures.FakeLogger(
            name='nova_shelve_accel', level=logging.INFO))

    def keep_qcow2(self, instance=INSTANCE, snapshot=SNAPSHOT, **kwargs):
        disks.make_qcow2_instance(self.instances_path, instance, **kwargs)
        return self.store.keep(instance, snapshot, 'qcow2')

    def kept_names(self):
        return sorted(os.listdir(self.store.path))

    def read_record_file(self, directory):
        with open(os.path.join(directory, storage.RECORD_NAME)) as f:
            return storage.KeptDiskRecord.from_json(f.read())


class TestKeptDiskRecord(StoreTestCase):

    def _record(self, **changes):
        fields = dict(
            instance_uuid=INSTANCE, snapshot_id=SNAPSHOT,
            disk_format='qcow2', backing_file='0123456789abcdef',
            disk_size=196608, disk_mtime_ns=1700000000123456789,
            files=('disk', 'disk.info'), kept_by=HOST,
            kept_at='2025-01-02T03:04:05.000006')
        fields.update(changes)
        return storage.KeptDiskRecord(**fields)

    def test_json_round_trip_gives_an_equal_record(self):
        record = self._record()
        self.assertEqual(
            record, storage.KeptDiskRecord.from_json(record.to_json()))

    def test_json_round_trip_keeps_a_missing_backing_file(self):
        record = self._record(backing_file=None, disk_format='raw')
        self.assertIsNone(storage.KeptDiskRecord.from_json(
            record.to_json()).backing_file)

    def test_files_come_back_as_a_tuple(self):
        back = storage.KeptDiskRecord.from_json(self._record().to_json())
        self.assertEqual(('disk', 'disk.info'), back.files)
        self.assertIsInstance(back.files, tuple)

    def test_record_is_written_with_the_current_version(self):
        data = json.loads(self._record().to_json())
        self.assertEqual(storage.RECORD_VERSION, data['version'])

    def test_unknown_version_is_rejected(self):
        data = json.loads(self._record().to_json())
        data['version'] = storage.RECORD_VERSION + 1
        self.assertRaises(ValueError, storage.KeptDiskRecord.from_json,
                          json.dumps(data))

    def test_record_without_version_is_rejected(self):
        data = json.loads(self._record().to_json())
        del data['version']
        self.assertRaises(ValueError, storage.KeptDiskRecord.from_json,
                          json.dumps(data))

    def test_malformed_record_reads_as_none(self):
        directory = os.path.join(self.instances_path, 'somewhere')
        os.makedirs(directory)
        with open(os.path.join(directory, storage.RECORD_NAME), 'w') as f:
            f.write('{"instance_uuid": ')
        self.assertIsNone(storage.read_record(directory))
        self.assertIn('is unreadable', self.log.output)

    def test_record_with_missing_fields_reads_as_none(self):
        directory = os.path.join(self.instances_path, 'somewhere')
        os.makedirs(directory)
        with open(os.path.join(directory, storage.RECORD_NAME), 'w') as f:
            f.write(json.dumps({'version': storage.RECORD_VERSION,
                                'files': ['disk']}))
        self.assertIsNone(storage.read_record(directory))

    def test_directory_without_record_reads_as_none(self):
        self.assertIsNone(storage.read_record(self.instances_path))

    def _assert_inventory_reports_damaged(self, record_text, problem):
        # A kept directory whose record reads as record_text is reported as
        # damaged and left in place; the good one is still listed.
        self.keep_qcow2(instance=OTHER_INSTANCE)
        broken = os.path.join(self.store.path, '%s.%s' % (INSTANCE, SNAPSHOT))
        os.makedirs(broken)
        with open(os.path.join(broken, storage.RECORD_NAME), 'w') as f:
            f.write(record_text)

        kept, damaged, in_flight = self.store.inventory()

        self.assertEqual([OTHER_INSTANCE], [r.instance_uuid for r in kept])
        self.assertEqual([(broken, INSTANCE, SNAPSHOT)],
                         [(d.path, d.instance_uuid, d.snapshot_id)
                          for d in damaged])
        self.assertIn(problem, damaged[0].problem)
        self.assertEqual([], in_flight)
        self.assertTrue(os.path.isdir(broken))

    def test_inventory_reports_a_malformed_record_as_damaged(self):
        self._assert_inventory_reports_damaged('not json', 'unreadable')

    def test_inventory_reports_a_record_that_is_not_an_object(self):
        self._assert_inventory_reports_damaged('[]', 'not a JSON object')

    def test_list_kept_ignores_record_naming_another_directory(self):
        self.keep_qcow2()
        renamed = os.path.join(self.store.path, '%s.%s' % (INSTANCE,
                                                           NEW_SNAPSHOT))
        os.rename(self.kept_dir, renamed)

        kept, damaged, _in_flight = self.store.inventory()

        self.assertEqual([], kept)
        self.assertEqual([renamed], [d.path for d in damaged])
        self.assertIn('its record names instance', damaged[0].problem)

    def test_list_kept_skips_work_in_progress(self):
        self.keep_qcow2()
        staging = os.path.join(self.store.path, '.staging-%s-1234abcd-%s.%s'
                               % (self.store.host_tag, INSTANCE, SNAPSHOT))
        shutil.copytree(self.kept_dir, staging)

        kept, damaged, in_flight = self.store.inventory()

        self.assertEqual([(INSTANCE, SNAPSHOT)],
                         [(r.instance_uuid, r.snapshot_id) for r in kept])
        self.assertEqual([], damaged)
        self.assertEqual([(staging, storage.STAGING, INSTANCE, SNAPSHOT)],
                         [(i.path, i.kind, i.instance_uuid, i.snapshot_id)
                          for i in in_flight])
        self.assertNotIn('Ignoring', self.log.output)

    def test_list_kept_without_kept_directory_is_empty(self):
        self.assertEqual([], self.store.list_kept())


class TestKeep(StoreTestCase):

    def test_keep_moves_instance_dir_to_kept_dir(self):
        self.keep_qcow2()
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual(['%s.%s' % (INSTANCE, SNAPSHOT)], self.kept_names())
        self.assertEqual(self.kept_dir,
                         self.store.kept_dir(INSTANCE, SNAPSHOT))

    def test_keep_keeps_disk_disk_info_config_drive_and_record(self):
        self.keep_qcow2(extra_files=('disk.config', 'disk.local', 'disk.swap',
                                     'console.log'))
        self.assertEqual(
            ['disk', 'disk.config', 'disk.info', storage.RECORD_NAME],
            sorted(os.listdir(self.kept_dir)))

    def test_keep_prunes_subdirectories(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        os.makedirs(os.path.join(self.inst_dir, 'vtpm', 'state'))
        self.store.keep(INSTANCE, SNAPSHOT, 'qcow2')
        self.assertEqual(['disk', 'disk.info', storage.RECORD_NAME],
                         sorted(os.listdir(self.kept_dir)))

    def test_keep_lists_only_the_files_that_exist(self):
        record = self.keep_qcow2(extra_files=('disk.local',))
        self.assertEqual(('disk', 'disk.info'), record.files)

    def test_keep_records_the_disk(self):
        disk = disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                         extra_files=('disk.config',))
        st = os.stat(disk)

        record = self.store.keep(INSTANCE, SNAPSHOT, 'qcow2')

        self.assertEqual(INSTANCE, record.instance_uuid)
        self.assertEqual(SNAPSHOT, record.snapshot_id)
        self.assertEqual('qcow2', record.disk_format)
        self.assertEqual('0123456789abcdef', record.backing_file)
        self.assertEqual(st.st_size, record.disk_size)
        self.assertEqual(st.st_mtime_ns, record.disk_mtime_ns)
        self.assertEqual(('disk', 'disk.info', 'disk.config'), record.files)
        self.assertEqual(HOST, record.kept_by)
        self.assertEqual(storage.RECORD_VERSION, record.version)

    def test_keep_writes_the_record_it_returns(self):
        record = self.keep_qcow2()
        self.assertEqual(record, self.read_record_file(self.kept_dir))
        self.assertEqual(record, self.store.find(INSTANCE, SNAPSHOT))

    def test_keep_does_not_change_the_disk(self):
        disk = disks.make_qcow2_instance(self.instances_path, INSTANCE)
        st = os.stat(disk)
        self.store.keep(INSTANCE, SNAPSHOT, 'qcow2')
        kept = os.stat(os.path.join(self.kept_dir, 'disk'))
        self.assertEqual((st.st_ino, st.st_size, st.st_mtime_ns),
                         (kept.st_ino, kept.st_size, kept.st_mtime_ns))

    def test_keep_raw_disk_has_no_backing_file(self):
        disks.make_raw_instance(self.instances_path, INSTANCE)
        record = self.store.keep(INSTANCE, SNAPSHOT, 'raw')
        self.assertEqual('raw', record.disk_format)
        self.assertIsNone(record.backing_file)
        self.assertTrue(os.path.isfile(os.path.join(self.kept_dir, 'disk')))

    def test_keep_accepts_a_disk_without_disk_info(self):
        record = self.keep_qcow2(disk_info=None)
        self.assertEqual(('disk',), record.files)

    def test_keep_again_reads_no_other_kept_disk(self):
        # Keeping costs the same whatever the number of kept disks: the disk
        # of an older shelve is left to the periodic pass.
        self.keep_qcow2(snapshot=SNAPSHOT)
        with mock.patch.object(storage, '_load_record',
                               side_effect=AssertionError('read a record')):
            self.keep_qcow2(snapshot=NEW_SNAPSHOT)
        self.assertEqual(['%s.%s' % (INSTANCE, SNAPSHOT),
                          '%s.%s' % (INSTANCE, NEW_SNAPSHOT)],
                         self.kept_names())

    def test_keep_of_an_already_kept_shelve_adopts_the_kept_disk(self):
        # An offload run again after a restart finds the disk kept.
        record = self.keep_qcow2()
        self.assertEqual(record, self.store.keep(INSTANCE, SNAPSHOT, 'qcow2'))
        self.assertEqual(['%s.%s' % (INSTANCE, SNAPSHOT)], self.kept_names())

    def test_an_empty_instance_dir_does_not_block_adopting(self):
        record = self.keep_qcow2()
        os.makedirs(self.inst_dir)
        self.assertEqual(record, self.store.keep(INSTANCE, SNAPSHOT))
        self.assertEqual(['%s.%s' % (INSTANCE, SNAPSHOT)], self.kept_names())

    def test_keep_that_cannot_publish_leaves_no_staging_dir(self):
        # A directory by the kept disk's name that is no kept disk (its
        # record is unreadable) is neither reclaimed nor replaced.
        squatter = self.kept_dir
        os.makedirs(squatter)
        disks.add_files(squatter, storage.RECORD_NAME)
        disks.make_qcow2_instance(self.instances_path, INSTANCE)

        self.assertRaises(OSError, self.store.keep, INSTANCE, SNAPSHOT,
                          'qcow2')

        self.assertEqual([os.path.basename(squatter)], self.kept_names())
        self.assertEqual([storage.RECORD_NAME], os.listdir(squatter))

    def test_keep_leaves_kept_disks_of_other_instances(self):
        self.keep_qcow2(instance=OTHER_INSTANCE)
        self.keep_qcow2(instance=INSTANCE)
        self.assertEqual(
            sorted(['%s.%s' % (INSTANCE, SNAPSHOT),
                    '%s.%s' % (OTHER_INSTANCE, SNAPSHOT)]),
            self.kept_names())


class TestRecordedFormat(StoreTestCase):
    """The format Nova recorded for a disk, never a probe of the file."""

    def recorded(self, domain_format=None):
        return self.store.recorded_format(INSTANCE,
                                          domain_format=domain_format)

    def test_disk_info_says_it(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        self.assertEqual('qcow2', self.recorded())

    def test_disk_info_wins_over_what_the_file_looks_like(self):
        # A qcow2 file recorded raw is opened raw by QEMU: its header is
        # data the guest wrote.
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info='raw')
        self.assertEqual('raw', self.recorded())

    def test_the_domain_says_it_without_disk_info(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info=None)
        self.assertEqual('qcow2', self.recorded(domain_format='qcow2'))

    def test_the_domain_and_disk_info_must_agree(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        error = self.assertRaises(accel_exc.KeepRefused, self.recorded, 'raw')
        self.assertIn('disk.info records %s as qcow2, its libvirt domain as '
                      'raw' % os.path.join(self.inst_dir, 'disk'),
                      str(error))

    def test_nothing_recorded_is_refused(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info=None)
        error = self.assertRaises(accel_exc.KeepRefused, self.recorded)
        self.assertIn('Nova recorded no format for', str(error))

    def test_an_entry_for_another_path_records_nothing(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info=None)
        with open(os.path.join(self.inst_dir, 'disk.info'), 'w') as f:
            json.dump({'/elsewhere/disk': 'qcow2'}, f)
        self.assertRaises(accel_exc.KeepRefused, self.recorded)

    def test_a_block_format_is_refused(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info='ploop')
        error = self.assertRaises(accel_exc.KeepRefused, self.recorded)
        self.assertIn('not a file format we keep', str(error))

    def test_keep_takes_the_recorded_format_by_default(self):
        disks.make_raw_instance(self.instances_path, INSTANCE)
        self.assertEqual('raw',
                         self.store.keep(INSTANCE, SNAPSHOT).disk_format)

    def test_a_quarantined_disk_is_read_by_its_nova_path(self):
        # disk.info names the disk in the instance directory, wherever the
        # directory has been moved since.
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        moved = os.path.join(self.instances_path, 'moved')
        os.rename(self.inst_dir, moved)
        self.assertEqual('qcow2', self.store.recorded_format(
            INSTANCE, directory=moved))


class TestCheckKeepable(StoreTestCase):
    """check_keepable() refuses what keep() would, and changes nothing."""

    def test_a_keepable_disk_passes_and_nothing_changes(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        before = disks.tree(self.instances_path)
        self.store.check_keepable(INSTANCE, SNAPSHOT)
        self.assertEqual(before, disks.tree(self.instances_path))

    def test_refusals_are_those_of_keep(self):
        elsewhere = disks.make_base(
            self.instances_path,
            directory=os.path.join(self.instances_path, 'elsewhere'))
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  backing=elsewhere)
        error = self.assertRaises(accel_exc.KeepRefused,
                                  self.store.check_keepable, INSTANCE,
                                  SNAPSHOT)
        self.assertIn('outside the image cache', str(error))
        self.assertRaises(accel_exc.KeepRefused, self.store.keep, INSTANCE,
                          SNAPSHOT)

    def test_a_kept_disks_path_that_is_a_file_is_refused(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        with open(self.store.path, 'w') as f:
            f.write('x')
        error = self.assertRaises(accel_exc.KeepRefused,
                                  self.store.check_keepable, INSTANCE,
                                  SNAPSHOT)
        self.assertIn('is not a directory', str(error))


class TestKeepRefused(StoreTestCase):
    """A refused keep changes nothing on the storage."""

    def assert_refused(self, disk_format='qcow2', message=None):
        before = disks.tree(self.instances_path)
        error = self.assertRaises(accel_exc.KeepRefused, self.store.keep,
                                  INSTANCE, SNAPSHOT, disk_format)
        self.assertEqual(before, disks.tree(self.instances_path))
        self.assertFalse(os.path.exists(self.store.path))
        if message:
            self.assertIn(message, str(error))
        return error

    def test_refused_without_disk(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        os.unlink(os.path.join(self.inst_dir, 'disk'))
        self.assert_refused(message='does not exist')

    def test_refused_without_instance_dir(self):
        self.assert_refused(message='does not exist')

    def test_refused_for_a_format_that_is_not_a_file_format(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        self.assert_refused(disk_format='rbd',
                            message='not a file format we keep')

    def test_refused_when_disk_info_disagrees_with_the_format(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info='raw')
        self.assert_refused(message='disk.info records')

    def test_refused_when_disk_info_is_not_json(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  disk_info=None)
        with open(os.path.join(self.inst_dir, 'disk.info'), 'w') as f:
            f.write('{')
        self.assert_refused(message='not valid JSON')

    def test_refused_for_a_raw_file_declared_qcow2(self):
        disks.make_raw_instance(self.instances_path, INSTANCE,
                                disk_info=None)
        self.assert_refused(message='qemu-img cannot read')

    def test_refused_for_a_backing_file_outside_the_image_cache(self):
        elsewhere = disks.make_base(
            self.instances_path,
            directory=os.path.join(self.instances_path, 'elsewhere'))
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  backing=elsewhere)
        self.assert_refused(message='outside the image cache')

    def test_refused_for_a_missing_backing_file(self):
        base = disks.make_base(self.instances_path)
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  backing=base)
        os.unlink(base)
        self.assert_refused(message='is missing')

    def test_refused_keep_leaves_the_older_kept_disk(self):
        self.keep_qcow2(snapshot=SNAPSHOT)
        disks.make_raw_instance(self.instances_path, INSTANCE)
        self.assertRaises(accel_exc.KeepRefused, self.store.keep,
                          INSTANCE, NEW_SNAPSHOT, 'qcow2')
        self.assertEqual(['%s.%s' % (INSTANCE, SNAPSHOT)], self.kept_names())


class TestVerify(StoreTestCase):

    def assert_verify_fails(self, record, message, instance=INSTANCE,
                            snapshot=SNAPSHOT):
        error = self.assertRaises(accel_exc.VerificationFailed,
                                  self.store.verify, record, instance,
                                  snapshot)
        self.assertIn(message, str(error))

    def test_fresh_qcow2_keep_verifies(self):
        record = self.keep_qcow2()
        self.store.verify(record, INSTANCE, SNAPSHOT)

    def test_fresh_raw_keep_verifies(self):
        disks.make_raw_instance(self.instances_path, INSTANCE)
        record = self.store.keep(INSTANCE, SNAPSHOT, 'raw')
        self.store.verify(record, INSTANCE, SNAPSHOT)

    def test_fails_for_another_instance(self):
        record = self.keep_qcow2()
        self.assert_verify_fails(record, 'was kept for instance',
                                 instance=OTHER_INSTANCE)

    def test_fails_for_another_snapshot(self):
        record = self.keep_qcow2()
        self.assert_verify_fails(record, 'at snapshot',
                                 snapshot=NEW_SNAPSHOT)

    def test_fails_when_a_listed_file_is_missing(self):
        record = self.keep_qcow2(extra_files=('disk.config',))
        os.unlink(os.path.join(self.kept_dir, 'disk.config'))
        self.assert_verify_fails(record, 'lacks disk.config')

    def test_fails_after_the_guest_wrote_to_the_disk(self):
        record = self.keep_qcow2()
        disks.qemu_io('qcow2', os.path.join(self.kept_dir, 'disk'),
                      'write -P 0x5a 0 64k')
        self.assert_verify_fails(record, 'changed after it was kept')

    def test_fails_after_bytes_were_appended(self):
        record = self.keep_qcow2()
        with open(os.path.join(self.kept_dir, 'disk'), 'ab') as f:
            f.write(b'\0' * 512)
        self.assert_verify_fails(record, 'changed after it was kept')

    def test_fails_after_a_raw_disk_was_rewritten_in_place(self):
        disks.make_raw_instance(self.instances_path, INSTANCE)
        record = self.store.keep(INSTANCE, SNAPSHOT, 'raw')
        disk = os.path.join(self.kept_dir, 'disk')
        disks.qemu_io('raw', disk, 'write -P 0x5a 0 4k')
        # Same size: only the mtime tells.
        self.assertEqual(record.disk_size, os.stat(disk).st_size)
        self.assert_verify_fails(record, 'changed after it was kept')

    def test_fails_when_the_backing_file_was_deleted(self):
        record = self.keep_qcow2()
        os.unlink(os.path.join(self.instances_path, disks.BASE_SUBDIR,
                               record.backing_file))
        self.assert_verify_fails(record, 'is missing')

    def test_fails_when_the_record_names_another_backing_file(self):
        record = self.keep_qcow2()
        forged = dataclasses.replace(record, backing_file='fedcba9876543210')
        self.assert_verify_fails(forged, 'the record says')


class TestClaim(StoreTestCase):

    def test_claim_moves_kept_disk_into_instance_dir(self):
        self.keep_qcow2(extra_files=('disk.config',))
        self.assertTrue(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertFalse(os.path.exists(self.kept_dir))
        self.assertEqual(
            ['disk', 'disk.config', 'disk.info', storage.RECORD_NAME],
            sorted(os.listdir(self.inst_dir)))
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))

    def test_second_claim_returns_false(self):
        self.keep_qcow2()
        self.assertTrue(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertFalse(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))

    def test_claim_of_unknown_snapshot_returns_false(self):
        self.keep_qcow2()
        self.assertFalse(self.store.claim(INSTANCE, NEW_SNAPSHOT))
        self.assertTrue(os.path.isdir(self.kept_dir))

    def test_claim_onto_an_empty_instance_dir_succeeds(self):
        self.keep_qcow2()
        os.makedirs(self.inst_dir)
        self.assertTrue(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))
        self.assertFalse(os.path.exists(self.kept_dir))

    def test_claim_onto_a_populated_instance_dir_fails(self):
        self.keep_qcow2()
        os.makedirs(self.inst_dir)
        disks.add_files(self.inst_dir, 'console.log')
        kept_before = disks.tree(self.kept_dir)

        self.assertRaises(accel_exc.VerificationFailed, self.store.claim,
                          INSTANCE, SNAPSHOT)

        self.assertEqual(kept_before, disks.tree(self.kept_dir))
        self.assertEqual(['console.log'], os.listdir(self.inst_dir))
        self.assertIsNotNone(self.store.find(INSTANCE, SNAPSHOT))
        # Put back from the claim's staging name: nothing left in flight.
        self.assertEqual([], self.store.inventory()[2])

    def test_a_claim_cut_between_its_renames_is_put_back_by_recovery(self):
        record = self.keep_qcow2()

        class Crash(BaseException):
            pass

        def crash_at(point):
            if point == 'claim.staged':
                raise Crash()

        with mock.patch('nova_shelve_accel.faults.cut_point', crash_at):
            self.assertRaises(Crash, self.store.claim, INSTANCE, SNAPSHOT)
        self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))

        # The host's recovery at start-up: its own staging is abandoned
        # work, published back as an interrupted keep is.
        [item] = self.store.inventory()[2]
        self.assertEqual(storage.STAGING, item.kind)
        self.assertEqual([item], self.store.abandoned([item], at_start=True))
        self.assertTrue(self.store.finish_staging(item))
        self.assertEqual(record, self.store.find(INSTANCE, SNAPSHOT))
        self.assertTrue(self.store.claim(INSTANCE, SNAPSHOT))

    def rename_reporting_success_for_a_moved_source(self, source):
        """os.rename as a GlusterFS client may answer a stale name.

        Another client moved ``source`` away an instant ago; this client's
        rename of it reports success and moves nothing.
        """
        real_rename = os.rename

        def rename(src, dst):
            if src == source:
                return None
            return real_rename(src, dst)
        return mock.patch('os.rename', side_effect=rename)

    def test_a_claim_whose_rename_moved_nothing_loses(self):
        self.keep_qcow2()
        kept_before = disks.tree(self.kept_dir)
        with self.rename_reporting_success_for_a_moved_source(self.kept_dir):
            self.assertFalse(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual(kept_before, disks.tree(self.kept_dir))
        self.assertEqual([], self.store.inventory()[2])

    def test_a_reclaim_whose_rename_moved_nothing_loses(self):
        record = self.keep_qcow2()
        with self.rename_reporting_success_for_a_moved_source(self.kept_dir):
            self.assertFalse(self.store.reclaim(record, 'test'))
        self.assertEqual(record, self.store.find(INSTANCE, SNAPSHOT))

    def test_a_claim_whose_disk_another_host_put_back_loses(self):
        # Our staging name vanished under us (the other client's view of
        # the race): ESTALE, and lstat finds nothing there.
        self.keep_qcow2()
        real_rename = os.rename

        def rename(src, dst):
            if dst == self.inst_dir:
                # Another host took the disk from our staging name first.
                real_rename(src, self.kept_dir)
                raise OSError(errno.ESTALE, 'Stale file handle', src)
            return real_rename(src, dst)

        with mock.patch('os.rename', side_effect=rename):
            self.assertFalse(self.store.claim(INSTANCE, SNAPSHOT))
        self.assertIsNotNone(self.store.find(INSTANCE, SNAPSHOT))
        self.assertFalse(os.path.exists(self.inst_dir))


class TestHostProbes(StoreTestCase):
    """Which hosts share the storage, from the probes they leave on it."""

    def other(self, host):
        return storage.KeptDiskStore(self.instances_path, disks.KEPT_SUBDIR,
                                     disks.BASE_SUBDIR, host)

    def probe_path(self, host):
        return os.path.join(self.store.path,
                            '.host-%s' % storage.host_tag(host))

    def test_hosts_see_each_others_probes(self):
        self.assertEqual([], self.store.hosts_sharing())
        self.store.leave_probe()
        self.other('compute-b').leave_probe()
        self.store.leave_probe()
        self.assertEqual(sorted([self.store.host, 'compute-b']),
                         self.other('compute-c').hosts_sharing())
        self.assertEqual(sorted(['.host-%s' % self.store.host_tag,
                                 '.host-%s' % storage.host_tag('compute-b')]),
                         sorted(os.listdir(self.store.path)))

    def test_probes_are_neither_kept_disks_nor_reported(self):
        self.store.leave_probe()
        self.assertEqual(([], [], []), self.store.inventory())
        self.assertNotIn('Ignoring', self.log.output)

    def test_a_probe_naming_another_host_than_its_tag_names_nobody(self):
        os.makedirs(self.store.path)
        with open(self.probe_path('compute-b'), 'w') as f:
            f.write('compute-x\n')
        self.assertEqual([], self.store.hosts_sharing())

    def test_hostile_probes_name_nobody_and_do_not_hang(self):
        os.makedirs(self.store.path)
        outside = os.path.join(self.instances_path, 'outside')
        with open(outside, 'w') as f:
            f.write('compute-b\n')
        os.symlink(outside, self.probe_path('compute-b'))
        os.mkfifo(self.probe_path('compute-c'))
        with open(self.probe_path('compute-d'), 'wb') as f:
            f.write(b'\xff\xfe' * 10)
        with open(self.probe_path('compute-e'), 'wb') as f:
            f.write(b'x' * (1 << 20))
        os.mkdir(self.probe_path('compute-f'))
        self.assertEqual([], self.store.hosts_sharing())

    def test_a_leftover_temporary_file_does_not_stop_the_next_probe(self):
        os.makedirs(self.store.path)
        with open(self.probe_path(self.store.host) + '.tmp', 'w') as f:
            f.write('half')
        self.store.leave_probe()
        self.assertEqual([self.store.host], self.store.hosts_sharing())
        self.assertFalse(os.path.exists(
            self.probe_path(self.store.host) + '.tmp'))

    def test_sharing_problems(self):
        self.assertEqual(([], []), storage.sharing_problems(
            'a', ['b'], ['a', 'b']))
        self.assertEqual((['b', 'c'], []), storage.sharing_problems(
            'a', ['c', 'b'], ['a']))
        self.assertEqual(([], ['x']), storage.sharing_problems(
            'a', [], ['x', 'a']))


class TestVanished(testtools.TestCase):
    """Errors a network filesystem gives for a name another client moved."""

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'entry')

    def test_enoent_is_gone(self):
        self.assertTrue(safe_files.vanished(
            OSError(errno.ENOENT, 'gone'), self.path))

    def test_estale_and_eio_are_gone_once_lstat_agrees(self):
        for code in (errno.ESTALE, errno.EIO):
            self.assertTrue(safe_files.vanished(OSError(code, 'x'), self.path))

    def test_estale_and_eio_of_a_name_still_there_are_errors(self):
        os.mkdir(self.path)
        for code in (errno.ESTALE, errno.EIO):
            self.assertFalse(
                safe_files.vanished(OSError(code, 'x'), self.path))

    def test_other_errors_are_errors(self):
        self.assertFalse(safe_files.vanished(
            OSError(errno.EACCES, 'denied'), self.path))

    def test_remove_tree_tolerates_estale_for_entries_gone_meanwhile(self):
        os.mkdir(self.path)
        disks.add_files(self.path, 'disk', 'disk.info')
        real_unlink = os.unlink

        def unlink(path, *args, **kwargs):
            real_unlink(path, *args, **kwargs)
            raise OSError(errno.ESTALE, 'Stale file handle', path)

        with mock.patch('os.unlink', side_effect=unlink):
            self.assertTrue(safe_files.remove_tree(self.path))
        self.assertFalse(os.path.exists(self.path))

    def test_remove_tree_raises_estale_for_entries_still_there(self):
        os.mkdir(self.path)
        disks.add_files(self.path, 'disk')

        with mock.patch('os.unlink', side_effect=OSError(
                errno.ESTALE, 'Stale file handle')):
            self.assertRaises(OSError, safe_files.remove_tree, self.path)
        self.assertTrue(os.path.exists(os.path.join(self.path, 'disk')))

    def test_remove_tree_of_a_directory_moved_away_meanwhile(self):
        # GlusterFS: rmtree opens the directory, another client renames it
        # (a claim) and the fstat of the open directory answers ESTALE.
        os.mkdir(self.path)
        disks.add_files(self.path, 'disk')
        moved = self.path + '.claimed'
        real_fstat = os.fstat

        def fstat(fd):
            if os.path.exists(self.path):
                os.rename(self.path, moved)
                raise OSError(errno.ESTALE, 'Stale file handle')
            return real_fstat(fd)

        with mock.patch('os.fstat', side_effect=fstat):
            self.assertFalse(safe_files.remove_tree(self.path))
        self.assertTrue(os.path.exists(os.path.join(moved, 'disk')))

    def test_remove_tree_retries_a_subdirectory_gone_meanwhile(self):
        os.mkdir(self.path)
        os.mkdir(os.path.join(self.path, 'sub'))
        disks.add_files(self.path, 'disk')
        real_fstat = os.fstat
        stale = [1]

        def fstat(fd):
            if stale and os.path.exists(os.path.join(self.path, 'sub')):
                stale.pop()
                os.rmdir(os.path.join(self.path, 'sub'))
                raise OSError(errno.ESTALE, 'Stale file handle')
            return real_fstat(fd)

        with mock.patch('os.fstat', side_effect=fstat):
            self.assertTrue(safe_files.remove_tree(self.path))
        self.assertFalse(os.path.exists(self.path))

    def test_remove_tree_raises_estale_that_does_not_go_away(self):
        os.mkdir(self.path)
        disks.add_files(self.path, 'disk')

        with mock.patch('os.fstat', side_effect=OSError(
                errno.ESTALE, 'Stale file handle')):
            self.assertRaises(OSError, safe_files.remove_tree, self.path)
        self.assertTrue(os.path.exists(os.path.join(self.path, 'disk')))


class TestPhantomExist(StoreTestCase):
    """EEXIST for a name nobody created (GlusterFS, under lookups)."""

    def phantom_once(self, function, name):
        """os.``function`` answers EEXIST once for ``name``, making nothing.

        Returns the paths named ``name`` that os.``function`` was called on.
        """
        real = getattr(os, function)
        calls = []

        def once(path, *args, **kwargs):
            if os.path.basename(path) == name:
                calls.append(path)
                if len(calls) == 1:
                    raise FileExistsError(errno.EEXIST, 'File exists', path)
            return real(path, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch('os.%s' % function, once))
        return calls

    def test_open_new_tries_again_when_nothing_stands(self):
        path = os.path.join(self.instances_path, 'new')
        calls = self.phantom_once('open', 'new')
        os.close(safe_files.open_new(path))
        self.assertEqual([path, path], calls)
        self.assertTrue(os.path.isfile(path))
        self.assertIn('said %s exists, but it does not' % path,
                      self.log.output)

    def test_open_new_keeps_a_file_that_stands(self):
        path = os.path.join(self.instances_path, 'taken')
        disks.add_files(self.instances_path, 'taken')
        with open(path) as f:
            before = f.read()
        self.assertRaises(FileExistsError, safe_files.open_new, path)
        with open(path) as f:
            self.assertEqual(before, f.read())

    def test_open_new_gives_up_on_a_storage_that_always_says_exists(self):
        path = os.path.join(self.instances_path, 'never')
        with mock.patch('os.open', side_effect=FileExistsError(
                errno.EEXIST, 'File exists')) as always:
            self.assertRaises(FileExistsError, safe_files.open_new, path)
        self.assertEqual(safe_files._PHANTOM_EXIST_RETRIES + 1,
                         always.call_count)

    def test_the_record_is_written_despite_a_phantom_exist(self):
        record = self.keep_qcow2()
        calls = self.phantom_once('open', storage.RECORD_NAME + '.tmp')
        storage._write_record(self.kept_dir, dataclasses.replace(
            record, snapshot_pending=True))
        self.assertEqual(2, len(calls))
        self.assertTrue(self.read_record_file(self.kept_dir).snapshot_pending)

    def test_the_upload_lease_is_taken_despite_a_phantom_exist(self):
        self.keep_qcow2()
        calls = self.phantom_once('open', os.path.basename(
            upload_lease.lease_file(self.kept_dir, 1)))
        self.assertIsNotNone(self.store.leases.take(self.kept_dir))
        self.assertEqual(2, len(calls))

    def test_the_kept_disks_directory_is_made_despite_a_phantom_exist(self):
        shutil.rmtree(self.store.path, ignore_errors=True)
        calls = self.phantom_once('mkdir', disks.KEPT_SUBDIR)
        self.store.ensure_directory()
        self.assertEqual(2, len(calls))
        self.assertTrue(safe_files.is_real_dir(self.store.path))


class TestClockSkew(testtools.TestCase):
    """Hosts whose clocks are hours apart, in processes of their own.

    One runs under libfaketime, which shifts its clock and the times it
    stamps files with, as a host with a wrong clock does on a filesystem
    that takes the client's time. ``tools/skew_kept_disks.py`` runs every
    skew, kind and side, on GlusterFS too.
    """

    def setUp(self):
        super().setUp()
        if not skew.libfaketime():
            self.fail('libfaketime is missing: as root, apt-get install '
                      'faketime')

    def assert_ok(self, kind, skewed, offset):
        path = self.useFixture(fixtures.TempDir()).path
        verdict, details = skew.run(kind, skewed, offset, path)
        self.assertEqual('ok', verdict, details)

    def test_a_live_lease_of_a_host_behind_is_not_taken_over(self):
        self.assert_ok('lease', 'holder', '-2h')

    def test_the_dead_lease_of_a_host_ahead_is_taken_over(self):
        self.assert_ok('lease', 'holder', '+2h')

    def test_a_host_ahead_takes_no_live_lease_over(self):
        self.assert_ok('lease', 'watcher', '+2h')

    def test_a_host_behind_takes_a_dead_lease_over(self):
        self.assert_ok('lease', 'watcher', '-2h')

    def test_a_host_ahead_leaves_live_staging_alone(self):
        self.assert_ok('staging', 'watcher', '+2h')

    def test_a_host_behind_resolves_abandoned_staging(self):
        self.assert_ok('staging', 'watcher', '-2h')


class TestRaces(testtools.TestCase):
    """Processes racing as hosts do.

    ``tools/race_kept_disks.py`` runs the same scenarios, 1000 rounds each.
    """

    ROUNDS = 25

    def assert_every_round_ok(self, scenario):
        path = self.useFixture(fixtures.TempDir()).path
        problems = {}
        counts = races.race(path, races.SCENARIOS[scenario], self.ROUNDS,
                            problems=problems)
        self.assertEqual({}, problems)
        self.assertEqual({'ok': self.ROUNDS}, dict(counts))

    def test_eight_claims_have_exactly_one_winner(self):
        self.assert_every_round_ok('claim x8')

    def test_claim_against_reclaim(self):
        self.assert_every_round_ok('claim vs reclaim')

    def test_eight_hosts_taking_over_a_lease_have_exactly_one_winner(self):
        self.assert_every_round_ok('lease takeover x8')

    def test_reclaim_against_reclaim(self):
        self.assert_every_round_ok('reclaim vs reclaim')

    def test_emptying_the_trash_against_a_reclaim(self):
        # Two hosts deleting the same trash: the one whose files vanish
        # under it must not raise.
        self.assert_every_round_ok('empty-trash vs reclaim')


class TestRelease(StoreTestCase):

    def test_release_puts_a_claimed_disk_back(self):
        record = self.keep_qcow2(extra_files=('disk.config',))
        self.store.claim(INSTANCE, SNAPSHOT)
        disks.add_files(self.inst_dir, 'disk.local', 'console.log')

        self.store.release(INSTANCE, SNAPSHOT)

        self.assertFalse(os.path.exists(self.inst_dir))
        self.assertEqual(
            ['disk', 'disk.config', 'disk.info', storage.RECORD_NAME],
            sorted(os.listdir(self.kept_dir)))
        self.assertEqual(record, self.store.find(INSTANCE, SNAPSHOT))
        self.store.verify(record, INSTANCE, SNAPSHOT)

    def test_released_disk_can_be_claimed_again(self):
        self.keep_qcow2()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.store.release(INSTANCE, SNAPSHOT)
        self.assertTrue(self.store.claim(INSTANCE, SNAPSHOT))

    def test_a_pending_disk_written_by_the_failed_guest_stays_usable(self):
        # The only copy: what the guest wrote is the instance's data now,
        # so the record describes the disk as given back, not as kept.
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        kept = self.store.keep(INSTANCE, SNAPSHOT, 'qcow2',
                               snapshot_pending=True)
        self.store.claim(INSTANCE, SNAPSHOT)
        disk = os.path.join(self.inst_dir, 'disk')
        disks.qemu_io('qcow2', disk, 'write -P 0x33 0 64k')
        os.utime(disk, ns=(kept.disk_mtime_ns + 10 ** 9,) * 2)

        self.store.release(INSTANCE, SNAPSHOT)

        record = self.store.find(INSTANCE, SNAPSHOT)
        self.assertTrue(record.snapshot_pending)
        self.assertNotEqual(kept.disk_mtime_ns, record.disk_mtime_ns)
        self.store.verify(record, INSTANCE, SNAPSHOT)
        self.assertTrue(self.store.unchanged(record))

    def test_a_disk_whose_snapshot_is_uploaded_keeps_its_record(self):
        # The snapshot holds the data as kept: a disk the failed guest
        # changed must not be reused, so its record is not refreshed.
        kept = self.keep_qcow2()
        self.store.claim(INSTANCE, SNAPSHOT)
        disk = os.path.join(self.inst_dir, 'disk')
        os.utime(disk, ns=(kept.disk_mtime_ns + 10 ** 9,) * 2)

        self.store.release(INSTANCE, SNAPSHOT)

        record = self.store.find(INSTANCE, SNAPSHOT)
        self.assertEqual(kept.disk_mtime_ns, record.disk_mtime_ns)
        self.assertRaises(accel_exc.VerificationFailed, self.store.verify,
                          record, INSTANCE, SNAPSHOT)

    def test_release_refuses_a_dir_kept_for_another_snapshot(self):
        self.keep_qcow2()
        self.store.claim(INSTANCE, SNAPSHOT)
        before = disks.tree(self.inst_dir)

        self.assertRaises(accel_exc.VerificationFailed, self.store.release,
                          INSTANCE, NEW_SNAPSHOT)

        self.assertEqual(before, disks.tree(self.inst_dir))
        self.assertEqual([], self.kept_names())

    def test_release_refuses_a_dir_without_record(self):
        self.keep_qcow2()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.store.finish_claim(INSTANCE)
        self.assertRaises(accel_exc.VerificationFailed, self.store.release,
                          INSTANCE, SNAPSHOT)
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))

    def test_finish_claim_removes_the_record_only(self):
        self.keep_qcow2()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.store.finish_claim(INSTANCE)
        self.assertEqual(['disk', 'disk.info'],
                         sorted(os.listdir(self.inst_dir)))
        # A second call has nothing left to do.
        self.store.finish_claim(INSTANCE)


class TestReclaim(StoreTestCase):

    def test_reclaim_deletes_the_kept_disk(self):
        record = self.keep_qcow2()
        self.assertTrue(self.store.reclaim(record, 'for the test'))
        self.assertEqual([], self.kept_names())
        self.assertIn('for the test', self.log.output)

    def test_reclaim_of_a_reclaimed_disk_returns_false(self):
        record = self.keep_qcow2()
        self.store.reclaim(record, 'for the test')
        self.assertFalse(self.store.reclaim(record, 'for the test'))

    def test_protect_backing_file_makes_it_young_again(self):
        record = self.keep_qcow2()
        base = os.path.join(self.instances_path, disks.BASE_SUBDIR,
                            record.backing_file)
        disks.age(base)
        before = os.stat(base).st_mtime

        self.store.protect_backing_file(record)

        self.assertGreater(os.stat(base).st_mtime, before + 60)

    def test_reclaim_leaves_the_image_cache(self):
        record = self.keep_qcow2()
        self.store.reclaim(record, 'for the test')
        self.assertEqual([record.backing_file], os.listdir(
            os.path.join(self.instances_path, disks.BASE_SUBDIR)))

    def make_leftover(self, kind, host='compute-a', age=0):
        path = os.path.join(self.store.path, '.%s-%s-1234abcd-%s.%s' % (
            kind, storage.host_tag(host), INSTANCE, SNAPSHOT))
        os.makedirs(path)
        disks.add_files(path, 'disk')
        return path

    def abandoned(self, at_start, age=0):
        """What this host finds abandoned, having watched it for ``age``."""
        _kept, _damaged, in_flight = self.store.inventory()
        if age:
            self.store.abandoned(in_flight, at_start)
            self.clock.advance(age)
        return [i.path for i in self.store.abandoned(in_flight, at_start)]

    def test_own_work_in_flight_is_abandoned_at_start(self):
        trash = self.make_leftover(storage.TRASH)
        staging = self.make_leftover(storage.STAGING)
        self.assertEqual(sorted([trash, staging]),
                         sorted(self.abandoned(at_start=True)))

    def test_own_recent_work_in_flight_is_left_while_running(self):
        # Another thread of this host may be keeping or reclaiming.
        self.make_leftover(storage.TRASH)
        self.assertEqual([], self.abandoned(at_start=False))

    def test_other_hosts_recent_work_is_left_even_at_start(self):
        self.make_leftover(storage.STAGING, host='compute-b')
        self.make_leftover(storage.TRASH, host='compute-b')
        self.assertEqual([], self.abandoned(at_start=True))

    def test_anyones_stale_work_is_abandoned(self):
        staging = self.make_leftover(storage.STAGING, host='compute-b')
        self.assertEqual([staging], self.abandoned(
            at_start=False, age=storage.STALE_SECONDS + 60))

    def test_an_unreachable_entry_does_not_stop_the_others(self):
        # GlusterFS 10: after racing renames a listed directory answers
        # ESTALE to every lookup, for good.
        ghost = self.make_leftover(storage.TRASH, host='compute-b')
        staging = self.make_leftover(storage.STAGING, host='compute-b')
        real_lstat = os.lstat

        def lstat(path, *args, **kwargs):
            if path == ghost:
                raise OSError(errno.ESTALE, 'Stale file handle', path)
            return real_lstat(path, *args, **kwargs)

        with mock.patch('os.lstat', side_effect=lstat):
            self.assertEqual([staging], self.abandoned(
                at_start=True, age=storage.STALE_SECONDS + 60))
            self.abandoned(at_start=True)
        self.assertEqual(1, self.log.output.count(
            'Cannot look at %s' % ghost))
        self.assertTrue(os.path.isdir(ghost))

    def test_work_touched_meanwhile_is_not_abandoned(self):
        # The other host moved one more file in: its work goes on.
        staging = self.make_leftover(storage.STAGING, host='compute-b')
        self.abandoned(at_start=False)
        self.clock.advance(storage.STALE_SECONDS - 60)
        disks.add_files(staging, 'disk.info')
        self.clock.advance(120)
        self.assertEqual([], self.abandoned(at_start=False))
        self.assertEqual([staging], self.abandoned(
            at_start=False, age=storage.STALE_SECONDS + 60))

    def test_timestamps_from_a_skewed_clock_age_nothing(self):
        # A network filesystem may stamp files with the writing host's
        # clock (GlusterFS does): the other host's is two hours behind, or
        # this host's a day ahead. Its fresh work is not stale.
        staging = self.make_leftover(storage.STAGING, host='compute-b')
        disks.age(staging, 7200)
        with mock.patch('time.time', return_value=time.time() + 86400):
            self.assertEqual([], self.abandoned(at_start=False))
            self.clock.advance(storage.STALE_SECONDS - 60)
            self.assertEqual([], self.abandoned(at_start=False))

    def test_timestamps_from_the_future_delay_nothing(self):
        # Stamped two hours ahead by the other host's clock: once it stays
        # untouched for STALE_SECONDS, it is abandoned all the same.
        staging = self.make_leftover(storage.STAGING, host='compute-b')
        disks.age(staging, -7200)
        self.assertEqual([staging], self.abandoned(
            at_start=False, age=storage.STALE_SECONDS + 60))

    def test_a_restarted_host_watches_other_hosts_work_anew(self):
        staging = self.make_leftover(storage.STAGING, host='compute-b')
        self.abandoned(at_start=False)
        self.clock.advance(storage.STALE_SECONDS + 60)
        self.store = disks.make_store(self.instances_path)
        self.assertEqual([], self.abandoned(at_start=True))
        self.assertEqual([staging], self.abandoned(
            at_start=False, age=storage.STALE_SECONDS + 60))

    def test_every_quarantine_is_returned_to_every_host(self):
        # Who may resolve one depends on its instance and on its host: the
        # recovery decides.
        mine = self.make_leftover(storage.QUARANTINE)
        theirs = self.make_leftover(storage.QUARANTINE, host='compute-b')
        self.assertEqual(sorted([mine, theirs]), sorted(self.abandoned(
            at_start=False, age=0)))

    def test_remove_tree_tolerates_a_tree_removed_meanwhile(self):
        trash = self.make_leftover(storage.TRASH)
        real_rmdir = os.rmdir

        removed = []

        def another_host_got_there_first(path, *args, **kwargs):
            # Once: the other host's rmtree calls this same os.rmdir.
            if not removed:
                removed.append(path)
                shutil.rmtree(trash, ignore_errors=True)
            return real_rmdir(path, *args, **kwargs)

        with mock.patch('os.rmdir', side_effect=another_host_got_there_first):
            self.assertTrue(safe_files.remove_tree(trash))
        self.assertFalse(os.path.exists(trash))
        self.assertFalse(safe_files.remove_tree(trash))

    def test_finish_staging_publishes_an_interrupted_keep(self):
        record = self.keep_qcow2()
        staging = os.path.join(self.store.path, '.staging-%s-1234abcd-%s.%s'
                               % (self.store.host_tag, INSTANCE, SNAPSHOT))
        os.rename(self.kept_dir, staging)
        disks.add_files(staging, 'disk.swap')
        [item] = self.store.inventory()[2]

        self.assertTrue(self.store.finish_staging(item))

        self.assertEqual(record, self.store.find(INSTANCE, SNAPSHOT))
        self.assertEqual(['disk', 'disk.info', storage.RECORD_NAME],
                         sorted(os.listdir(self.kept_dir)))


class TestSpace(StoreTestCase):

    def test_used_bytes_is_zero_without_kept_directory(self):
        self.assertEqual(0, self.store.used_bytes())

    def test_used_bytes_is_zero_with_an_empty_kept_directory(self):
        os.makedirs(self.store.path)
        self.assertEqual(0, self.store.used_bytes())

    def test_used_bytes_counts_the_allocated_bytes_of_kept_disks(self):
        # A sparse 64 MiB disk of which 1 MiB is written.
        disks.make_raw_instance(self.instances_path, INSTANCE,
                                size=64 * 1024 * 1024)
        disks.qemu_io('raw', os.path.join(self.inst_dir, 'disk'),
                      'write -P 0x5a 0 1M')
        record = self.store.keep(INSTANCE, SNAPSHOT, 'raw')

        used = disks.make_store(self.instances_path).used_bytes()

        allocated = sum(os.lstat(os.path.join(self.kept_dir, f)).st_blocks
                        for f in record.files) * 512
        self.assertEqual(allocated, used)
        self.assertEqual(allocated, record.allocated_bytes)
        self.assertGreaterEqual(used, 1024 * 1024)
        self.assertLess(used, 64 * 1024 * 1024)

    def test_used_bytes_follows_this_hosts_keeps_claims_and_reclaims(self):
        self.assertEqual(0, self.store.used_bytes())
        one = self.keep_qcow2()
        self.assertEqual(one.allocated_bytes, self.store.used_bytes())
        other = self.keep_qcow2(instance=OTHER_INSTANCE)
        self.assertGreater(one.allocated_bytes, 0)
        self.assertEqual(one.allocated_bytes + other.allocated_bytes,
                         self.store.used_bytes())
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertEqual(other.allocated_bytes, self.store.used_bytes())
        self.store.reclaim(other, 'for the test')
        self.assertEqual(0, self.store.used_bytes())

    def test_used_bytes_reads_no_file_once_counted(self):
        self.keep_qcow2()
        used = self.store.used_bytes()
        with mock.patch('os.scandir', side_effect=AssertionError('walked')):
            self.assertEqual(used, self.store.used_bytes())

    def test_another_hosts_keep_counts_from_the_next_inventory(self):
        other_host = disks.make_store(self.instances_path, 'compute-b')
        self.assertEqual(0, self.store.used_bytes())
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        record = other_host.keep(INSTANCE, SNAPSHOT, 'qcow2')
        self.assertEqual(0, self.store.used_bytes())
        self.store.inventory()
        self.assertEqual(record.allocated_bytes, self.store.used_bytes())

    def test_free_percent_is_the_free_share_of_the_filesystem(self):
        free = self.store.free_percent()
        usage = shutil.disk_usage(self.instances_path)
        self.assertGreaterEqual(free, 0.0)
        self.assertLessEqual(free, 100.0)
        self.assertAlmostEqual(100.0 * usage.free / usage.total, free,
                               delta=1.0)


class TestSnapshotPendingRecord(StoreTestCase):
    """The record field of ``snapshot_upload = after_offload``."""

    def keep_pending(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        return self.store.keep(INSTANCE, SNAPSHOT, 'qcow2',
                               snapshot_pending=True)

    def test_a_pending_record_round_trips(self):
        record = self.keep_pending()
        self.assertTrue(record.snapshot_pending)
        self.assertEqual(record, self.read_record_file(self.kept_dir))
        self.assertEqual(record, storage.KeptDiskRecord.from_json(
            record.to_json()))

    def test_keep_writes_not_pending_by_default(self):
        self.assertFalse(self.keep_qcow2().snapshot_pending)
        self.assertFalse(self.read_record_file(
            self.kept_dir).snapshot_pending)

    def write_pending(self, value):
        record = self.keep_qcow2()
        data = json.loads(record.to_json())
        if value is None:
            del data['snapshot_pending']
        else:
            data['snapshot_pending'] = value
        with open(os.path.join(self.kept_dir, storage.RECORD_NAME),
                  'w') as f:
            f.write(json.dumps(data))
        return record

    def test_a_record_older_than_the_field_is_not_pending(self):
        record = self.write_pending(None)
        self.assertEqual(record, self.store.find(INSTANCE, SNAPSHOT))
        self.assertFalse(self.store.find(INSTANCE, SNAPSHOT).snapshot_pending)

    def test_a_pending_field_that_is_not_a_bool_is_damaged(self):
        # 1 or "false" would read as true or false by accident: neither is
        # what the plugin writes.
        for value in (1, 0, 'false', [], {}):
            self.write_pending(value)
            self.assertIsNone(self.store.find(INSTANCE, SNAPSHOT), value)
            kept, [damaged], _in_flight = self.store.inventory()
            self.assertEqual([], kept)
            self.assertIn('snapshot_pending', damaged.problem)
            shutil.rmtree(self.kept_dir)

    def test_mark_uploaded_rewrites_the_record_not_pending(self):
        record = self.keep_pending()
        self.assertTrue(self.store.mark_uploaded(record))
        self.assertEqual(dataclasses.replace(record, snapshot_pending=False),
                         self.store.find(INSTANCE, SNAPSHOT))
        self.assertEqual(['disk', 'disk.info', storage.RECORD_NAME],
                         sorted(os.listdir(self.kept_dir)))

    def test_mark_uploaded_of_a_claimed_disk_writes_nothing(self):
        record = self.keep_pending()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertFalse(self.store.mark_uploaded(record))
        self.assertFalse(os.path.exists(self.kept_dir))
        # The claimed record still says pending: the unshelve decides.
        self.assertTrue(self.store.claimed_record(INSTANCE).snapshot_pending)

    def test_unchanged_while_kept_as_it_was_kept(self):
        record = self.keep_pending()
        self.assertTrue(self.store.unchanged(record))

    def test_not_unchanged_once_claimed(self):
        record = self.keep_pending()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertFalse(self.store.unchanged(record))

    def test_not_unchanged_once_the_disk_was_written(self):
        record = self.keep_pending()
        disks.qemu_io('qcow2', os.path.join(self.kept_dir, 'disk'),
                      'write -P 0x5a 0 4k')
        self.assertFalse(self.store.unchanged(record))

    def test_not_unchanged_when_only_the_mtime_moved(self):
        record = self.keep_pending()
        disk = os.path.join(self.kept_dir, 'disk')
        disks.age(disk, 60)
        self.assertEqual(record.disk_size, os.lstat(disk).st_size)
        self.assertFalse(self.store.unchanged(record))

    def test_not_unchanged_when_the_disk_became_a_link(self):
        record = self.keep_pending()
        disk = os.path.join(self.kept_dir, 'disk')
        os.rename(disk, disk + '.real')
        os.symlink(disk + '.real', disk)
        self.assertFalse(self.store.unchanged(record))

    def test_not_unchanged_when_a_directory_stands_for_the_disk(self):
        # Same size and mtime as the raw disk it replaced: only its type
        # tells.
        probe = os.path.join(self.instances_path, 'probe')
        os.makedirs(probe)
        size = os.lstat(probe).st_size
        # qemu-img rounds sizes up to whole sectors; a directory's size is
        # what its filesystem says (4096 on ext4, 40 on an empty tmpfs one).
        os.truncate(disks.make_raw_instance(self.instances_path, INSTANCE),
                    size)
        record = self.store.keep(INSTANCE, SNAPSHOT, 'raw',
                                 snapshot_pending=True)
        disk = os.path.join(self.kept_dir, 'disk')
        os.unlink(disk)
        os.rename(probe, disk)
        os.utime(disk, ns=(record.disk_mtime_ns, record.disk_mtime_ns))
        st = os.lstat(disk)
        self.assertEqual((record.disk_size, record.disk_mtime_ns),
                         (st.st_size, st.st_mtime_ns))
        self.assertFalse(self.store.unchanged(record))


class TestUploadLease(StoreTestCase):

    def setUp(self):
        super().setUp()
        self.record = self.keep_qcow2()
        self.other = disks.make_store(self.instances_path, 'compute-b')

    def take(self, store=None, at_start=False):
        return (store or self.store).leases.take(self.kept_dir,
                                                 at_start=at_start)

    def leases(self):
        return sorted(n for n in os.listdir(self.kept_dir)
                      if n.startswith(upload_lease.UPLOAD_LEASE))

    def newest(self):
        return os.path.join(self.kept_dir, self.leases()[-1])

    def holder(self):
        with open(self.newest()) as f:
            return f.read()

    def make_stale(self, *watchers):
        """The lease untouched while ``watchers`` watched it, long enough."""
        for store in watchers:
            store.untouched_for(self.newest())
        self.clock.advance(upload_lease.UPLOAD_LEASE_SECONDS + 60)

    def test_take_gives_a_token_written_in_the_lease(self):
        token = self.take()
        self.assertEqual('1/', token[:2])
        self.assertTrue(token[2:].startswith(self.store.host_tag + '-'))
        self.assertEqual(token[2:], self.holder())
        self.assertEqual([upload_lease.UPLOAD_LEASE + '.1'], self.leases())
        self.assertEqual(0o600, os.lstat(self.newest()).st_mode & 0o777)

    def test_a_live_lease_is_not_taken_by_another_host(self):
        token = self.take()
        self.assertIsNone(self.take(self.other))
        self.assertIsNone(self.take(self.other, at_start=True))
        self.assertEqual(token[2:], self.holder())

    def test_a_stale_lease_is_taken_over_and_its_holder_loses_it(self):
        token = self.take()
        self.make_stale(self.other)
        taken = self.take(self.other)
        self.assertEqual('2/', taken[:2])
        self.assertEqual(taken[2:], self.holder())
        self.assertRaises(accel_exc.LeaseLost, self.store.leases.renew,
                          self.kept_dir, token)
        # The stale lease is gone, not left beside the new one.
        self.assertEqual([upload_lease.UPLOAD_LEASE + '.2'], self.leases())

    def test_a_takeover_is_logged_and_a_first_lease_is_not(self):
        logged = self.useFixture(fixtures.FakeLogger(
            name='nova_shelve_accel.upload_lease'))
        self.take()
        self.assertNotIn('Took over', logged.output)
        self.make_stale(self.other)
        self.take(self.other)
        self.assertIn('Took over the upload lease in %s (generation 2)'
                      % self.kept_dir, logged.output)

    def test_two_hosts_taking_over_the_same_lease_cannot_both_win(self):
        # Both judged the lease abandoned. The second used to rename away
        # the fresh lease the first had just created, and both uploaded.
        self.take()
        third = disks.make_store(self.instances_path, 'compute-c')
        self.make_stale(self.other, third)
        judged = []
        real_abandoned = upload_lease.UploadLeases._abandoned

        def abandoned(leases, path, at_start):
            verdict = real_abandoned(leases, path, at_start)
            judged.append(leases.host_tag)
            if len(judged) == 1:
                # compute-c, judging in the same instant, takes it first.
                self.assertIsNotNone(self.take(third))
            return verdict

        with mock.patch.object(upload_lease.UploadLeases, '_abandoned',
                               abandoned):
            self.assertIsNone(self.take(self.other))
        self.assertTrue(self.holder().startswith(third.host_tag + '-'))
        self.assertEqual([upload_lease.UPLOAD_LEASE + '.2'], self.leases())

    def test_a_holder_that_finds_a_newer_generation_has_lost(self):
        token = self.take()
        self.make_stale(self.other)
        self.take(self.other)
        # However its own file came back (a slow storage, say).
        with open(os.path.join(self.kept_dir,
                               upload_lease.UPLOAD_LEASE + '.1'), 'w') as f:
            f.write(token[2:])
        error = self.assertRaises(accel_exc.LeaseLost,
                                  self.store.leases.check,
                                  self.kept_dir, token)
        self.assertIn('took over', str(error))

    def test_a_lease_of_an_earlier_release_is_the_0th_generation(self):
        with open(os.path.join(self.kept_dir, upload_lease.UPLOAD_LEASE),
                  'w') as f:
            f.write('%s-12345678' % self.other.host_tag)
        self.assertIsNone(self.take())
        self.make_stale(self.store)
        self.assertEqual('1/', self.take()[:2])
        self.assertEqual([upload_lease.UPLOAD_LEASE + '.1'], self.leases())

    def test_a_lease_younger_than_its_lifetime_is_live(self):
        self.take()
        self.assertIsNone(self.take(self.other))
        self.clock.advance(upload_lease.UPLOAD_LEASE_SECONDS - 60)
        self.assertIsNone(self.take(self.other))

    def test_a_lease_first_seen_is_live_however_old_its_timestamp(self):
        # Its holder's clock is two hours behind (GlusterFS stamps files
        # with the writing client's clock), or this host's a day ahead.
        self.take()
        disks.age(self.newest(), 7200)
        with mock.patch('time.time', return_value=time.time() + 86400):
            self.assertIsNone(self.take(self.other))
            self.clock.advance(upload_lease.UPLOAD_LEASE_SECONDS - 60)
            self.assertIsNone(self.take(self.other))

    def test_a_lease_stamped_in_the_future_is_taken_over_once_stale(self):
        # Its dead holder's clock was two hours ahead.
        self.take()
        disks.age(self.newest(), -7200)
        self.make_stale(self.other)
        self.assertEqual('2/', self.take(self.other)[:2])

    def test_a_renewed_lease_stays_live_whatever_its_holders_clock(self):
        # Each renewal stamps the lease with the holder's clock, two hours
        # behind: a change all the same.
        token = self.take()
        self.assertIsNone(self.take(self.other))
        for _ in range(3):
            self.clock.advance(upload_lease.UPLOAD_LEASE_SECONDS // 2)
            self.store.leases.renew(self.kept_dir, token)
            disks.age(self.newest(), 7200 - self.clock.offset)
            self.assertIsNone(self.take(self.other))

    def test_own_lease_is_taken_over_at_start_only(self):
        # A restarted host runs no upload yet: what it held is abandoned.
        self.take()
        restarted = disks.make_store(self.instances_path)
        self.assertIsNone(self.take(restarted))
        token = self.take(restarted, at_start=True)
        self.assertIsNotNone(token)
        self.assertEqual(token[2:], self.holder())

    def test_renew_touches_the_lease(self):
        token = self.take()
        self.make_stale(self.other)
        self.store.leases.renew(self.kept_dir, token)
        self.assertIsNone(self.take(self.other))

    def test_renew_of_a_claimed_disk_loses_the_lease(self):
        token = self.take()
        self.store.claim(INSTANCE, SNAPSHOT)
        error = self.assertRaises(accel_exc.LeaseLost,
                                  self.store.leases.renew,
                                  self.kept_dir, token)
        self.assertIn('is gone', str(error))

    def test_take_of_a_claimed_disk_gives_nothing(self):
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertIsNone(self.take())
        self.assertFalse(os.path.exists(self.kept_dir))

    def test_drop_removes_only_our_own_lease(self):
        token = self.take()
        self.store.leases.drop(self.kept_dir, '1/compute-b-12345678')
        self.assertEqual(token[2:], self.holder())
        self.store.leases.drop(self.kept_dir, token)
        self.assertEqual([], self.leases())
        # Nothing left to drop: no error.
        self.store.leases.drop(self.kept_dir, token)

    def test_drop_after_a_takeover_leaves_the_new_lease(self):
        token = self.take()
        self.make_stale(self.other)
        taken = self.take(self.other)
        self.store.leases.drop(self.kept_dir, token)
        self.assertEqual(taken[2:], self.holder())

    def test_finish_claim_removes_the_lease_and_the_record(self):
        self.take()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertTrue(os.path.isfile(os.path.join(
            self.inst_dir, upload_lease.UPLOAD_LEASE + '.1')))
        self.store.finish_claim(INSTANCE)
        self.assertEqual(['disk', 'disk.info'],
                         sorted(os.listdir(self.inst_dir)))


class TestMarkUploaded(StoreTestCase):

    def keep_pending(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        return self.store.keep(INSTANCE, SNAPSHOT, snapshot_pending=True)

    def test_the_record_the_upload_started_from_is_marked(self):
        record = self.keep_pending()
        self.assertTrue(self.store.mark_uploaded(record))
        self.assertFalse(self.store.find(INSTANCE, SNAPSHOT).snapshot_pending)

    def test_a_newer_record_of_a_disk_given_back_stays_as_it_is(self):
        # Claimed while the upload ran, the spawn failed after the guest
        # wrote, and the disk was given back with a record of it as it is
        # now. The uploader's older record must not replace it: the disk
        # would never verify again, and the snapshot does not hold it.
        uploaded = self.keep_pending()
        self.assertTrue(self.store.claim(INSTANCE, SNAPSHOT))
        disks.qemu_io('qcow2', os.path.join(self.inst_dir, 'disk'),
                      'write -P 0x33 0 64k')
        self.store.release(INSTANCE, SNAPSHOT)
        given_back = self.store.find(INSTANCE, SNAPSHOT)
        self.assertNotEqual(uploaded, given_back)

        self.assertFalse(self.store.mark_uploaded(uploaded))

        self.assertEqual(given_back, self.store.find(INSTANCE, SNAPSHOT))
        self.assertTrue(given_back.snapshot_pending)
        self.store.verify(given_back, INSTANCE, SNAPSHOT)

    def test_a_claimed_disk_is_not_marked(self):
        record = self.keep_pending()
        self.store.claim(INSTANCE, SNAPSHOT)
        self.assertFalse(self.store.mark_uploaded(record))
        self.assertTrue(self.store.claimed_record(INSTANCE).snapshot_pending)


class TestMoveInFailure(StoreTestCase):
    """A keep that fails half-way, with and without a pending snapshot."""

    def fail_prune(self):
        return mock.patch.object(storage, '_prune', side_effect=OSError(
            5, 'Input/output error'))

    def test_a_pending_disk_goes_back_to_the_instance_dir(self):
        # The only copy of the data: deleting it would lose the instance.
        disks.make_qcow2_instance(self.instances_path, INSTANCE,
                                  extra_files=('disk.swap',))
        with self.fail_prune():
            self.assertRaises(OSError, self.store.keep, INSTANCE, SNAPSHOT,
                              'qcow2', snapshot_pending=True)
        self.assertEqual(['disk', 'disk.info', 'disk.swap',
                          storage.RECORD_NAME],
                         sorted(os.listdir(self.inst_dir)))
        self.assertEqual([], self.kept_names())

    def test_a_pending_disk_that_cannot_publish_goes_back_too(self):
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        with mock.patch.object(self.store, '_publish', side_effect=OSError(
                28, 'No space left on device')):
            self.assertRaises(OSError, self.store.keep, INSTANCE, SNAPSHOT,
                              'qcow2', snapshot_pending=True)
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))
        self.assertEqual([], self.kept_names())

    def test_a_disk_whose_snapshot_was_uploaded_goes_back_too(self):
        # Its snapshot may be gone since (deleted by its user): deleting a
        # half-kept disk could lose the only copy. The offload that keeps
        # it then deletes the instance directory as stock Nova does.
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        with self.fail_prune():
            self.assertRaises(OSError, self.store.keep, INSTANCE, SNAPSHOT,
                              'qcow2')
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir, 'disk')))
        self.assertEqual([], self.kept_names())

    def test_a_pending_disk_that_cannot_go_back_stays_staged(self):
        # Left for the recovery pass, which publishes it.
        disks.make_qcow2_instance(self.instances_path, INSTANCE)
        real_rename = os.rename

        def no_way_back(src, dst):
            if dst == self.inst_dir:
                raise OSError(5, 'Input/output error')
            return real_rename(src, dst)

        with self.fail_prune(), mock.patch('os.rename', no_way_back):
            self.assertRaises(OSError, self.store.keep, INSTANCE, SNAPSHOT,
                              'qcow2', snapshot_pending=True)
        [item] = self.store.inventory()[2]
        self.assertEqual(storage.STAGING, item.kind)
        self.assertTrue(self.store.finish_staging(item))
        self.assertTrue(self.store.find(INSTANCE, SNAPSHOT).snapshot_pending)
