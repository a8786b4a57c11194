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


class TestReasonToReclaim(test.NoDBTestCase):

    def _instance(self, deleted=False, **sysmeta):
        return fake_instance.fake_instance_obj(
            nova_context.get_admin_context(), system_metadata=sysmeta,
            deleted=deleted, expected_attrs=['system_metadata'])

    def test_needed_while_shelved_with_that_snapshot(self):
        instance = self._instance(shelved_image_id=SNAPSHOT)
        self.assertIsNone(shelved.reason_to_reclaim(instance, SNAPSHOT))

    def test_instance_deleted(self):
        instance = self._instance(deleted=True, shelved_image_id=SNAPSHOT)
        self.assertEqual('the instance was deleted',
                         shelved.reason_to_reclaim(instance, SNAPSHOT))

    def test_shelved_again_with_another_snapshot(self):
        instance = self._instance(shelved_image_id=SNAPSHOT)
        self.assertEqual(
            'the instance is no longer shelved with snapshot %s'
            % OLD_SNAPSHOT,
            shelved.reason_to_reclaim(instance, OLD_SNAPSHOT))

    def test_unshelved(self):
        # Nova removes shelved_image_id at unshelve.
        self.assertIsNotNone(shelved.reason_to_reclaim(self._instance(),
                                                       SNAPSHOT))
