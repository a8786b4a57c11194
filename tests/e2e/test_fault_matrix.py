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

"""Six rows of the fault matrix on the real loopback cloud.

nova-compute kills itself at a cut point (``kill -9`` at that instant) in
the places a kept disk lives through: while it is kept at shelve-offload,
while an unshelve runs on it (and once Nova deleted the snapshot after it),
while the image cache pass reclaims it, and (with ``snapshot_upload =
after_offload``) while it is uploaded into the snapshot after the offload.
Each time, once the computes are back, the server must end ACTIVE with its
data, with one guest and one allocation, and leave nothing behind. On
GlusterFS (the cloud's default storage) one more row kills c1's storage
client while it claims a kept disk, and remounts it.
``tools/fault_matrix.py`` runs every cut point the same way. Needs the
cloud of ``tools/cloud/cloud.sh up`` (root); each test restarts
nova-compute on c1 (and c2) and takes a few minutes, the upload row a few
more (it switches the cloud to mode fast-shelve and back).
"""

import fixtures
import testtools

from tests.e2e import cloud
from tests.e2e import matrix


class FaultMatrixTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        cloud.check_cloud_is_up()
        workdir = self.useFixture(fixtures.TempDir()).path
        self.matrix = matrix.Matrix(workdir)
        self.addCleanup(self.matrix.tear_down)
        self.matrix.set_up()

    def _assert_row(self, point):
        row = self.matrix.run(point)
        summary = '%s\n%s' % (matrix.table([row]), '\n'.join(row.notes))
        for name in row.required:
            self.assertIn(name, row.checks, summary)
        self.assertEqual(
            {name: True for name in row.checks},
            {name: passed for name, (passed, _seen) in row.checks.items()},
            summary)
        self.assertEqual([], row.failures, summary)

    def test_crash_while_keeping_the_disk(self):
        self._assert_row('keep.staged')

    def test_crash_with_the_guest_started_on_the_claimed_disk(self):
        self._assert_row('spawn.guest_started')

    def test_crash_after_nova_deleted_the_snapshot(self):
        # The guest runs on the claimed disk and Nova deleted the snapshot:
        # the restarted host must finish the unshelve, not undo it.
        self._assert_row('spawn.snapshot_deleted')

    def test_crash_while_reclaiming_a_stale_kept_disk(self):
        self._assert_row('reclaim.trashed')

    def test_crash_after_glance_took_the_kept_disk(self):
        # The upload after a fast shelve: Glance has the data, the host has
        # not yet recorded it. The restarted host must finish the
        # bookkeeping, and an unshelve outside the group must get the data
        # from the snapshot.
        self._assert_row('upload.finished')

    def test_storage_client_killed_while_claiming_the_kept_disk(self):
        # c1 stops with the kept disk in its staging directory, loses its
        # GlusterFS client, goes on against the dead mount (the unshelve
        # fails as stock Nova's would), gets a new client and restarts:
        # the disk must be back and reused, nothing left.
        if cloud.storage_kind() != 'gluster':
            self.skipTest('needs the cloud on GlusterFS (cloud.sh up, or '
                          'up --storage gluster); this one has %s storage'
                          % cloud.storage_kind())
        self._assert_row('client_lost.claim')
