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

"""Fast shelve (``[shelve_accel] snapshot_upload = after_offload``).

Shelve skips the snapshot of an instance whose root disk is kept: the image
the API created stays ``queued`` and the kept disk is the only copy of the
instance until a host of its storage has uploaded it into that image. These
tests follow the upload through the API, the shared storage and Glance,
whose image life cycle the base class makes that of Glance v2 (a queued
image has no data and cannot be downloaded).

Uploads run in background threads of the compute services. To hold one at a
chosen point, a test puts an ``UploadGate`` in its way, either before the
upload reaches Glance (the host is hung or dead before sending any data) or
inside Glance once the image is ``saving`` (the data is on its way).
"""

import hashlib
import json
import os
import subprocess
import threading
from unittest import mock

import fixtures
from nova import context as nova_context
from nova import objects

from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import upload_lease
from nova_shelve_accel.virt.libvirt import upload
from tests.functional import base
from tests.unit import disks

# How long a gate holds an upload before giving up on the test: a failing
# test then fails its waits instead of leaving a thread blocked.
GATE_SECONDS = base.WAIT_RETRIES * 0.5


class GateTimeout(Exception):
    """An upload was held longer than any test step waits."""


class UploadGate:
    """Holds the uploads of chosen hosts until the test lets each go on."""

    def __init__(self, hosts):
        self.hosts = hosts
        self.held = []      # [(host, threading.Event)], in arrival order
        self._lock = threading.Lock()

    def __call__(self, host):
        if host not in self.hosts:
            return
        go_on = threading.Event()
        with self._lock:
            self.held.append((host, go_on))
        if not go_on.wait(GATE_SECONDS):
            raise GateTimeout('upload of host %s held for %d s'
                              % (host, GATE_SECONDS))

    def release(self, index):
        self.held[index][1].set()

    def release_all(self):
        with self._lock:
            for _host, go_on in self.held:
                go_on.set()


class TestFastShelve(base.ShelveAccelTestBase):

    def setUp(self):
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        super().setUp()

    # -- helpers -----------------------------------------------------------

    def _boot_with_marker(self, host='A', pattern=0x5a):
        server = self.boot(host=host)
        base.write_marker(self.instance_disk(server), pattern)
        return server

    def _shelve_pending(self, server):
        """Shelve; return the server, its snapshot id and its kept dir."""
        server = self.shelve(server)
        self.assert_offloaded_without_resources(server)
        snapshot_id = self.snapshot_id(server)
        kept = self.kept_dir(self.g1_path, server)
        self.assertEqual('%s.%s' % (server['id'], snapshot_id),
                         os.path.basename(kept))
        return server, snapshot_id, kept

    @staticmethod
    def _record(kept):
        with open(os.path.join(kept, storage.RECORD_NAME)) as f:
            return json.load(f)

    @staticmethod
    def _sysmeta(server):
        return objects.Instance.get_by_uuid(
            nova_context.get_admin_context(), server['id'],
            expected_attrs=['system_metadata']).system_metadata

    def _status(self, image_id):
        return self.glance.images[image_id]['status']

    @staticmethod
    def _uploads_idle(uploads):
        """True once no upload is scheduled or running on that uploader.

        Its threads remove their upload from ``_active`` as they end.
        """
        return not uploads._active

    def _wait_for_uploads(self, host):
        uploads = self.computes[host].driver._uploads
        self._wait_for(lambda: self._uploads_idle(uploads))

    def _scan_for_uploads(self, host):
        """Run the resource tracker's periodic of ``host``.

        It looks for uploads nobody runs, at most once a minute: here at
        every call.
        """
        with mock.patch.object(upload, 'SCAN_SECONDS', 0):
            self.update_resources(host)

    def _gate_before_glance(self, hosts):
        """Hold the uploads of ``hosts`` before they reach Glance."""
        gate = UploadGate(hosts)
        self.addCleanup(gate.release_all)
        real_update = self.glance.update

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            if data is not None:
                gate(self.router.current_host())
            return real_update(context, image_id, metadata, data=data,
                               purge_props=purge_props)

        self.glance.update = update
        return gate

    def _gate_inside_glance(self, hosts):
        """Hold the uploads of ``hosts`` once their image is saving."""
        gate = UploadGate(hosts)
        self.addCleanup(gate.release_all)
        self.upload_hook = lambda image_id: gate(self.router.current_host())
        return gate

    def _wait_for_held(self, gate, count):
        self._wait_for(lambda: len(gate.held) == count)

    @staticmethod
    def _leases(directory):
        return sorted(n for n in os.listdir(directory)
                      if n.startswith(upload_lease.UPLOAD_LEASE))

    def _lease(self, kept):
        """The newest lease file in the kept-disk directory."""
        return os.path.join(kept, self._leases(kept)[-1])

    def _lease_holder(self, kept):
        with open(self._lease(kept)) as f:
            return f.read()

    def _image_file(self, image_id):
        """A file holding the image's data, as a download would write it."""
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            image_id)
        with open(path, 'wb') as f:
            f.write(self.glance._imagedata[image_id])
        return path

    def _assert_image_holds_kept_disk(self, snapshot_id, kept):
        """The image's data is the kept disk, converted as Nova does."""
        image = self.glance.images[snapshot_id]
        data = self.glance._imagedata[snapshot_id]
        self.assertEqual('active', image['status'])
        self.assertEqual(len(data), image['size'])
        self.assertEqual(hashlib.md5(data).hexdigest(), image['checksum'])
        self.assertEqual('qcow2', image['disk_format'])
        self.assertEqual('bare', image['container_format'])
        self.assertEqual('snapshot', image['properties']['image_location'])
        uploaded = self._image_file(snapshot_id)
        converted = os.path.join(os.path.dirname(uploaded),
                                 'converted.qcow2')
        subprocess.check_call(['qemu-img', 'convert', '-f', 'qcow2',
                               '-O', 'qcow2', os.path.join(kept, 'disk'),
                               converted])
        with open(converted, 'rb') as f:
            self.assertEqual(f.read(), data)
        # Standalone: the image does not lean on a base file of g1.
        self.assertIsNone(base.backing_file(uploaded))
        self.assertEqual(0x5a, base.read_marker(uploaded))

    def _assert_uploaded_and_recorded(self, server, snapshot_id, kept):
        """The disk is uploaded and everything says so; still kept."""
        self._assert_image_holds_kept_disk(snapshot_id, kept)
        self.assertFalse(self._record(kept)['snapshot_pending'])
        self.assertEqual([], self._leases(kept))
        sysmeta = self._sysmeta(server)
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, sysmeta)
        # The upload saved the instance after the offload: the offload's
        # own changes survive it.
        self.assertEqual(snapshot_id, sysmeta[shelved.KEPT_DISK_KEY])
        self.assertEqual(0x5a, base.read_marker(os.path.join(kept, 'disk')))
        self.assertEqual(1, self.max_concurrent_uploads)

    def _failed_unshelve_events(self, server, count):
        """Wait for ``count`` unshelves whose scheduling failed.

        Returns the schedule_instances event of the newest one.
        """
        found = []

        def newest_failed():
            actions = [a for a in self.admin_api.get_instance_actions(
                server['id']) if a['action'] == 'unshelve']
            if len(actions) != count:
                return False
            # The newest action comes first.
            events = self.admin_api.get_instance_action_details(
                server['id'], actions[0]['request_id'])['events']
            found[:] = [e for e in events
                        if e['event'] == 'schedule_instances' and
                        e['result'] == 'Error']
            return bool(found)

        self._wait_for(newest_failed)
        return found[0]

    # -- scenarios ---------------------------------------------------------

    # 1
    def test_unshelve_in_group_before_upload_reuses_disk(self):
        # The upload waits an hour: the unshelve comes first.
        self.flags(snapshot_upload_delay=3600, group='shelve_accel')
        server = self._boot_with_marker('A')

        server, snapshot_id, kept = self._shelve_pending(server)
        self.assertEqual('queued', self._status(snapshot_id))
        self.assertTrue(self._record(kept)['snapshot_pending'])
        self.assertEqual({'disk', 'disk.info', 'kept.json'},
                         set(os.listdir(kept)))
        sysmeta = self._sysmeta(server)
        self.assertEqual(snapshot_id, sysmeta[shelved.PENDING_UPLOAD_KEY])
        self.assertEqual(snapshot_id, sysmeta[shelved.KEPT_DISK_KEY])
        self.assertEqual(0x5a, base.read_marker(os.path.join(kept, 'disk')))

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0, self.uploads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))
        # Nova deleted the snapshot, which never had data.
        self.assertNotIn(snapshot_id, self.glance.images)
        self.assertEqual(['queued'], self.image_statuses[snapshot_id])
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, self._sysmeta(server))
        self.assertNotIn(shelved.KEPT_DISK_KEY, self._sysmeta(server))

    # 2
    def test_uploaded_snapshot_serves_unshelve_outside_group(self):
        # The upload starts during the offload; held until the offload is
        # over, it finishes after the offload saved the instance, as it
        # does whenever converting the disk takes longer than the rest of
        # the offload.
        gate = self._gate_inside_glance({'A'})
        server = self._boot_with_marker('A')

        server, snapshot_id, kept = self._shelve_pending(server)
        self._wait_for_held(gate, 1)
        self.assertEqual('saving', self._status(snapshot_id))
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        gate.release(0)
        self._wait_for(lambda: self._status(snapshot_id) == 'active')
        self._wait_for_uploads('A')
        self.assertEqual([[snapshot_id, 'A', 'active']],
                         self.upload_attempts)
        self.assertEqual(['queued', 'saving', 'active'],
                         self.image_statuses[snapshot_id])
        self._assert_uploaded_and_recorded(server, snapshot_id, kept)
        [kept_event] = self.events('shelve_accel.disk.kept', server['id'])
        self.assertTrue(kept_event['snapshot_pending'])
        [start] = self.events('shelve_accel.snapshot_upload.start',
                              server['id'])
        [end] = self.events('shelve_accel.snapshot_upload.end',
                            server['id'])
        self.assertEqual((snapshot_id, snapshot_id, 'A'),
                         (start['snapshot_id'], end['snapshot_id'],
                          end['host']))
        self.assertEqual(len(self.glance._imagedata[snapshot_id]),
                         end['image_bytes'])

        self.set_service_status('A', enabled=False)
        self.set_service_status('B', enabled=False)
        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('C',))
        self.assertEqual(1, self.downloads[snapshot_id])
        self.assertEqual(1, self.uploads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    # 3
    def test_unshelve_outside_group_refused_until_uploaded(self):
        self.flags(snapshot_upload_delay=3600, group='shelve_accel')
        server = self._boot_with_marker('A')
        server, snapshot_id, kept = self._shelve_pending(server)
        record = self._record(kept)
        self.set_service_status('A', enabled=False)
        self.set_service_status('B', enabled=False)

        # Neither where the scheduler likes nor on host C, which the
        # request names: the only copy is in g1.
        for attempt, body in enumerate(({'unshelve': None},
                                        {'unshelve': {'host': 'C'}}), 1):
            self.api.post_server_action(server['id'], body)
            event = self._failed_unshelve_events(server, attempt)
            # Nova keeps the first 255 characters of the message in the
            # event; the scheduler's log has all of it.
            self.assertTrue(event['details'].startswith(
                'No valid host was found. Snapshot %s is still being '
                'uploaded from the kept root disk, the only copy of the '
                'data: retry once the image is active, or free a host of '
                'storage group g1.' % snapshot_id), event)
            self.assertIn('shares the storage of A, where instance %s was '
                          'shelved' % server['id'],
                          self.stdlog.logger.output)
            server = self._wait_for_server_parameter(server, {
                'status': 'SHELVED_OFFLOADED',
                'OS-EXT-STS:task_state': None}, base.WAIT_RETRIES)
            self.assert_offloaded_without_resources(server)
            self.assertEqual(record, self._record(kept))
            self.assertEqual(0x5a,
                             base.read_marker(os.path.join(kept, 'disk')))
            self.assertEqual(0, self.downloads[snapshot_id])
            self.assertEqual('queued', self._status(snapshot_id))

        # The other hosts of the storage wait out the delay too.
        self._scan_for_uploads('B')
        self._wait_for_uploads('B')
        self.assertEqual(0, self.uploads[snapshot_id])
        self.assertEqual('queued', self._status(snapshot_id))

        # Without a delay, B's periodic finds the disk that nobody uploads
        # (A still waits out the delay it was given) and uploads it.
        self.flags(snapshot_upload_delay=0, group='shelve_accel')
        self._scan_for_uploads('B')
        self._wait_for(lambda: self._status(snapshot_id) == 'active')
        self._wait_for_uploads('B')
        self.assertEqual([[snapshot_id, 'B', 'active']],
                         self.upload_attempts)
        self._assert_uploaded_and_recorded(server, snapshot_id, kept)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('C',))
        self.assertEqual(1, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    # 4
    def test_restarted_host_resumes_its_upload(self):
        gate = self._gate_before_glance({'A'})
        server = self._boot_with_marker('A')
        server, snapshot_id, kept = self._shelve_pending(server)
        self._wait_for_held(gate, 1)
        self.assertTrue(self._lease_holder(kept).startswith(
            storage.host_tag('A') + '-'))
        stopped = self.computes['A'].driver._uploads

        # The new process takes its own lease over at once, without
        # waiting for it to age, and uploads again from the start.
        self.restart_compute('A')
        self._wait_for_held(gate, 2)
        self.assertIsNot(stopped, self.computes['A'].driver._uploads)
        self.assertEqual('queued', self._status(snapshot_id))

        # The stopped service's upload gives up at its first check.
        gate.release(0)
        self._wait_for(lambda: self._uploads_idle(stopped))
        self.assertEqual([[snapshot_id, 'A', 'UploadFailed']],
                         self.upload_attempts)
        self.assertIn('the compute service is stopping',
                      self.stdlog.logger.output)
        self.assertEqual('queued', self._status(snapshot_id))
        self.assertTrue(self._lease_holder(kept).startswith(
            storage.host_tag('A') + '-'))

        gate.release(1)
        self._wait_for(lambda: self._status(snapshot_id) == 'active')
        self._wait_for_uploads('A')
        self.assertEqual([[snapshot_id, 'A', 'UploadFailed'],
                          [snapshot_id, 'A', 'active']],
                         self.upload_attempts)
        self._assert_uploaded_and_recorded(server, snapshot_id, kept)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    # 5
    def test_lost_host_upload_taken_over_by_group_host(self):
        clock = self.useFixture(disks.WatchClock())
        gate = self._gate_before_glance({'A'})
        server = self._boot_with_marker('A')
        server, snapshot_id, kept = self._shelve_pending(server)
        self._wait_for_held(gate, 1)
        lost = self.computes['A'].driver._uploads

        # Host A is gone for good, its upload stuck before Glance.
        with self.shutdown_in_background('A'):
            self.computes['A'].stop()
        service = self.admin_api.get_services(
            binary='nova-compute', host='A')[0]
        self.admin_api.put_service_force_down(service['id'], True)

        # Its lease is still young: B leaves the upload to it.
        self._scan_for_uploads('B')
        self._wait_for_uploads('B')
        self.assertEqual(0, self.uploads[snapshot_id])
        self.assertTrue(self._lease_holder(kept).startswith(
            storage.host_tag('A') + '-'))

        # Nobody touches the lease any more: B sees it untouched for longer
        # than UPLOAD_LEASE_SECONDS, and takes the upload over.
        clock.advance(upload_lease.UPLOAD_LEASE_SECONDS + 60)
        self._scan_for_uploads('B')
        self._wait_for(lambda: self._status(snapshot_id) == 'active')
        self._wait_for_uploads('B')
        self.assertEqual([[snapshot_id, 'B', 'active']],
                         self.upload_attempts)
        self._assert_uploaded_and_recorded(server, snapshot_id, kept)

        # Should A's upload ever reach Glance, the image is not queued any
        # more: Glance refuses it and the data stays B's.
        gate.release(0)
        self._wait_for(lambda: self._uploads_idle(lost))
        self.assertEqual([[snapshot_id, 'B', 'active'],
                          [snapshot_id, 'A', 'HTTPConflict']],
                         self.upload_attempts)
        self._assert_image_holds_kept_disk(snapshot_id, kept)

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('B',))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    # 6
    def test_unshelve_during_upload_abandons_it(self):
        gate = self._gate_inside_glance({'A'})
        server = self._boot_with_marker('A')
        server, snapshot_id, kept = self._shelve_pending(server)
        self._wait_for_held(gate, 1)
        self.assertEqual('saving', self._status(snapshot_id))

        server = self.unshelve(server)
        server = self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))
        # The lease moved with the disk and went with the record.
        inst_dir = os.path.dirname(self.instance_disk(server))
        self.assertEqual([], self._leases(inst_dir))
        self.assertNotIn(storage.RECORD_NAME, os.listdir(inst_dir))

        # The upload finds the disk claimed at its next check and stops:
        # the image never gets data, and Nova deletes it.
        gate.release(0)
        self._wait_for_uploads('A')
        self.assertEqual([[snapshot_id, 'A', 'UploadAbandoned']],
                         self.upload_attempts)
        self.assertIn('Stopped uploading the kept root disk into snapshot '
                      '%s' % snapshot_id, self.stdlog.logger.output)
        [abandoned] = self.events('shelve_accel.snapshot_upload.abandoned',
                                  server['id'])
        self.assertIn('claimed by an unshelve', abandoned['reason'])
        self.assertEqual([], self.events('shelve_accel.snapshot_upload.end'))
        self._wait_for(lambda: snapshot_id not in self.glance.images)
        self.assertNotIn('active', self.image_statuses[snapshot_id])
        sysmeta = self._sysmeta(server)
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, sysmeta)
        self.assertNotIn(shelved.KEPT_DISK_KEY, sysmeta)
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))

    # 7
    def test_at_shelve_uploads_before_offload(self):
        self.flags(snapshot_upload='at_shelve', group='shelve_accel')
        server = self._boot_with_marker('A')

        server, snapshot_id, kept = self._shelve_pending(server)
        self.assertEqual('active', self._status(snapshot_id))
        self.assertEqual([[snapshot_id, 'A', 'active']],
                         self.upload_attempts)
        self.assertFalse(self._record(kept)['snapshot_pending'])
        self.assertNotIn(shelved.PENDING_UPLOAD_KEY, self._sysmeta(server))
        self.assertEqual(0x5a, base.read_marker(
            self._image_file(snapshot_id)))
