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

from nova import context as nova_context
from nova import test
from nova.tests.unit import fake_instance

from nova_shelve_accel import shelved

SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
OLD_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000000'


class TestKeptSnapshotId(test.NoDBTestCase):

    def _instance(self, **sysmeta):
        return fake_instance.fake_instance_obj(
            nova_context.get_admin_context(), system_metadata=sysmeta,
            expected_attrs=['system_metadata'])

    def test_none_without_shelved_image_id(self):
        instance = self._instance(**{shelved.KEPT_DISK_KEY: SNAPSHOT})
        self.assertIsNone(shelved.kept_snapshot_id(instance))

    def test_none_without_kept_key(self):
        instance = self._instance(shelved_image_id=SNAPSHOT)
        self.assertIsNone(shelved.kept_snapshot_id(instance))

    def test_none_when_the_kept_key_is_from_an_older_shelve(self):
        instance = self._instance(shelved_image_id=SNAPSHOT,
                                  **{shelved.KEPT_DISK_KEY: OLD_SNAPSHOT})
        self.assertIsNone(shelved.kept_snapshot_id(instance))

    def test_none_when_both_are_empty(self):
        instance = self._instance(shelved_image_id='',
                                  **{shelved.KEPT_DISK_KEY: ''})
        self.assertIsNone(shelved.kept_snapshot_id(instance))

    def test_snapshot_id_when_the_kept_key_matches(self):
        instance = self._instance(shelved_image_id=SNAPSHOT,
                                  **{shelved.KEPT_DISK_KEY: SNAPSHOT})
        self.assertEqual(SNAPSHOT, shelved.kept_snapshot_id(instance))
