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

import dataclasses
import datetime
import os
from unittest import mock

from oslo_messaging.notify import _impl_test as test_driver
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_utils import timeutils

from nova.compute import task_states
from nova.compute import vm_states

from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel.virt.libvirt import eviction
from tests import notification_samples as samples
from tests.unit import disks
from tests.unit import driver_fixtures

# One snapshot per instance: the sentinels sort in this order.
OLDEST, MIDDLE, NEWEST = uuids.oldest, uuids.middle, uuids.newest


class EvictionTestCase(driver_fixtures.DriverTestCase):
    """Real kept disks on a real store; Glance and the cell DB in memory.

    The storage's free share is what the test says it is: the test cannot
    fill the machine's disk, so each kept disk counts for 10 points of it.
    """

    def setUp(self):
        super().setUp()
        self.flags(free_space_floor_percent=10, eviction_margin_percent=5,
                   group='shelve_accel')
        self.glance = self.useFixture(driver_fixtures.FakeGlance())
        self.store = self.drvr._kept_disks
        self.evictor = self.drvr._evictor
        cells = self.useFixture(driver_fixtures.CellDatabase())
        self.db, self.saved = cells.instances, cells.saved
        self.free_with_no_disk = 40.0
        self.stub_out(
            'nova_shelve_accel.storage.KeptDiskStore.free_percent',
            lambda store: self.free_with_no_disk - 10 * len(
                os.listdir(store.path)))
        self.snapshots = {}
        test_driver.reset()

    def shelved(self, instance_uuid, kept_at, pending=False,
                image_status='active', **updates):
        """An offloaded instance with its disk kept at ``kept_at``."""
        snapshot_id = self.snapshots.setdefault(
            instance_uuid, getattr(uuids, 'snapshot_%d' % len(
                self.snapshots)))
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        record = self.store.keep(instance_uuid, snapshot_id, 'qcow2',
                                 snapshot_pending=pending)
        # Written as the keeping host writes it, at another time.
        storage._write_record(
            self.store.kept_dir(instance_uuid, snapshot_id),
            dataclasses.replace(record, kept_at=kept_at.isoformat()))
        self.glance.add(snapshot_id, status=image_status)
        sysmeta = {'shelved_image_id': snapshot_id,
                   shelved.KEPT_DISK_KEY: snapshot_id}
        if pending:
            sysmeta[shelved.PENDING_UPLOAD_KEY] = snapshot_id
        updates.setdefault('vm_state', vm_states.SHELVED_OFFLOADED)
        self.db[instance_uuid] = self.instance(
            uuid=instance_uuid, host=None, system_metadata=sysmeta,
            **updates)
        return snapshot_id

    def three_disks(self, **kwargs):
        now = timeutils.utcnow()
        for age_h, instance_uuid in ((3, OLDEST), (2, MIDDLE), (1, NEWEST)):
            self.shelved(instance_uuid, now - datetime.timedelta(hours=age_h),
                         **kwargs.get(instance_uuid, {}))

    def kept(self):
        return sorted(r.instance_uuid for r in self.store.list_kept())

    def evicted_events(self):
        return [samples.data_of(m)
                for m in samples.sent('shelve_accel.disk.evicted')]


class TestEvictionUnderPressure(EvictionTestCase):

    def test_nothing_is_listed_while_the_storage_has_room(self):
        self.three_disks()
        self.free_with_no_disk = 50.0      # 20 % free with three disks
        with mock.patch.object(self.store, 'list_kept',
                               wraps=self.store.list_kept) as listing:
            self.evictor.evict_if_pressed()
        self.assertEqual(0, listing.call_count)

    def test_the_oldest_go_first_until_the_storage_is_above_the_margin(self):
        self.three_disks()      # 10 % free: under floor 10 + margin 5
        self.evictor.evict_if_pressed()
        self.assertEqual(sorted([MIDDLE, NEWEST]), self.kept())
        self.assertEqual(20.0, self.store.free_percent())

    def test_evicts_as_many_as_it_takes(self):
        self.three_disks()
        self.free_with_no_disk = 30.0      # 0 % free: two must go
        self.evictor.evict_if_pressed()
        self.assertEqual([NEWEST], self.kept())

    def test_a_pending_disk_is_never_evicted(self):
        self.three_disks(**{OLDEST: {'pending': True,
                                     'image_status': 'queued'}})
        self.free_with_no_disk = 20.0
        self.evictor.evict_if_pressed()
        self.assertEqual([OLDEST], self.kept())

    def test_a_disk_whose_snapshot_is_not_active_stays(self):
        self.three_disks(**{OLDEST: {'image_status': 'queued'},
                            MIDDLE: {'image_status': 'killed'}})
        self.evictor.evict_if_pressed()
        self.assertEqual(sorted([OLDEST, MIDDLE]), self.kept())
        self.assertIn('is queued in Glance, not active; the kept disk may be '
                      'the only copy', self.stdlog.logger.output)

    def test_a_disk_whose_snapshot_was_deleted_from_glance_stays(self):
        self.three_disks()
        del self.glance.images[self.snapshots[OLDEST]]
        self.evictor.evict_if_pressed()
        self.assertIn(OLDEST, self.kept())
        self.assertNotIn(MIDDLE, self.kept())

    def test_a_disk_being_unshelved_stays(self):
        self.three_disks(**{OLDEST: {'task_state': task_states.UNSHELVING}})
        self.evictor.evict_if_pressed()
        self.assertEqual(sorted([OLDEST, NEWEST]), self.kept())

    def test_a_disk_no_instance_needs_is_left_to_the_reclaim(self):
        self.three_disks()
        self.db[OLDEST].deleted = True
        self.evictor.evict_if_pressed()
        self.assertIn(OLDEST, self.kept())
        self.assertIn('the image cache pass reclaims it',
                      self.stdlog.logger.output)

    def test_a_disk_of_an_instance_not_found_is_not_evicted(self):
        self.three_disks()
        del self.db[OLDEST]
        self.evictor.evict_if_pressed()
        self.assertIn(OLDEST, self.kept())
        self.assertIn('its instance is not in the database of this cell',
                      self.stdlog.logger.output)

    def test_the_storage_is_looked_at_once_a_minute(self):
        self.three_disks()
        self.free_with_no_disk = 50.0
        self.evictor.evict_if_pressed()
        self.free_with_no_disk = 30.0
        self.evictor.evict_if_pressed()
        self.assertEqual(3, len(self.kept()))
        self.evictor._last_check -= eviction.PRESSURE_CHECK_SECONDS
        self.evictor.evict_if_pressed()
        self.assertEqual(1, len(self.kept()))

    def test_the_marker_goes_with_the_disk_and_an_event_says_so(self):
        self.three_disks()
        self.evictor.evict_if_pressed()
        instance = self.db[OLDEST]
        self.assertNotIn(shelved.KEPT_DISK_KEY, instance.system_metadata)
        self.assertEqual([(OLDEST, [None])], self.saved)
        [payload] = self.evicted_events()
        self.assertEqual(OLDEST, payload['instance_uuid'])
        self.assertEqual(self.snapshots[OLDEST], payload['snapshot_id'])
        self.assertIn('below free_space_floor_percent + '
                      'eviction_margin_percent = 15%', payload['reason'])
        self.assertGreater(payload['disk_bytes'], 0)

    def test_the_resource_update_looks_for_pressure(self):
        self.three_disks()
        self.useFixture(driver_fixtures.fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.get_available_resource',
            side_effect=lambda node: {}))
        self.drvr.get_available_resource(driver_fixtures.NODE)
        self.assertEqual(2, len(self.kept()))


class TestEvictionByAge(EvictionTestCase):

    def test_off_by_default(self):
        self.three_disks()
        self.evictor.evict_old()
        self.assertEqual(3, len(self.kept()))

    def test_disks_older_than_max_kept_age_go(self):
        self.flags(max_kept_age=int(2.5 * 3600), group='shelve_accel')
        self.three_disks()
        self.evictor.evict_old()
        self.assertEqual(sorted([MIDDLE, NEWEST]), self.kept())
        [payload] = self.evicted_events()
        self.assertIn('longer than [shelve_accel] max_kept_age = 9000',
                      payload['reason'])

    def test_a_pending_disk_is_never_evicted_for_age(self):
        self.flags(max_kept_age=60, group='shelve_accel')
        self.three_disks(**{OLDEST: {'pending': True,
                                     'image_status': 'queued'}})
        self.evictor.evict_old()
        self.assertEqual([OLDEST], self.kept())

    def test_a_disk_of_unknown_age_is_not_evicted_for_age(self):
        self.flags(max_kept_age=60, group='shelve_accel')
        snapshot_id = self.shelved(uuids.odd, timeutils.utcnow())
        directory = self.store.kept_dir(uuids.odd, snapshot_id)
        record = self.store.find(uuids.odd, snapshot_id)
        storage._write_record(directory, dataclasses.replace(
            record, kept_at='last tuesday'))
        self.evictor.evict_old()
        self.assertTrue(os.path.isdir(directory))

    def test_the_image_cache_pass_evicts_old_disks(self):
        self.flags(max_kept_age=int(2.5 * 3600), group='shelve_accel')
        self.three_disks()
        self.stub_out('nova.objects.InstanceList.get_by_host',
                      lambda *a, **k: [])
        self.stub_out('nova.objects.InstanceList.get_by_filters',
                      lambda cls, ctxt, filters, **k: [
                          self.db[u] for u in filters['uuid']
                          if u in self.db])
        self.stub_out('nova.virt.libvirt.driver.LibvirtDriver.'
                      'manage_image_cache', lambda *a: None)
        self.drvr.manage_image_cache(self.context, [])
        self.assertEqual(sorted([MIDDLE, NEWEST]), self.kept())
