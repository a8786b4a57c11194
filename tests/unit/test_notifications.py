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

from oslo_messaging.notify import _impl_test as test_driver
from oslo_utils.fixture import uuidsentinel as uuids

import nova.conf
from nova import context as nova_context
from nova import objects
from nova import rpc
from nova import test

from nova_shelve_accel import notifications
from nova_shelve_accel import shelved


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

    @staticmethod
    def sent():
        return [message for _ctxt, message, _priority, _retry
                in test_driver.NOTIFICATIONS]

    def group(self, name, hosts, aggregate_name=None):
        aggregate = objects.Aggregate(self.context,
                                      name=aggregate_name or name,
                                      metadata={shelved.GROUP_KEY: name})
        aggregate.create()
        for host in hosts:
            aggregate.add_host(host)
        return aggregate


class TestNotify(NotificationsTestCase):

    def test_event_type_publisher_priority_and_payload(self):
        self.group('g1', ['c1', 'c2'])
        notifications.notify('shelve_accel.disk.kept', uuids.instance,
                             project_id=uuids.project,
                             snapshot_id=uuids.snapshot, disk_bytes=4096)
        [message] = self.sent()
        self.assertEqual('shelve_accel.disk.kept', message['event_type'])
        self.assertEqual('shelve_accel.c1', message['publisher_id'])
        self.assertEqual('INFO', message['priority'])
        payload = message['payload']
        self.assertEqual(
            {'instance_uuid': uuids.instance, 'project_id': uuids.project,
             'host': 'c1', 'storage_groups': ['g1'],
             'snapshot_id': uuids.snapshot, 'disk_bytes': 4096},
            {k: v for k, v in payload.items() if k != 'timestamp'})
        self.assertIn('T', payload['timestamp'])

    def test_errors_are_sent_at_error_priority(self):
        notifications.notify('shelve_accel.snapshot_upload.error',
                             uuids.instance, reason='Glance said 500')
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
                         len(message['payload']['reason']))
        self.assertLess(len(json.dumps(message['payload'])), 2048)

    def test_nothing_is_sent_when_nova_notifications_are_off(self):
        # The default of nova.conf: no notification driver.
        self.flags(driver=[], group='oslo_messaging_notifications')
        rpc.cleanup()
        rpc.init(nova.conf.CONF)
        notifications.notify('shelve_accel.disk.kept', uuids.instance)
        self.assertEqual([], self.sent())

    def test_nothing_is_sent_before_rpc_is_set_up(self):
        # A command-line tool that never starts a service.
        self.stub_out('nova.rpc.NOTIFICATION_TRANSPORT', None)
        notifications.notify('shelve_accel.disk.kept', uuids.instance)
        self.assertEqual([], self.sent())

    def test_unknown_event_type_is_a_programming_error(self):
        self.assertRaises(KeyError, notifications.notify,
                          'compute.instance.shelve.end', uuids.instance)


class TestStorageGroups(NotificationsTestCase):

    def groups_sent(self):
        notifications.notify('shelve_accel.disk.kept', uuids.instance)
        return self.sent()[-1]['payload']['storage_groups']

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
                         shelved.storage_of_host(self.context, 'c1'))
        self.assertEqual(([], []),
                         shelved.storage_of_host(self.context, 'c9'))

    def test_other_aggregates_of_the_host_do_not_count(self):
        aggregate = objects.Aggregate(self.context, name='az1',
                                      metadata={'availability_zone': 'az1'})
        aggregate.create()
        aggregate.add_host('c1')
        blank = objects.Aggregate(self.context, name='blank',
                                  metadata={shelved.GROUP_KEY: ' '})
        blank.create()
        blank.add_host('c1')
        self.assertEqual([], self.groups_sent())
