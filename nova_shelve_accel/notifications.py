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
``compute.instance.*`` events see nothing new.

Payloads are versioned objects in the envelope of Nova's versioned
notifications (``nova_object.name``, ``.namespace`` = ``nova_shelve_accel``,
``.version``, ``.data``), one class per kind of event below, under 2 KB.
Adding a field is a minor version, removing or changing one a major
version: the fingerprints in tests/unit/test_notifications.py say when, and
doc/notification_samples has one sample per event type.

A notification never fails the operation it reports: a broken bus is
logged by oslo.messaging and the work goes on.
"""

import threading

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_utils import timeutils
from oslo_versionedobjects import base as ovo_base
from oslo_versionedobjects import fields

import nova.conf
from nova import context as nova_context
from nova import rpc

from nova_shelve_accel import storage_groups

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

PUBLISHER = 'shelve_accel'


# Properties for the fields, without a place in the registry of Nova's
# objects (these are sent, never received).
_payload = ovo_base.VersionedObjectRegistry.register_if(False)


@_payload
class Payload(ovo_base.VersionedObject):
    """What every event of the plugin says; the envelope is Nova's."""

    OBJ_SERIAL_NAMESPACE = 'nova_object'
    OBJ_PROJECT_NAMESPACE = 'nova_shelve_accel'
    VERSION = '1.0'
    fields = {
        'instance_uuid': fields.UUIDField(),
        # None where the instance is gone.
        'project_id': fields.StringField(nullable=True),
        'snapshot_id': fields.UUIDField(nullable=True),
        # The sender and its storage groups.
        'host': fields.StringField(),
        'storage_groups': fields.ListOfStringsField(),
        'timestamp': fields.DateTimeField(),
    }


@_payload
class ReasonPayload(Payload):
    """An event that says why, in at most MAX_REASON_CHARS."""

    VERSION = '1.0'
    fields = {'reason': fields.StringField()}


@_payload
class DiskKeptPayload(Payload):
    VERSION = '1.0'
    fields = {
        'path': fields.StringField(),
        # Bytes the kept disk occupies on the storage.
        'disk_bytes': fields.IntegerField(),
        'disk_format': fields.StringField(),
        'snapshot_pending': fields.BooleanField(),
    }


@_payload
class DiskReusedPayload(Payload):
    VERSION = '1.0'
    fields = {'duration_s': fields.FloatField()}


@_payload
class DiskReclaimedPayload(ReasonPayload):
    VERSION = '1.0'
    fields = {
        # Bytes it occupied; None for a damaged disk.
        'disk_bytes': fields.IntegerField(nullable=True),
        # Reclaimed by nova-shelve-accel kept reclaim, not by the pass.
        'by_command': fields.BooleanField(),
    }


@_payload
class DiskEvictedPayload(ReasonPayload):
    VERSION = '1.0'
    fields = {
        'disk_bytes': fields.IntegerField(),
        'kept_at': fields.DateTimeField(),
    }


@_payload
class SchedulerFallbackPayload(ReasonPayload):
    VERSION = '1.0'
    fields = {
        'kept_on': fields.StringField(nullable=True),
        'kept_groups': fields.ListOfStringsField(),
        'candidates': fields.IntegerField(),
    }


@_payload
class UploadStartPayload(Payload):
    VERSION = '1.0'
    fields = {
        'path': fields.StringField(),
        # Size of the kept disk's file, which the conversion reads.
        'disk_file_bytes': fields.IntegerField(),
        'image_format': fields.StringField(),
    }


@_payload
class UploadEndPayload(Payload):
    VERSION = '1.0'
    fields = {
        'image_bytes': fields.IntegerField(),
        'duration_s': fields.FloatField(),
    }


@_payload
class UploadErrorPayload(ReasonPayload):
    VERSION = '1.0'
    fields = {
        'attempt': fields.IntegerField(),
        'retry_in_s': fields.IntegerField(),
        'duration_s': fields.FloatField(),
    }


# Every event type: the priority it is sent at and its payload.
EVENTS = {
    'shelve_accel.disk.kept': ('info', DiskKeptPayload),
    'shelve_accel.disk.not_kept': ('info', ReasonPayload),
    'shelve_accel.disk.reused': ('info', DiskReusedPayload),
    'shelve_accel.unshelve.fallback': ('info', ReasonPayload),
    'shelve_accel.scheduler.fallback': ('info', SchedulerFallbackPayload),
    'shelve_accel.disk.reclaimed': ('info', DiskReclaimedPayload),
    'shelve_accel.disk.evicted': ('info', DiskEvictedPayload),
    'shelve_accel.snapshot_upload.start': ('info', UploadStartPayload),
    'shelve_accel.snapshot_upload.end': ('info', UploadEndPayload),
    'shelve_accel.snapshot_upload.abandoned': ('info', ReasonPayload),
    'shelve_accel.snapshot_upload.error': ('error', UploadErrorPayload),
    'shelve_accel.snapshot_upload.lost': ('error', ReasonPayload),
}

# Reasons are exception texts, bounded so that a payload stays small.
MAX_REASON_CHARS = 512
# How long the storage group names of this host are reused.

_lock = threading.Lock()
_notifier = None
_notifier_transport = None


def notify(event_type, instance_uuid, context=None, project_id=None,
           **values):
    """Send ``event_type`` about ``instance_uuid`` if notifications are on.

    ``values`` are the event's own fields (its payload class says which);
    ``reason`` is shortened to MAX_REASON_CHARS. The host, its storage
    groups and the time are added. Raises ValueError for values that are
    not the payload's fields, as a field of the wrong type does.
    """
    priority, payload_class = EVENTS[event_type]
    notifier = _get_notifier()
    if notifier is None or not notifier.is_enabled():
        return
    if values.get('reason') is not None:
        values['reason'] = str(values['reason'])[:MAX_REASON_CHARS]
    payload = _payload_of(payload_class, dict(
        values, instance_uuid=instance_uuid, project_id=project_id,
        host=CONF.host, storage_groups=_storage_groups(),
        timestamp=timeutils.utcnow()))
    context = context or nova_context.get_admin_context()
    getattr(notifier, priority)(context, event_type,
                                payload.obj_to_primitive())


def _payload_of(payload_class, values):
    """The payload object, every field set, nothing else."""
    unknown = set(values) - set(payload_class.fields)
    missing = set(payload_class.fields) - set(values)
    if unknown or missing:
        raise ValueError('%s takes %s; got %s too and %s missing' % (
            payload_class.__name__, ', '.join(sorted(payload_class.fields)),
            ', '.join(sorted(unknown)) or 'nothing',
            ', '.join(sorted(missing)) or 'nothing'))
    payload = payload_class(**values)
    # As Nova's notifications: the data, not what changed in the object.
    payload.obj_reset_changes(recursive=True)
    return payload


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
        return storage_groups.this_host.get(
            nova_context.get_admin_context(), CONF.host)[0]
    except Exception as e:
        LOG.debug('Cannot read the storage groups of %s: %s', CONF.host, e)
        return []


def forget_storage_groups():
    """Read the groups again at the next event (tests change them)."""
    storage_groups.this_host.forget()
