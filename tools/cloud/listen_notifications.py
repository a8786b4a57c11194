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

"""Print nova-shelve-accel's notifications as they arrive, one JSON a line.

A real oslo.messaging notification listener on the loopback cloud's
RabbitMQ, with a pool of its own so that it takes nothing from other
consumers of the topic. Run with the cloud's Python, as root:

    $VENV/bin/python tools/cloud/listen_notifications.py \\
        --config-file $STATE/etc/nova/nova.conf

($VENV is /opt/nova-shelve-accel/venv, $STATE /var/lib/nova-shelve-accel-cloud
unless the cloud was started with others.)

It prints "listening" on standard error once the queue is bound, then
each message of an event type starting with ``shelve_accel.`` as
``{"event_type", "publisher_id", "priority", "payload"}``, until killed.
"""

import json
import signal
import sys
import threading

from oslo_config import cfg
import oslo_messaging as messaging

PREFIX = 'shelve_accel.'


class Printer:

    def __init__(self):
        self._lock = threading.Lock()

    def _print(self, priority, publisher_id, event_type, payload):
        if not event_type.startswith(PREFIX):
            return
        with self._lock:
            print(json.dumps({'event_type': event_type,
                              'publisher_id': publisher_id,
                              'priority': priority, 'payload': payload}),
                  flush=True)

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._print('INFO', publisher_id, event_type, payload)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._print('ERROR', publisher_id, event_type, payload)


def main():
    conf = cfg.ConfigOpts()
    # Nova's services publish on the "nova" exchange unless nova.conf says
    # otherwise ([DEFAULT] control_exchange).
    messaging.set_transport_defaults(control_exchange='nova')
    conf(sys.argv[1:], project='nova')
    transport = messaging.get_notification_transport(conf)
    # The topics Nova's notifications go to, as nova.conf sets them.
    topics = conf.oslo_messaging_notifications.topics
    listener = messaging.get_notification_listener(
        transport, [messaging.Target(topic=t) for t in topics], [Printer()],
        executor='threading', pool='shelve-accel-listener')
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *args: stopped.set())
    listener.start()
    print('listening', file=sys.stderr, flush=True)
    stopped.wait()
    listener.stop()
    listener.wait()


if __name__ == '__main__':
    main()
