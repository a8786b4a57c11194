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

"""Notifications of the plugin on Nova's notification bus.

Sent through oslo.messaging on the transport, driver and topics that
``nova.conf`` configures for Nova's own notifications
(``[oslo_messaging_notifications]``), so they are off exactly when Nova's
are (no driver, the default). The publisher is ``shelve_accel.<host>`` and
every event type starts with ``shelve_accel.``: consumers of Nova's
``compute.instance.*`` events see nothing new. Payloads are flat JSON
objects of a few fields, under 2 KB.

A notification never fails the operation it reports: a broken bus is
logged by oslo.messaging and the work goes on.
"""

import threading

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_utils import timeutils

import nova.conf
from nova import context as nova_context
from nova import rpc

from nova_shelve_accel import shelved

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

PUBLISHER = 'shelve_accel'

# Every event type, with the priority it is sent at.
EVENTS = {
    'shelve_accel.disk.kept': 'info',
    'shelve_accel.disk.not_kept': 'info',
    'shelve_accel.disk.reused': 'info',
    'shelve_accel.unshelve.fallback': 'info',
    'shelve_accel.scheduler.fallback': 'info',
    'shelve_accel.disk.reclaimed': 'info',
    'shelve_accel.disk.evicted': 'info',
    'shelve_accel.snapshot_upload.start': 'info',
    'shelve_accel.snapshot_upload.end': 'info',
    'shelve_accel.snapshot_upload.abandoned': 'info',
    'shelve_accel.snapshot_upload.error': 'error',
    'shelve_accel.snapshot_upload.lost': 'error',
}

# Reasons are exception texts, bounded so that a payload stays small.
MAX_REASON_CHARS = 512
# How long the storage group names of this host are reused.

_lock = threading.Lock()
_notifier = None
_notifier_transport = None


def notify(event_type, instance_uuid, context=None, project_id=None,
           **fields):
    """Send ``event_type`` about ``instance_uuid`` if notifications are on.

    ``fields`` are the event's own flat values; ``reason`` is shortened to
    MAX_REASON_CHARS. The host, its storage groups and the time are added.
    """
    notifier = _get_notifier()
    if notifier is None or not notifier.is_enabled():
        return
    payload = dict(fields, instance_uuid=instance_uuid,
                   project_id=project_id, host=CONF.host,
                   storage_groups=_storage_groups(),
                   timestamp=timeutils.utcnow().isoformat())
    if payload.get('reason'):
        payload['reason'] = str(payload['reason'])[:MAX_REASON_CHARS]
    context = context or nova_context.get_admin_context()
    getattr(notifier, EVENTS[event_type])(context, event_type, payload)


def _get_notifier():
    """Our notifier on Nova's notification transport, once rpc is set up.

    Nova sets the transport up when a service starts (and anew in each
    test); a command-line tool that never does gets None.
    """
    global _notifier, _notifier_transport
    transport = rpc.NOTIFICATION_TRANSPORT
    if transport is None:
        return None
    with _lock:
        if _notifier_transport is not transport:
            _notifier = messaging.Notifier(
                transport, publisher_id='%s.%s' % (PUBLISHER, CONF.host),
                serializer=rpc.RequestContextSerializer(
                    rpc.JsonPayloadSerializer()))
            _notifier_transport = transport
        return _notifier


def _storage_groups():
    """Names of the storage groups of this host, read every few minutes."""
    try:
        return shelved.this_host.get(nova_context.get_admin_context(),
                                     CONF.host)[0]
    except Exception as e:
        LOG.debug('Cannot read the storage groups of %s: %s', CONF.host, e)
        return []


def forget_storage_groups():
    """Read the groups again at the next event (tests change them)."""
    shelved.this_host.forget()
