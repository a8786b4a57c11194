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

"""Uploads of kept disks into their queued snapshots, on real files.

The driver is built on Nova's fake libvirt, the kept disks are real qcow2
files converted by the real qemu-img, and Glance is an in-memory image
service that reads the data as glanceclient does. The uploads run in the
test's thread (``_run``); only the lease's heartbeat runs in Nova's thread
pool, isolated per test.
"""

import dataclasses
import io
import os
import subprocess
import time
from unittest import mock

import fixtures
from oslo_concurrency import processutils
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_utils import units

from nova.compute import vm_states
from nova import exception
from nova import test
from nova.virt import fake

from nova_shelve_accel import compat
from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import upload_lease
from nova_shelve_accel.virt.libvirt import driver as accel_driver
from nova_shelve_accel.virt.libvirt import qemu
from nova_shelve_accel.virt.libvirt import upload
from tests.unit import disks
from tests.unit import driver_fixtures

SNAPSHOT = driver_fixtures.SNAPSHOT
KEY = (uuids.instance, SNAPSHOT)


class UploadTestCase(driver_fixtures.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.glance = self.useFixture(driver_fixtures.FakeGlance())
        self.glance.add(SNAPSHOT)
        self.store = self.drvr._kept_disks
        self.uploader = self.drvr._uploads
        self.clock = self.useFixture(disks.WatchClock())
        cells = self.useFixture(driver_fixtures.CellDatabase())
        self.db, self.saved = cells.instances, cells.saved

    def keep_pending(self, instance_uuid=uuids.instance):
        """A kept disk waiting for its upload, and its instance."""
        self.disk = driver_fixtures.make_disk_with_data(self.instances_path,
                                                        instance_uuid)
        record = self.store.keep(instance_uuid, SNAPSHOT, 'qcow2',
                                 snapshot_pending=True)
        self.kept_disk = os.path.join(
            self.store.kept_dir(instance_uuid, SNAPSHOT), storage.ROOT_DISK)
        self.db[instance_uuid] = self.instance(
            uuid=instance_uuid, vm_state=vm_states.SHELVED_OFFLOADED,
            host=None, os_type='linux', system_metadata={
                'shelved_image_id': SNAPSHOT,
                shelved.KEPT_DISK_KEY: SNAPSHOT,
                shelved.PENDING_UPLOAD_KEY: SNAPSHOT})
        return record

    def run_upload(self, at_start=False):
        self.uploader._run(self.context, KEY, 0, at_start)

    def assert_still_pending(self):
        """Nothing reached Glance; the disk is still the only copy."""
        self.assertEqual('queued', self.glance.images[SNAPSHOT]['status'])
        self.assertNotIn(SNAPSHOT, self.glance.data)
        self.assertTrue(self.store.find(*KEY).snapshot_pending)
        self.assertEqual(SNAPSHOT, self.db[uuids.instance].system_metadata[
            shelved.PENDING_UPLOAD_KEY])
        self.assertEqual([], self.saved)

    def lease_path(self, generation=1):
        return os.path.join(self.store.kept_dir(*KEY),
                            '%s.%d' % (upload_lease.UPLOAD_LEASE, generation))


class TestUpload(UploadTestCase):

    def test_the_upload_is_what_novas_cold_snapshot_uploads(self):
        self.keep_pending()
        expected = driver_fixtures.converted(self, self.kept_disk)

        self.run_upload()

        self.assertEqual(expected, self.glance.data[SNAPSHOT])
        # And the copy holds the disk's data, base and overlay.
        copy = os.path.join(self.useFixture(fixtures.TempDir()).path, 'c')
        with open(copy, 'wb') as f:
            f.write(self.glance.data[SNAPSHOT])
        subprocess.run(('qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2',
                        self.kept_disk, copy), check=True,
                       capture_output=True)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_the_image_gets_the_metadata_of_novas_snapshot(self):
        self.keep_pending()
        instance = self.db[uuids.instance]
        self.run_upload()
        [(image_id, metadata)] = self.glance.updates
        self.assertEqual(SNAPSHOT, image_id)
        self.assertEqual('qcow2', metadata['disk_format'])
        self.assertEqual('bare', metadata['container_format'])
        self.assertEqual('instance-shelved', metadata['name'])
        self.assertTrue(instance.project_id)
        self.assertEqual({'kernel_id': None, 'ramdisk_id': None,
                          'image_location': 'snapshot',
                          'image_state': 'available',
                          'owner_id': instance.project_id,
                          'os_type': 'linux'}, metadata['properties'])

    def test_snapshot_image_format_is_honoured(self):
        self.flags(snapshot_image_format='raw', group='libvirt')
        self.keep_pending()
        expected = driver_fixtures.converted(self, self.kept_disk,
                                             out_format='raw')
        self.run_upload()
        self.assertEqual(expected, self.glance.data[SNAPSHOT])
        self.assertEqual('raw', self.glance.updates[0][1]['disk_format'])

    def test_an_uploaded_disk_is_recorded_and_its_mark_cleared(self):
        record = self.keep_pending()
        self.run_upload()
        self.assertEqual(dataclasses.replace(record,
                                             snapshot_pending=False),
                         self.store.find(*KEY))
        sysmeta = self.db[uuids.instance].system_metadata
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, sysmeta)
        # Still kept: the unshelve in the group reuses it.
        self.assertEqual(SNAPSHOT, sysmeta[shelved.KEPT_DISK_KEY])
        self.assertEqual([(uuids.instance, [None])], self.saved)
        self.assertFalse(os.path.lexists(self.lease_path()))
        self.assertEqual({}, self.uploader._retries)
        self.assertEqual([], os.listdir(os.path.join(self.instances_path,
                                                     'snapshots')))

    def test_a_claim_during_the_stream_abandons_the_upload(self):
        self.keep_pending()

        def claim_after_the_first_chunk(chunks):
            if chunks == 1:
                self.assertTrue(self.store.claim(*KEY))

        self.glance.after_chunk = claim_after_the_first_chunk

        self.assertRaises(accel_exc.UploadAbandoned,
                          self.uploader.upload_pending,
                          self.context, uuids.instance, SNAPSHOT, False)

        # Glance never saw the end of the data.
        self.assertEqual('queued', self.glance.images[SNAPSHOT]['status'])
        self.assertNotIn(SNAPSHOT, self.glance.data)
        self.assertEqual([], self.saved)
        # The lease went with the disk; the unshelve removes it.
        self.assertTrue(os.path.isfile(os.path.join(
            self.instances_path, uuids.instance,
            upload_lease.UPLOAD_LEASE + '.1')))

    def test_an_abandoned_upload_is_not_retried(self):
        self.keep_pending()
        self.glance.after_chunk = lambda chunks: self.store.claim(*KEY)
        self.run_upload()
        self.assertEqual({}, self.uploader._retries)
        self.assertEqual('queued', self.glance.images[SNAPSHOT]['status'])
        self.assertIn('The image stays queued', self.stdlog.logger.output)

    def test_a_claim_during_the_conversion_uploads_nothing(self):
        self.keep_pending()
        real_convert = qemu.convert_for_snapshot

        def convert_then_claim(*args, **kwargs):
            real_convert(*args, **kwargs)
            self.store.claim(*KEY)

        with mock.patch.object(qemu, 'convert_for_snapshot',
                               convert_then_claim):
            self.run_upload()

        self.assertEqual([], self.glance.updates)
        self.assertEqual({}, self.uploader._retries)

    def test_the_conversion_yields_to_guests_and_unshelves(self):
        self.flags(snapshot_compression=True, group='libvirt')
        real_execute = processutils.execute
        commands = []

        def recording_execute(*command, **kwargs):
            commands.append(command)
            return real_execute(*command, **kwargs)

        self.keep_pending()
        with mock.patch.object(processutils, 'execute', recording_execute):
            self.run_upload()

        [convert] = [c for c in commands if 'convert' in c]
        self.assertEqual(('nice', '-n', '19', 'ionice', '-c', '3',
                          'qemu-img', 'convert'), convert[:8])
        self.assertIn('-c', convert)
        self.assertEqual(('-f', 'qcow2'), convert[convert.index('-f'):
                                                  convert.index('-f') + 2])
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_a_disk_changed_since_it_was_kept_is_not_uploaded(self):
        self.keep_pending()
        disks.qemu_io('qcow2', self.kept_disk, 'write -P 0x77 0 4k')
        self.assertRaises(accel_exc.UploadAbandoned,
                          self.uploader.upload_pending,
                          self.context, uuids.instance, SNAPSHOT, False)
        self.assertEqual([], self.glance.updates)

    def test_a_failed_upload_is_retried_with_backoff(self):
        self.keep_pending()
        self.glance.error = ConnectionError('glance is down')

        for failures, wait in ((1, 60), (2, 120)):
            before = time.monotonic()
            self.run_upload()
            after = time.monotonic()
            next_try, counted = self.uploader._retries[KEY]
            self.assertEqual(failures, counted)
            self.assertGreaterEqual(next_try, before + wait)
            self.assertLessEqual(next_try, after + wait)

        self.assert_still_pending()
        # The next try, here or on another host, can take the lease.
        self.assertFalse(os.path.lexists(self.lease_path()))
        self.assertIn('glance is down', self.stdlog.logger.output)

    def test_the_backoff_stops_growing_at_an_hour(self):
        self.keep_pending()
        self.glance.error = ConnectionError('glance is down')
        self.uploader._retries[KEY] = (0, 10)
        before = time.monotonic()
        self.run_upload()
        next_try, counted = self.uploader._retries[KEY]
        self.assertEqual(11, counted)
        self.assertGreaterEqual(next_try, before + upload.RETRY_MAX_SECONDS)
        self.assertLess(next_try, before + 2 * upload.RETRY_MAX_SECONDS)

    def test_a_success_forgets_the_failures(self):
        self.keep_pending()
        self.uploader._retries[KEY] = (0, 3)
        self.run_upload()
        self.assertEqual({}, self.uploader._retries)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_an_image_active_already_is_only_recorded(self):
        # Uploaded before a restart cut the bookkeeping short.
        self.keep_pending()
        self.glance.images[SNAPSHOT]['status'] = 'active'
        self.run_upload()
        self.assertEqual([], self.glance.updates)
        self.assertFalse(self.store.find(*KEY).snapshot_pending)
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY,
                         self.db[uuids.instance].system_metadata)
        self.assertEqual([(uuids.instance, [None])], self.saved)

    def test_an_image_being_saved_by_someone_else_fails(self):
        self.keep_pending()
        self.glance.images[SNAPSHOT]['status'] = 'saving'
        error = self.assertRaises(accel_exc.UploadFailed,
                                  self.uploader.upload_pending,
                                  self.context, uuids.instance, SNAPSHOT,
                                  False)
        self.assertIn('is saving, not queued', str(error))
        self.assertEqual([], self.glance.updates)
        self.assertTrue(self.store.find(*KEY).snapshot_pending)
        self.assertEqual([], self.saved)

    def test_an_image_glance_did_not_activate_is_retried(self):
        self.keep_pending()
        self.glance.status_after_upload = 'saving'
        self.run_upload()
        self.assertEqual(1, self.uploader._retries[KEY][1])
        self.assertTrue(self.store.find(*KEY).snapshot_pending)
        self.assertEqual([], self.saved)
        self.assertIn('Glance took the data but snapshot %s is saving'
                      % SNAPSHOT, self.stdlog.logger.output)

    def test_a_disk_claimed_once_the_image_is_active_keeps_the_mark(self):
        # The unshelve that claimed it clears the mark itself.
        self.keep_pending()
        real_cut_point = upload.faults.cut_point

        def claim_when_activated(name):
            if name == 'upload.activated':
                self.store.claim(*KEY)
            real_cut_point(name)

        with mock.patch.object(upload.faults, 'cut_point',
                               claim_when_activated):
            self.run_upload()

        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])
        self.assertEqual([], self.saved)
        self.assertEqual(SNAPSHOT, self.db[uuids.instance].system_metadata[
            shelved.PENDING_UPLOAD_KEY])
        self.assertEqual({}, self.uploader._retries)

    def test_a_lease_held_by_another_host_uploads_nothing(self):
        self.keep_pending()
        other = disks.make_store(self.instances_path, 'compute-b')
        token = other.leases.take(self.store.kept_dir(*KEY))

        self.run_upload()

        self.assertEqual([], self.glance.updates)
        self.assert_still_pending()
        with open(self.lease_path()) as f:
            self.assertEqual(token, '1/' + f.read())

    def test_an_own_lease_left_by_a_restart_is_taken_over_at_start(self):
        self.keep_pending()
        self.store.leases.take(self.store.kept_dir(*KEY))
        self.run_upload()
        self.assertEqual([], self.glance.updates)
        self.run_upload(at_start=True)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_an_uploaded_disk_is_not_uploaded_again(self):
        record = self.keep_pending()
        self.store.mark_uploaded(record)
        self.run_upload()
        self.assertEqual([], self.glance.updates)

    def test_a_disk_nobody_needs_any_more_is_not_uploaded(self):
        # Deleted, or shelved again with another snapshot: the recovery
        # pass reclaims the disk.
        self.keep_pending()
        self.db[uuids.instance].system_metadata['shelved_image_id'] = (
            driver_fixtures.OLD_SNAPSHOT)
        self.run_upload()
        del self.db[uuids.instance]
        self.run_upload()
        self.assertEqual([], self.glance.updates)
        self.assertFalse(os.path.lexists(self.lease_path()))

    def test_stopping_fails_an_upload_at_its_next_check(self):
        self.keep_pending()
        self.glance.after_chunk = lambda chunks: self.uploader.stop()
        error = self.assertRaises(accel_exc.UploadFailed,
                                  self.uploader.upload_pending,
                                  self.context, uuids.instance, SNAPSHOT,
                                  False)
        self.assertIn('the compute service is stopping', str(error))
        self.assert_still_pending()

    def test_the_upload_waits_its_delay_first(self):
        self.keep_pending()
        waited = []

        class Stopping:
            """Not stopping; records how long the upload waited."""

            def wait(self, timeout):
                waited.append(timeout)
                return False

            def is_set(self):
                return False

        self.uploader._stopping = Stopping()
        self.uploader._run(self.context, KEY, time.monotonic() + 30, False)
        [delay] = waited
        self.assertGreater(delay, 29)
        self.assertLessEqual(delay, 30)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_the_delay_counts_from_the_shelve(self):
        # An upload that waited for a free worker past its delay starts at
        # once.
        self.keep_pending()
        self.uploader._stopping = mock.Mock(is_set=mock.Mock(
            return_value=False))
        self.uploader._run(self.context, KEY, time.monotonic() - 1, False)
        self.uploader._stopping.wait.assert_not_called()
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_a_stopped_uploader_starts_nothing(self):
        self.keep_pending()
        self.uploader.stop()
        self.assertFalse(self.uploader.schedule(self.context, *KEY))
        self.uploader._run(self.context, KEY, time.monotonic() + 5, False)
        self.assertEqual([], self.glance.updates)
        self.assertEqual({}, self.uploader._retries)


class RecordingStop:
    """Not stopping; runs ``on_wait`` at each wait instead of sleeping."""

    def __init__(self, on_wait):
        self.waits = 0
        self._on_wait = on_wait

    def wait(self, timeout):
        self.waits += 1
        self._on_wait(self.waits)
        return False

    def is_set(self):
        return False


class TestSnapshotLost(UploadTestCase):
    """A queued image that disappears: no retries for ever, no loss."""

    def test_a_deleted_image_stops_the_upload_for_good(self):
        self.keep_pending()
        del self.glance.images[SNAPSHOT]

        self.run_upload()

        self.assertIn(KEY, self.uploader._lost)
        self.assertNotIn(KEY, self.uploader._retries)
        self.assertTrue(self.store.find(*KEY).snapshot_pending)
        self.assertIn('nova-shelve-accel kept restore %s' % uuids.instance,
                      self.stdlog.logger.output)
        # The scans do not start it again.
        started = []
        self.useFixture(fixtures.MockPatchObject(
            self.uploader, 'schedule',
            side_effect=lambda *args, **kwargs: started.append(args)))
        self.uploader.scan(at_start=False)
        self.assertEqual([], started)

    def test_an_image_glance_killed_stops_it_too(self):
        self.keep_pending()
        self.glance.images[SNAPSHOT]['status'] = 'killed'
        self.run_upload()
        self.assertIn(KEY, self.uploader._lost)
        self.assertEqual([], self.glance.updates)

    def test_the_upload_lifts_the_protection_once_active(self):
        self.keep_pending()
        self.glance.images[SNAPSHOT]['protected'] = True
        self.run_upload()
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])
        self.assertFalse(self.glance.images[SNAPSHOT]['protected'])


class TestUploadFromQuarantine(UploadTestCase):
    """A pending disk quarantined after a failed spawn still gets uploaded.

    Its host may be down for long: the snapshot must not wait for it.
    """

    def quarantine(self):
        self.keep_pending()
        self.assertTrue(self.store.claim(*KEY))
        # The failed guest wrote to it before it was quarantined.
        disks.qemu_io('qcow2', os.path.join(self.instances_path,
                                            uuids.instance, 'disk'),
                      'write -P 0x77 0 64k')
        path = self.store.quarantine(*KEY)
        return path

    def test_any_host_uploads_it_as_it_is_now(self):
        path = self.quarantine()
        expected = driver_fixtures.converted(self, os.path.join(path, 'disk'))
        other = accel_driver.PartialOffloadLibvirtDriver(fake.FakeVirtAPI(),
                                                         False)
        other._kept_disks = disks.make_store(self.instances_path,
                                             'compute-b')
        other._uploads._store = other._kept_disks

        other._uploads._run(self.context, KEY, 0, False)

        self.assertEqual(expected, self.glance.data[SNAPSHOT])
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY,
                         self.db[uuids.instance].system_metadata)
        # Still quarantined, for its host to resolve.
        self.assertTrue(os.path.isdir(path))
        self.assertEqual([], [n for n in os.listdir(path)
                              if n.startswith(upload_lease.UPLOAD_LEASE)])

    def test_the_scan_finds_it(self):
        self.quarantine()
        started = []
        self.useFixture(fixtures.MockPatchObject(
            self.uploader, 'schedule',
            side_effect=lambda *args, **kwargs: started.append(args[1:])))
        self.uploader.scan(at_start=False)
        self.assertEqual([KEY], started)

    def test_a_quarantined_disk_that_is_not_pending_is_left(self):
        self.keep_pending()
        self.store.mark_uploaded(self.store.find(*KEY))
        self.store.claim(*KEY)
        self.store.quarantine(*KEY)
        self.assertEqual([], self.store.pending_disks())


class TestScratch(UploadTestCase):
    """Copies of the disk in the snapshots directory never pile up."""

    def setUp(self):
        super().setUp()
        self.snapshots = os.path.join(self.instances_path, 'snapshots')
        os.makedirs(self.snapshots)
        self.other = disks.make_store(self.instances_path, 'compute-b')

    def scratch(self, store):
        path = os.path.join(self.snapshots, '%s%s-%s' % (
            upload.SCRATCH_PREFIX, store.host_tag, '0badc0de'))
        os.makedirs(path)
        disks.add_files(path, SNAPSHOT)
        return path

    def test_the_copy_is_made_in_a_scratch_directory_named_for_the_host(
            self):
        self.keep_pending()
        seen = []
        real_convert = qemu.convert_for_snapshot

        def convert(disk, disk_format, copy, image_format, busy=None):
            seen.append(os.path.basename(os.path.dirname(copy)))
            return real_convert(disk, disk_format, copy, image_format, busy)

        with mock.patch.object(qemu, 'convert_for_snapshot', convert):
            self.run_upload()
        self.assertTrue(seen[0].startswith(
            upload.SCRATCH_PREFIX + self.store.host_tag + '-'))
        self.assertEqual([], os.listdir(self.snapshots))

    def test_own_scratch_is_removed_at_start(self):
        # Left by a kill -9 during an upload: a full copy of the disk.
        path = self.scratch(self.store)
        self.uploader.clean_scratch(at_start=True)
        self.assertFalse(os.path.exists(path))

    def test_own_scratch_of_no_running_upload_is_removed_by_the_pass(self):
        path = self.scratch(self.store)
        self.uploader.clean_scratch(at_start=False)
        self.assertFalse(os.path.exists(path))

    def test_the_scratch_of_a_running_upload_is_left(self):
        path = self.scratch(self.store)
        self.uploader._scratch.add(path)
        self.uploader.clean_scratch(at_start=False)
        self.assertTrue(os.path.exists(path))

    def test_another_hosts_fresh_scratch_is_left(self):
        path = self.scratch(self.other)
        self.uploader.clean_scratch(at_start=True)
        self.assertTrue(os.path.exists(path))

    def test_another_hosts_scratch_untouched_for_long_is_removed(self):
        path = self.scratch(self.other)
        self.uploader.clean_scratch(at_start=False)
        self.clock.advance(storage.STALE_SECONDS + 60)
        self.uploader.clean_scratch(at_start=False)
        self.assertFalse(os.path.exists(path))

    def test_another_hosts_scratch_written_meanwhile_is_left(self):
        # Its conversion writes into the copy, not into the directory.
        path = self.scratch(self.other)
        self.uploader.clean_scratch(at_start=False)
        self.clock.advance(storage.STALE_SECONDS - 60)
        with open(os.path.join(path, SNAPSHOT), 'ab') as f:
            f.write(b'more')
        self.clock.advance(120)
        self.uploader.clean_scratch(at_start=False)
        self.assertTrue(os.path.exists(path))

    def test_another_hosts_scratch_stamped_long_ago_is_left(self):
        # Its host's clock is two hours behind: its fresh copy is in use.
        path = self.scratch(self.other)
        disks.age(os.path.join(path, SNAPSHOT), 7200)
        disks.age(path, 7200)
        self.uploader.clean_scratch(at_start=False)
        self.assertTrue(os.path.exists(path))

    def test_other_entries_are_left_alone(self):
        disks.add_files(self.snapshots, 'tmpabcdef')
        os.makedirs(os.path.join(self.snapshots, 'tmp12345'))
        self.uploader.clean_scratch(at_start=True)
        self.assertEqual(['tmp12345', 'tmpabcdef'],
                         sorted(n for n in os.listdir(self.snapshots)
                                if not n.startswith('.clock-')))

    def test_a_missing_snapshots_directory_is_fine(self):
        os.rmdir(self.snapshots)
        self.uploader.clean_scratch(at_start=True)
        self.assertNotIn('Cannot look', self.stdlog.logger.output)


class TestYielding(UploadTestCase):
    """The upload keeps out of the way of the offload and of guest starts."""

    def test_the_upload_starts_once_the_offload_is_over(self):
        self.keep_pending()
        instance = self.db[uuids.instance]
        instance.task_state = 'shelving_offloading'

        def offload_goes_on(waits):
            # Nothing converted or sent while the offload runs.
            self.assertEqual([], self.glance.updates)
            if waits == 3:
                instance.task_state = None

        self.uploader._stopping = RecordingStop(offload_goes_on)
        self.run_upload()
        self.assertEqual(3, self.uploader._stopping.waits)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_an_offload_that_never_ends_delays_the_upload_only_so_long(self):
        self.keep_pending()
        self.db[uuids.instance].task_state = 'shelving_offloading'
        clock = iter(range(0, 1000, 10))
        self.useFixture(fixtures.MockPatch(
            'time.monotonic', side_effect=lambda: next(clock)))
        self.uploader._stopping = RecordingStop(lambda waits: None)
        instance = self.uploader._offloaded_instance(uuids.instance)
        self.assertEqual(uuids.instance, instance.uuid)
        self.assertEqual(upload.OFFLOAD_WAIT_SECONDS // 10 - 1,
                         self.uploader._stopping.waits)

    def test_the_upload_pauses_while_this_host_starts_a_guest(self):
        self.keep_pending()
        self.drvr._spawning.add(uuids.other)
        chunks_then = []

        def guest_starting(waits):
            chunks_then.append(len(self.glance.data.get(SNAPSHOT, b'')))
            if waits == 4:
                self.drvr._spawning.discard(uuids.other)

        self.uploader._stopping = RecordingStop(guest_starting)
        self.run_upload()
        # It waited before converting, and sent nothing meanwhile.
        self.assertEqual([0, 0, 0, 0], chunks_then)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_the_conversion_is_paused_while_this_host_starts_guests(self):
        self.keep_pending()
        real_convert = qemu.convert_for_snapshot
        seen = []

        def convert(*args, busy=None):
            seen.append(busy)
            real_convert(*args, busy=busy)

        with mock.patch.object(qemu, 'convert_for_snapshot', convert):
            self.run_upload()
        self.assertEqual([self.drvr.spawns_in_progress], seen)

    def test_a_host_that_never_stops_starting_guests_delays_only_so_long(self):
        self.drvr._spawning.add(uuids.other)
        clock = iter(range(0, 1000, 5))
        self.useFixture(fixtures.MockPatch(
            'time.monotonic', side_effect=lambda: next(clock)))
        self.uploader._stopping = RecordingStop(lambda waits: None)
        self.uploader._yield_to_spawns()
        self.assertEqual(qemu.SPAWN_YIELD_SECONDS // 5 - 1,
                         self.uploader._stopping.waits)

    def test_a_spawn_is_counted_while_it_runs_and_after_it_fails(self):
        seen = []

        def stock_spawn(*args, **kwargs):
            seen.append(self.drvr.spawns_in_progress())
            raise exception.NovaException('the guest did not start')

        self.stub_out('nova.virt.libvirt.driver.LibvirtDriver.spawn',
                      stock_spawn)
        instance = self.instance(uuid=uuids.booting,
                                 system_metadata={})
        self.assertRaises(exception.NovaException, self.drvr.spawn,
                          self.context, instance, None, [], None, {})
        self.assertEqual([True], seen)
        self.assertFalse(self.drvr.spawns_in_progress())


class TestScheduling(UploadTestCase):
    """Which uploads start; the uploader's pool only records them."""

    def setUp(self):
        super().setUp()
        self.started = []
        self.uploader._executor = mock.Mock(
            submit=lambda fn, *args: self.started.append((fn, args)))

    def keys(self):
        return [args[1] for _fn, args in self.started]

    def test_schedule_starts_one_upload_per_disk(self):
        before = time.monotonic()
        self.assertTrue(self.uploader.schedule(self.context, *KEY, delay=30))
        self.assertFalse(self.uploader.schedule(self.context, *KEY))
        [(_fn, (context, key, not_before, at_start))] = self.started
        self.assertEqual((self.context, KEY, False),
                         (context, key, at_start))
        self.assertGreaterEqual(not_before, before + 30)
        self.assertLessEqual(not_before, time.monotonic() + 30)

    def test_scan_starts_pending_uploads_only(self):
        self.keep_pending()
        disks.make_qcow2_instance(self.instances_path, uuids.uploaded)
        self.store.keep(uuids.uploaded, SNAPSHOT, 'qcow2')
        self.uploader.scan(at_start=True)
        [(_fn, (context, key, not_before, at_start))] = self.started
        self.assertEqual((KEY, True), (key, at_start))
        self.assertLessEqual(not_before, time.monotonic())
        self.assertTrue(context.is_admin)

    def test_scan_waits_for_the_next_try_of_a_failed_upload(self):
        self.keep_pending()
        self.uploader._retries[KEY] = (time.monotonic() + 600, 1)
        self.uploader.scan(at_start=False)
        self.assertEqual([], self.started)
        self.uploader._retries[KEY] = (time.monotonic() - 1, 1)
        self.uploader.scan(at_start=False)
        self.assertEqual([KEY], self.keys())

    def test_scan_if_due_scans_at_most_every_scan_seconds(self):
        self.keep_pending()
        self.uploader.scan_if_due()
        self.assertEqual([KEY], self.keys())
        # The upload ended (failed with no retry due, or another host has
        # it): only the next due scan looks again.
        self.uploader._active.clear()
        self.uploader.scan_if_due()
        self.assertEqual([KEY], self.keys())
        self.uploader._last_scan -= upload.SCAN_SECONDS + 1
        self.uploader.scan_if_due()
        self.assertEqual([KEY, KEY], self.keys())

    def test_scan_waits_the_upload_delay_from_first_sight(self):
        # Another host kept the disk: this one waits the delay before it
        # uploads, counted from when its scan first saw the record.
        self.flags(snapshot_upload_delay=600, group='shelve_accel')
        self.keep_pending()
        self.uploader.scan(at_start=False)
        self.clock.advance(540)
        self.uploader.scan(at_start=False)
        self.assertEqual([], self.started)
        self.clock.advance(120)
        self.uploader.scan(at_start=False)
        self.assertEqual([KEY], self.keys())

    def test_a_record_stamped_long_ago_still_waits_the_delay(self):
        # The keeping host's clock is two hours behind: its record looks
        # old, the disk was kept a moment ago.
        self.flags(snapshot_upload_delay=600, group='shelve_accel')
        self.keep_pending()
        disks.age(os.path.join(self.store.kept_dir(*KEY),
                               storage.RECORD_NAME), 7200)
        self.uploader.scan(at_start=False)
        self.assertEqual([], self.started)

    def test_a_storage_that_cannot_be_read_starts_nothing(self):
        with mock.patch.object(self.store, 'inventory',
                               side_effect=PermissionError(13, 'denied')):
            self.uploader.scan(at_start=True)
        self.assertEqual([], self.started)
        self.assertIn('Cannot look for pending snapshot uploads',
                      self.stdlog.logger.output)


class TestUploadThreads(UploadTestCase):
    """Uploads run in a pool of their own, beside Nova's."""

    def test_uploads_take_no_thread_of_novas_pools(self):
        # Nova builds instances in its long-task pool. Uploads once ran
        # there: those waiting for an upload slot held its threads, and the
        # running upload's heartbeat queued behind them while the upload
        # waited for it. On the loopback cloud, 30 fast shelves at once
        # left 23 snapshots queued and the pool stuck.
        self.useFixture(fixtures.MockPatch(
            compat.thread_start_hook(),
            side_effect=AssertionError('a thread of a Nova pool')))
        instances = (uuids.instance, uuids.other)
        for instance_uuid in instances:
            self.keep_pending(instance_uuid)
            self.assertTrue(self.uploader.schedule(self.context,
                                                   instance_uuid, SNAPSHOT))
        deadline = time.monotonic() + 60
        while any(self.store.find(i, SNAPSHOT).snapshot_pending
                  for i in instances):
            if time.monotonic() > deadline:
                self.fail('the uploads did not finish within 60 s')
            time.sleep(0.05)
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])

    def test_stop_leaves_queued_uploads_undone(self):
        self.keep_pending()
        self.uploader.stop()
        self.assertFalse(self.uploader.schedule(self.context, *KEY))
        self.assert_still_pending()


class TestHeartbeat(UploadTestCase):

    class Ticks:
        """An event whose wait times out ``ticks`` times, then is set."""

        def __init__(self, ticks):
            self.ticks = ticks

        def wait(self, timeout):
            self.ticks -= 1
            return self.ticks < 0

    def test_the_heartbeat_keeps_the_lease_young(self):
        self.keep_pending()
        kept_dir = self.store.kept_dir(*KEY)
        token = self.store.leases.take(kept_dir)
        disks.age(self.lease_path())
        before = os.lstat(self.lease_path()).st_mtime
        beat = upload._Heartbeat(self.store, kept_dir, token)
        beat._done = self.Ticks(1)
        beat._beat()
        beat.check()
        self.assertGreater(os.lstat(self.lease_path()).st_mtime, before + 60)

    def test_a_lease_taken_over_abandons_the_upload(self):
        self.keep_pending()
        kept_dir = self.store.kept_dir(*KEY)
        token = self.store.leases.take(kept_dir)
        other = disks.make_store(self.instances_path, 'compute-b')
        self.assertIsNone(other.leases.take(kept_dir))
        self.clock.advance(upload_lease.UPLOAD_LEASE_SECONDS + 60)
        self.assertIsNotNone(other.leases.take(kept_dir))
        beat = upload._Heartbeat(self.store, kept_dir, token)
        beat._done = self.Ticks(3)
        beat._beat()
        self.assertRaises(accel_exc.UploadAbandoned, beat.check)


class TestClearPendingMark(UploadTestCase):

    def pending(self, mark=SNAPSHOT):
        return self.instance(uuid=uuids.instance, system_metadata={
            'shelved_image_id': SNAPSHOT, shelved.PENDING_UPLOAD_KEY: mark})

    def test_the_mark_is_removed_while_the_instance_is_idle(self):
        instance = self.pending()
        self.assertTrue(upload.clear_pending_mark(instance, SNAPSHOT))
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, instance.system_metadata)
        self.assertEqual([(uuids.instance, [None])], self.saved)

    def test_a_busy_instance_keeps_its_mark(self):
        # An unshelve in progress removes the mark itself.
        self.stub_out('nova.objects.Instance.save',
                      mock.Mock(side_effect=exception.UnexpectedTaskStateError(
                          instance_uuid=uuids.instance, expected=[None],
                          actual='unshelving')))
        self.assertFalse(upload.clear_pending_mark(self.pending(), SNAPSHOT))

    def test_a_deleted_instance_has_no_mark_to_clear(self):
        self.stub_out('nova.objects.Instance.save',
                      mock.Mock(side_effect=exception.InstanceNotFound(
                          instance_id=uuids.instance)))
        self.assertFalse(upload.clear_pending_mark(self.pending(), SNAPSHOT))

    def test_the_mark_of_another_snapshot_is_left(self):
        instance = self.pending(mark=driver_fixtures.OLD_SNAPSHOT)
        self.assertTrue(upload.clear_pending_mark(instance, SNAPSHOT))
        self.assertEqual(driver_fixtures.OLD_SNAPSHOT,
                         instance.system_metadata[shelved.PENDING_UPLOAD_KEY])
        self.assertEqual([], self.saved)


class FakeClock:
    """``time`` as the upload module sees it: a clock the test sets."""

    def __init__(self, now):
        self.now = now
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)


class TestCheckedReader(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.checks = 0

    def check(self):
        self.checks += 1

    def reader(self, data, max_mbps=0):
        return upload._CheckedReader(io.BytesIO(data), self.check, max_mbps)

    def test_read_without_size_returns_everything_checked(self):
        data = os.urandom(3 * upload.CHUNK_BYTES + 5)
        self.assertEqual(data, self.reader(data).read())
        # Once at the start, once at the end (less than CHECK_BYTES).
        self.assertEqual(2, self.checks)
        self.assertEqual(data, self.reader(data).read(None))

    def test_read_without_size_stops_when_a_check_fails(self):
        def claimed():
            raise accel_exc.UploadAbandoned('claimed')

        reader = upload._CheckedReader(io.BytesIO(b'x' * 10), claimed, 0)
        self.assertRaises(accel_exc.UploadAbandoned, reader.read)

    def test_reads_are_checked_every_check_bytes_and_at_the_end(self):
        self.useFixture(fixtures.MockPatchObject(upload, 'CHECK_BYTES',
                                                 4096))
        reader = self.reader(b'x' * 10000)
        checked_at = []
        while True:
            before = self.checks
            chunk = reader.read(1024)
            if self.checks != before:
                checked_at.append(reader._read - len(chunk))
            if not chunk:
                break
        self.assertEqual([0, 4096, 8192, 10000], checked_at)

    def test_the_end_is_checked_before_glance_sees_it(self):
        # Glance activates the image when the data ends: a claim during
        # the last chunk must still stop it.
        calls = []
        reader = upload._CheckedReader(
            io.BytesIO(b'x' * 10), lambda: calls.append('check'), 0)
        self.assertEqual(b'x' * 10, reader.read(65536))
        calls.append('data')
        self.assertEqual(b'', reader.read(65536))
        self.assertEqual(['check', 'data', 'check'], calls)

    def test_a_read_returns_at_most_a_chunk(self):
        reader = self.reader(b'x' * (2 * upload.CHUNK_BYTES))
        self.assertEqual(upload.CHUNK_BYTES, len(reader.read(
            10 * upload.CHUNK_BYTES)))

    def test_a_bounded_upload_sleeps_when_ahead_of_its_rate(self):
        clock = FakeClock(100.0)
        self.useFixture(fixtures.MockPatchObject(upload, 'time', clock))
        reader = self.reader(b'x' * (2 * units.Mi), max_mbps=4)
        clock.now = 100.1
        reader.read(units.Mi)
        # 1 MiB at 4 MiB/s takes 0.25 s; 0.1 s have passed.
        self.assertEqual(1, len(clock.slept))
        self.assertAlmostEqual(0.15, clock.slept[0])
        # Behind its rate: no sleep.
        clock.now = 101.0
        reader.read(units.Mi)
        self.assertEqual(1, len(clock.slept))

    def test_an_unbounded_upload_never_sleeps(self):
        clock = FakeClock(100.0)
        self.useFixture(fixtures.MockPatchObject(upload, 'time', clock))
        self.reader(b'x' * (2 * units.Mi)).read()
        self.assertEqual([], clock.slept)


class TestUploadRate(UploadTestCase):

    def test_the_configured_rate_bounds_the_upload(self):
        self.flags(snapshot_upload_max_mib_per_second=2,
                   group='shelve_accel')
        self.keep_pending()
        # The clock never moves: every byte read is ahead of the rate.
        clock = FakeClock(0.0)
        self.useFixture(fixtures.MockPatchObject(upload, 'time', clock))
        self.run_upload()
        size = len(self.glance.data[SNAPSHOT])
        self.assertAlmostEqual(size / (2 * units.Mi), clock.slept[-1])


class TestServiceContext(UploadTestCase):

    def test_uploads_started_by_a_scan_use_the_service_user(self):
        auth = mock.sentinel.service_auth
        with mock.patch.object(compat, 'service_auth_plugin',
                               return_value=auth) as plugin:
            context = upload.service_context()
        plugin.assert_called_once_with('service_user')
        self.assertIs(auth, context.user_auth_plugin)
        self.assertTrue(context.is_admin)
