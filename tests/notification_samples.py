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

"""The notification samples of doc/notification_samples, and checks.

One sample per event type, ``<event type>.json``: the message as a
consumer receives it (event type, publisher, priority, payload in Nova's
versioned envelope). The documentation shows them; the tests hold every
payload the code sends, and every payload class, to them, as Nova's
notification sample tests do.
"""

import json
import os

import fixtures
from oslo_messaging.notify import _impl_test as notify_test_driver

from nova_shelve_accel import notifications

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRECTORY = os.path.join(REPO, 'doc', 'notification_samples')
ENVELOPE = ('nova_object.name', 'nova_object.namespace',
            'nova_object.version')


def path_of(event_type):
    return os.path.join(DIRECTORY, '%s.json' % event_type)


def sample(event_type):
    with open(path_of(event_type)) as f:
        return json.load(f)


def data_of(message):
    """The payload's fields of a message received."""
    return message['payload']['nova_object.data']


def sent(event_type=None):
    """Messages of ours sent to oslo.messaging's test driver, in order."""
    return [message for _ctxt, message, _priority, _retry
            in notify_test_driver.NOTIFICATIONS
            if message['event_type'].startswith('shelve_accel.') and
            event_type in (None, message['event_type'])]


def differences(message):
    """How a message sent differs from its event type's sample."""
    expected = sample(message['event_type'])
    found = []
    for key in ('priority',) + tuple('payload.' + k for k in ENVELOPE):
        mine, theirs = _get(message, key), _get(expected, key)
        if mine != theirs:
            found.append('%s is %r, the sample says %r' % (key, mine, theirs))
    mine, theirs = set(data_of(message)), set(data_of(expected))
    if mine != theirs:
        found.append('fields %s, the sample has %s' % (
            ', '.join(sorted(mine)), ', '.join(sorted(theirs))))
    if not message['publisher_id'].startswith('shelve_accel.'):
        found.append('publisher %s' % message['publisher_id'])
    return found


def _get(message, key):
    if key.startswith('payload.'):
        return message['payload'].get(key[len('payload.'):])
    return message.get(key)


class SentLikeTheSamples(fixtures.Fixture):
    """At the end of a test, every message it sent matches its sample."""

    def __init__(self, testcase):
        super().__init__()
        self.testcase = testcase

    def _setUp(self):
        self.addCleanup(self._check)

    def _check(self):
        for message in sent():
            found = differences(message)
            self.testcase.assertEqual(
                [], found, '%s sent unlike %s' % (
                    message['event_type'], path_of(message['event_type'])))


def payload_class(event_type):
    return notifications.EVENTS[event_type][1]
