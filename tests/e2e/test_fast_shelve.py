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

"""Fast shelve on the real loopback cloud: shelve about as fast as stop.

With ``[shelve_accel] snapshot_upload = after_offload`` (the cloud's mode
``fast-shelve``) shelve skips the snapshot of a server whose root disk is
kept; the kept disk is uploaded into the queued snapshot image after the
offload. The computes run with ``snapshot_upload_delay = UPLOAD_DELAY``, so
that the tests see the kept disk while it is still the server's only copy
(no host of the storage uploads it before). Needs the cloud of
``tools/cloud/cloud.sh up`` (root); the class switches the cloud to
fast-shelve and back to plugin, which restarts every compute twice.
"""

import os
import sys
import time
import uuid

import fixtures
from testtools import content

from tests.e2e import base
from tests.e2e import cloud
from tests.e2e import invariants

# Long enough for the unshelve that must fail while the disk is still the
# only copy; short enough not to make the upload wait long.
UPLOAD_DELAY = 30
# The delay, the upload, and a periodic scan if the keeping host missed it.
UPLOAD_TIMEOUT = 300
RECLAIM_TIMEOUT = 180


class FastShelveTest(base.FastShelveTestCase):

    UPLOAD_DELAY = UPLOAD_DELAY
    PREFIX = 'e2e-fast'

    def setUp(self):
        super().setUp()
        self.workdir = self.useFixture(fixtures.TempDir()).path
        self.in_flight_before = invariants.in_flight_entries()
        self.providers = invariants.provider_names()

    # -- helpers ------------------------------------------------------------

    def _boot(self):
        """An ACTIVE server on c1."""
        name = 'e2e-fast-%s' % uuid.uuid4().hex[:8]
        srv = cloud.openstack(
            'server', 'create', '--flavor', cloud.FLAVOR,
            '--image', self.image_id, '--nic', 'none', '--host', 'c1',
            '--wait', name)
        self.addCleanup(cloud.delete_server_if_there, srv['id'])
        self.assertEqual('c1', cloud.host_of(srv))
        return srv

    def _stop_and_mark(self, srv):
        """Stop the server, write a marker into its disk; seconds to stop."""
        started = time.monotonic()
        cloud.openstack('server', 'stop', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHUTOFF')
        seconds = time.monotonic() - started
        marker = ('fast shelve %s' % srv['id']).encode()
        cloud.write_marker(cloud.disk_path('c1', srv['id']), marker,
                           self.workdir)
        return marker, seconds

    def _disable_group(self):
        for host in cloud.GROUP_HOSTS:
            cloud.set_compute_enabled(host, False)
            self.addCleanup(cloud.set_compute_enabled, host, True)

    def _snapshot(self, srv):
        """The one image of the server's shelve."""
        images = invariants.shelved_snapshots(srv['name'])
        self.assertEqual(1, len(images), images)
        return cloud.image(images[0])

    def _assert_kept_pending(self, srv, snapshot, marker):
        """The kept disk of the shelve is there, the only copy, with data."""
        kept = cloud.kept_disks(srv['id'])
        self.assertEqual(1, len(kept), kept)
        self.assertTrue(kept[0].endswith('.' + snapshot['id']), kept)
        self.assertTrue(cloud.kept_record(kept[0])['snapshot_pending'])
        self.assertEqual(marker, cloud.read_marker(
            os.path.join(kept[0], 'disk'), len(marker)))
        return kept[0]

    def _assert_marker(self, srv, marker):
        disk = cloud.disk_path(cloud.host_of(srv), srv['id'])
        self.assertEqual(marker, cloud.read_marker(disk, len(marker)))

    def _assert_nothing_left(self, srv, host, timeout=0):
        """Nothing of the server on the storages but its own directory.

        timeout: how long the image cache passes get to give back what the
        server left (they run every 20 s here).
        """
        deadline = time.monotonic() + timeout
        while True:
            left = invariants.storage_leftovers(srv['id'], host,
                                                self.in_flight_before)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(2)
        self.assertEqual([], left)

    def _delete_and_assert_gone(self, srv):
        cloud.openstack('server', 'delete', '--wait', srv['id'],
                        parse=False)
        self.assertEqual([], invariants.server_gone(
            srv['id'], srv['name'], self.providers))
        self.assertEqual([], invariants.storage_leftovers(
            srv['id'], None, self.in_flight_before))

    def _report(self, name, text):
        """Add a line to the test's details and print it (not asserted)."""
        self.addDetail(name, content.text_content(text))
        sys.stderr.write('%s: %s\n' % (self.id(), text))
        sys.stderr.flush()

    # -- tests --------------------------------------------------------------

    def test_shelve_skips_the_snapshot_and_uploads_the_kept_disk(self):
        srv = self._boot()
        marker, stop_seconds = self._stop_and_mark(srv)
        cloud.openstack('server', 'start', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'ACTIVE')

        uploads = cloud.GlanceDataCounter()
        started = time.monotonic()
        cloud.openstack('server', 'shelve', srv['id'], parse=False)
        shelved = cloud.wait_for_status(srv['id'], 'SHELVED_OFFLOADED')
        shelve_seconds = time.monotonic() - started
        # Through the CLI, polling every 0.5 s: what a user sees. Reported,
        # not asserted (the machine's load decides).
        self._report('timings', 'server stop %.1f s, server shelve %.1f s, '
                     'shelve/stop %.2f' % (stop_seconds, shelve_seconds,
                                           shelve_seconds / stop_seconds))

        # Offloaded without a snapshot: the image waits for the kept disk.
        self.assertIsNone(cloud.host_of(shelved))
        snapshot = self._snapshot(srv)
        self.assertEqual('queued', snapshot['status'])
        kept = self._assert_kept_pending(srv, snapshot, marker)
        # What Nova's cold snapshot would have uploaded from that disk.
        expected = os.path.join(self.workdir, 'expected.qcow2')
        cloud.convert_to_qcow2(os.path.join(kept, 'disk'), expected)
        size, md5, sha512 = cloud.file_digests(expected)

        snapshot = cloud.wait_for_image_status(snapshot['id'], 'active',
                                               UPLOAD_TIMEOUT)

        # Glance's checksum is the md5 of the data, its multihash (the
        # client lists it among the properties) the sha512.
        properties = snapshot['properties']
        self.assertEqual(
            (size, md5, 'sha512', sha512),
            (snapshot['size'], snapshot['checksum'],
             properties['os_hash_algo'], properties['os_hash_value']))
        # Uploaded once, by one host.
        self.assertEqual([(snapshot['id'], 204)], uploads.uploads())
        # Still kept for an unshelve in the group, no longer the only copy.
        self.assertEqual([kept], cloud.kept_disks(srv['id']))
        self.assertFalse(cloud.kept_record(kept)['snapshot_pending'])

        # Outside the group the unshelve downloads the uploaded snapshot.
        self._disable_group()
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', srv['id'], parse=False)
        unshelved = cloud.wait_for_status(srv['id'], 'ACTIVE')
        self.assertEqual(cloud.OUTSIDE_HOST, cloud.host_of(unshelved))
        self.assertEqual(
            [(snapshot['id'], snapshot['size'])],
            [d for d in glance.downloads() if d[0] == snapshot['id']])
        self._assert_marker(unshelved, marker)

        # The kept disk is stale now: c1 and c2 (enabled or not) give it
        # back to the storage in their image cache pass.
        self._assert_nothing_left(unshelved, cloud.OUTSIDE_HOST,
                                  RECLAIM_TIMEOUT)
        self._delete_and_assert_gone(srv)

    def test_unshelve_stays_in_the_group_while_the_disk_is_the_only_copy(
            self):
        srv = self._boot()
        marker, _seconds = self._stop_and_mark(srv)
        # Disabled before the shelve (which needs no scheduling), so that
        # the first unshelve comes well within the upload delay.
        self._disable_group()
        cloud.openstack('server', 'shelve', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHELVED_OFFLOADED')
        snapshot = self._snapshot(srv)
        self.assertEqual('queued', snapshot['status'])
        self._assert_kept_pending(srv, snapshot, marker)

        # Only c3 is left, and it cannot have the data: the scheduler says
        # NoValidHost and the server stays offloaded with its disk.
        cloud.openstack('server', 'unshelve', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHELVED_OFFLOADED')
        actions = cloud.openstack('server', 'event', 'list', srv['id'])
        unshelve = [a for a in actions if a['Action'] == 'unshelve']
        self.assertEqual(1, len(unshelve), actions)
        events = cloud.openstack('server', 'event', 'show', srv['id'],
                                 unshelve[0]['Request ID'])['events']
        schedule = [e for e in events if e['event'] == 'schedule_instances']
        self.assertEqual(1, len(schedule), events)
        self.assertEqual('Error', schedule[0]['result'], schedule)
        # The filter's reason, as far as Nova keeps it (255 characters):
        # which snapshot to wait for, which group could take the server.
        details = schedule[0]['details']
        self.assertTrue(details.startswith('No valid host was found. '),
                        details)
        self.assertIn(snapshot['id'], details)
        self.assertIn('still being uploaded', details)
        self.assertIn('g1', details)
        # Nothing moved meanwhile: the disk was the only copy throughout.
        self.assertEqual('queued', cloud.image(snapshot['id'])['status'])
        self._assert_kept_pending(srv, snapshot, marker)

        # With the group back, the unshelve reuses the kept disk: no
        # download, and Nova deletes the snapshot that never got data.
        for host in cloud.GROUP_HOSTS:
            cloud.set_compute_enabled(host, True)
        glance = cloud.GlanceDataCounter()
        cloud.openstack('server', 'unshelve', srv['id'], parse=False)
        unshelved = cloud.wait_for_status(srv['id'], 'ACTIVE')
        self.assertIn(cloud.host_of(unshelved), cloud.GROUP_HOSTS)
        self._assert_marker(unshelved, marker)
        self.assertEqual([], glance.downloads())
        self.assertEqual([], invariants.shelved_snapshots(srv['name']))
        self._assert_nothing_left(unshelved, cloud.host_of(unshelved))
        self._delete_and_assert_gone(srv)
