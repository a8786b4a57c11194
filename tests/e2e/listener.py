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

"""nova-shelve-accel's notifications on the loopback cloud, for the tests.

Apart from ``cloud``, which the tools import with the system's Python.
"""

import json
import os
import subprocess
import time

import fixtures

from tests.e2e import cloud


def data_of(message):
    """The fields of a message's payload (Nova's versioned envelope)."""
    return message['payload']['nova_object.data']


class NotificationListener(fixtures.Fixture):
    """nova-shelve-accel's notifications, read from the cloud's RabbitMQ.

    Runs ``tools/cloud/listen_notifications.py`` (a real oslo.messaging
    notification listener, with the cloud's Python) for the test's life.
    """

    def _setUp(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        self._out = os.path.join(tmp, 'events.jsonl')
        err = os.path.join(tmp, 'listener.err')
        with open(self._out, 'wb') as out, open(err, 'wb') as errors:
            self._proc = subprocess.Popen(
                [os.path.join(cloud.VENV, 'bin', 'python'),
                 os.path.join(cloud.REPO, 'tools', 'cloud',
                              'listen_notifications.py'),
                 '--config-file', os.path.join(cloud.STATE, 'etc', 'nova',
                                               'nova.conf')],
                stdout=out, stderr=errors)
        self.addCleanup(self._stop)
        # The queue is bound once it says so: nothing sent later is lost.
        # Libraries may warn on standard error first.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._proc.poll() is None:
            with open(err) as f:
                if 'listening' in f.read().split('\n'):
                    return
            time.sleep(cloud.POLL_SECONDS)
        with open(err) as f:
            raise cloud.CloudError(
                'the notification listener did not start within 60 s; it '
                'said: %s' % f.read())

    def _stop(self):
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def events(self, event_type, instance_uuid):
        """Messages of that type about that instance received so far."""
        with open(self._out) as f:
            messages = [json.loads(line) for line in f if line.strip()]
        return [m for m in messages if m['event_type'] == event_type and
                data_of(m).get('instance_uuid') == instance_uuid]

    def wait_for(self, event_type, instance_uuid, timeout=60):
        """The first such message, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event_type, instance_uuid)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise cloud.CloudError(
                    'no %s notification about %s within %d s'
                    % (event_type, instance_uuid, timeout))
            time.sleep(cloud.POLL_SECONDS)
