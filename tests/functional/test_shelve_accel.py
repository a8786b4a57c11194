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

import os

from tests.functional import base


class TestReuseInGroup(base.ShelveAccelTestBase):

    def test_unshelve_reuses_kept_disk_in_group(self):
        server = self.boot(host='A')
        self.assertEqual(1, self.downloads[base.IMAGE_ID])
        base.write_marker(self.instance_disk(server), 0x5a)

        server = self.shelve(server)
        snapshot_id = self.snapshot_id(server)
        self.assert_offloaded_without_resources(server)
        kept = self.kept_dir(self.g1_path, server)
        self.assertEqual(os.path.basename(kept),
                         '%s.%s' % (server['id'], snapshot_id))
        self.assertFalse(os.path.exists(os.path.join(self.g1_path,
                                                     server['id'])))

        server = self.unshelve(server)
        self.assert_runs_on(server, ('A', 'B'))
        self.assertEqual(0, self.downloads[snapshot_id])
        self.assertEqual(1, self.downloads[base.IMAGE_ID])
        self.assertEqual(0x5a, base.read_marker(self.instance_disk(server)))
        self.assertEqual([], self.kept_disks(self.g1_path))
