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

import json
import os

from oslo_messaging.notify import _impl_test as test_driver
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_versionedobjects import fixture as ovo_fixture

import nova.conf
from nova import context as nova_context
from nova import objects
from nova import rpc
from nova import test

from nova_shelve_accel import notifications
from nova_shelve_accel import storage_groups
from tests import notification_samples as samples

# The fields of each payload class, as a hash: a change of fields without a
# change of version fails here. Add a field: bump the minor version; remove
# or change one: the major; then update the hash, the samples and the notes.
PAYLOAD_FINGERPRINTS = {
    'DiskEvictedPayload': '1.0-5652506be0d42168182185537e7e1105',
    'DiskKeptPayload': '1.0-2fc880a63b61322824514ee9c7fd64f6',
    'DiskReclaimedPayload': '1.0-3c0539ae3dc2747de547042e08d18ebc',
    'DiskReusedPayload': '1.0-de92875aa7ac1492047b93d4462b5527',
    'ReasonPayload': '1.0-a3b73040e27024759847a4abcab39c7c',
    'SchedulerFallbackPayload': '1.0-d1f53d8ecdeeec700b45c65d23e55a6e',
    'UploadEndPayload': '1.0-e5fc8f8533108b6793d18701613c1fc7',
    'UploadErrorPayload': '1.0-9360291f333802813885f946f6af14e6',
    'UploadStartPayload': '1.0-581182457bed018c0e367a592bbe71f9',
}


class NotificationsTestCase(test.TestCase):
    """Through a real oslo.messaging Notifier, on its in-memory driver.

    Nova's test base sets ``[oslo_messaging_notifications] driver = test``
    and sets up the notification transport, as a service start does.
    """

    def setUp(self):
        super().setUp()
        self.flags(host='c1')
        test_driver.reset()
        notifications.forget_storage_groups()
        self.addCleanup(notifications.forget_storage_groups)
        self.context = nova_context.get_admin_context()
        self.useFixture(samples.SentLikeTheSamples(self))

    @staticmethod
    def sent():
        return [message for _ctxt, message, _priority, _retry
                in test_driver.NOTIFICATIONS]

    def notify_kept(self, **values):
        """disk.kept with the values of the sample, but those given."""
        data = samples.data_of(samples.sample('shelve_accel.disk.kept'))
        own = {name: data[name] for name in ('path', 'disk_bytes',
                                             'disk_format',
                                             'snapshot_pending')}
        own.update(values)
        notifications.notify('shelve_accel.disk.kept', uuids.instance,
                             project_id=uuids.project,
                             snapshot_id=uuids.snapshot, **own)

    def group(self, name, hosts, aggregate_name=None):
        aggregate = objects.Aggregate(
            self.context, name=aggregate_name or name,
            metadata={storage_groups.GROUP_KEY: name})
        aggregate.create()
        for host in hosts:
            aggregate.add_host(host)
        return aggregate


class TestNotify(NotificationsTestCase):

    def test_event_type_publisher_priority_and_payload(self):
        self.group('g1', ['c1', 'c2'])
        self.notify_kept(disk_bytes=4096)
        [message] = self.sent()
        self.assertEqual('shelve_accel.disk.kept', message['event_type'])
        self.assertEqual('shelve_accel.c1', message['publisher_id'])
        self.assertEqual('INFO', message['priority'])
        payload = message['payload']
        self.assertEqual('DiskKeptPayload', payload['nova_object.name'])
        self.assertEqual('nova_shelve_accel',
                         payload['nova_object.namespace'])
        self.assertEqual('1.0', payload['nova_object.version'])
        self.assertNotIn('nova_object.changes', payload)
        data = samples.data_of(message)
        self.assertEqual(
            {'instance_uuid': uuids.instance, 'project_id': uuids.project,
             'host': 'c1', 'storage_groups': ['g1'],
             'snapshot_id': uuids.snapshot, 'disk_bytes': 4096},
            {k: data[k] for k in ('instance_uuid', 'project_id', 'host',
                                  'storage_groups', 'snapshot_id',
                                  'disk_bytes')})
        self.assertRegex(data['timestamp'], r'^\d{4}-\d\d-\d\dT.*Z$')

    def test_errors_are_sent_at_error_priority(self):
        notifications.notify('shelve_accel.snapshot_upload.error',
                             uuids.instance, snapshot_id=uuids.snapshot,
                             reason='Glance said 500', attempt=1,
                             retry_in_s=60, duration_s=0.5)
        [message] = self.sent()
        self.assertEqual('ERROR', message['priority'])

    def test_every_event_type_is_ours(self):
        for event_type in notifications.EVENTS:
            self.assertTrue(event_type.startswith('shelve_accel.'))
            self.assertFalse(event_type.startswith('compute.instance.'))

    def test_a_long_reason_is_shortened_and_the_payload_stays_small(self):
        notifications.notify('shelve_accel.disk.not_kept', uuids.instance,
                             project_id=uuids.project, reason='x' * 100000,
                             snapshot_id=uuids.snapshot)
        [message] = self.sent()
        self.assertEqual(notifications.MAX_REASON_CHARS,
                         len(samples.data_of(message)['reason']))
        self.assertLess(len(json.dumps(message['payload'])), 2048)

    def test_a_value_that_is_not_a_field_is_a_programming_error(self):
        e = self.assertRaises(ValueError, self.notify_kept, by_command=True)
        self.assertIn('by_command', str(e))
        self.assertEqual([], self.sent())

    def test_a_missing_field_is_a_programming_error(self):
        e = self.assertRaises(
            ValueError, notifications.notify, 'shelve_accel.disk.reused',
            uuids.instance, snapshot_id=uuids.snapshot)
        self.assertIn('duration_s missing', str(e))

    def test_a_field_of_the_wrong_type_is_a_programming_error(self):
        self.assertRaises(ValueError, self.notify_kept,
                          disk_bytes='a lot')

    def test_nothing_is_sent_when_nova_notifications_are_off(self):
        # The default of nova.conf: no notification driver.
        self.flags(driver=[], group='oslo_messaging_notifications')
        rpc.cleanup()
        rpc.init(nova.conf.CONF)
        self.notify_kept()
        self.assertEqual([], self.sent())

    def test_nothing_is_sent_before_rpc_is_set_up(self):
        # A command-line tool that never starts a service.
        self.stub_out('nova.rpc.NOTIFICATION_TRANSPORT', None)
        self.notify_kept()
        self.assertEqual([], self.sent())

    def test_unknown_event_type_is_a_programming_error(self):
        self.assertRaises(KeyError, notifications.notify,
                          'compute.instance.shelve.end', uuids.instance)


class TestSamples(test.NoDBTestCase):
    """doc/notification_samples against the payload classes."""

    def test_one_sample_per_event_type_and_no_other(self):
        files = {name[:-len('.json')]
                 for name in os.listdir(samples.DIRECTORY)}
        self.assertEqual(set(notifications.EVENTS), files)

    def test_each_sample_is_its_payload_class(self):
        for event_type, (priority, payload_class) in (
                notifications.EVENTS.items()):
            sample = samples.sample(event_type)
            self.assertEqual(event_type, sample['event_type'])
            self.assertEqual(priority.upper(), sample['priority'])
            self.assertEqual(
                [payload_class.__name__, 'nova_shelve_accel',
                 payload_class.VERSION],
                [sample['payload'][key] for key in samples.ENVELOPE],
                event_type)
            self.assertEqual(set(payload_class.fields),
                             set(samples.data_of(sample)), event_type)

    def test_each_sample_is_a_payload_the_code_would_send(self):
        # Every value parses as its field's type.
        for event_type, (_priority, payload_class) in (
                notifications.EVENTS.items()):
            data = samples.data_of(samples.sample(event_type))
            payload = notifications._payload_of(payload_class, data)
            self.assertEqual(data, payload.obj_to_primitive()[
                'nova_object.data'], event_type)

    def test_payload_fingerprints(self):
        classes = {cls.__name__: [cls] for _priority, cls
                   in notifications.EVENTS.values()}
        checker = ovo_fixture.ObjectVersionChecker(obj_classes=classes)
        expected, actual = checker.test_hashes(PAYLOAD_FINGERPRINTS)
        self.assertEqual(expected, actual,
                         'Payload fields changed: bump the version of the '
                         'payload, then update PAYLOAD_FINGERPRINTS, the '
                         'samples in doc/notification_samples and the '
                         'release notes.')


class TestStorageGroups(NotificationsTestCase):

    def groups_sent(self):
        self.notify_kept()
        return samples.data_of(self.sent()[-1])['storage_groups']

    def test_host_in_no_group(self):
        self.group('g1', ['c2'])
        self.assertEqual([], self.groups_sent())

    def test_groups_are_read_once_per_interval(self):
        aggregate = self.group('g1', ['c1'])
        self.assertEqual(['g1'], self.groups_sent())
        aggregate.delete_host('c1')
        # Still the names read a moment ago: one lookup per interval.
        self.assertEqual(['g1'], self.groups_sent())
        notifications.forget_storage_groups()
        self.assertEqual([], self.groups_sent())

    def test_the_peers_are_the_other_hosts_of_every_aggregate_of_a_group(
            self):
        self.group('g1', ['c1', 'c2'])
        self.group('g1', ['c3'], aggregate_name='g1-rack2')
        self.group('g2', ['c4'])
        self.assertEqual((['g1'], ['c2', 'c3']),
                         storage_groups.storage_of_host(self.context, 'c1'))
        self.assertEqual(([], []),
                         storage_groups.storage_of_host(self.context, 'c9'))

    def test_other_aggregates_of_the_host_do_not_count(self):
        aggregate = objects.Aggregate(self.context, name='az1',
                                      metadata={'availability_zone': 'az1'})
        aggregate.create()
        aggregate.add_host('c1')
        blank = objects.Aggregate(self.context, name='blank',
                                  metadata={storage_groups.GROUP_KEY: ' '})
        blank.create()
        blank.add_host('c1')
        self.assertEqual([], self.groups_sent())
