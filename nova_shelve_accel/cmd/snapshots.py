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

"""``kept drain`` and ``kept restore``: a kept disk's data into Glance, now.

* ``kept drain`` uploads every disk of this host's storage that still waits
  for its upload (``snapshot_upload = after_offload``), kept or
  quarantined, here and now, under the lease nova-compute's uploads take
  (an upload another host runs is waited for). With ``--evict`` it then
  evicts every kept disk whose snapshot is active, as the eviction for
  space does. Run it before the hosts of a storage go back to Nova's own
  driver: afterwards no kept disk is the only copy of anything.
* ``kept restore <instance>`` makes a new snapshot image from the kept disk
  of an instance whose snapshot is gone from Glance (its user deleted it:
  the unshelve then fails, as in stock Nova, and leaves it in ERROR), points
  the instance at it and keeps the disk under the new snapshot's name. The
  next unshelve reuses the disk in the storage group, or downloads the new
  snapshot anywhere else. A snapshot still queued is filled from the disk
  instead.

Both read the instances through the API database as the other ``kept``
commands do, and reach Glance with the ``[service_user]`` credentials of
nova.conf, as the background uploads of nova-compute do.
"""

import os
import time

from oslo_log import log as logging

from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova.compute import vm_states
import nova.conf
from nova import exception
from nova.image import glance

from nova_shelve_accel.cmd import manage
from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel.virt.libvirt import eviction
from nova_shelve_accel.virt.libvirt import upload

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

# Between two looks at the uploads another host runs.
DRAIN_POLL_SECONDS = 5

# What became of each pending disk, and whether the drain can end on it.
BY_ANOTHER_HOST = 'uploaded by another host'
DONE = (upload.UPLOADED, upload.NOT_PENDING, BY_ANOTHER_HOST)
FINAL = DONE + (upload.NOT_NEEDED, 'failed', 'snapshot lost')


def find_instance(instance_uuid):
    """The instance, in its cell (its saves go there); None if deleted."""
    owner = manage.look_up_owners(manage.admin_context(),
                                  {instance_uuid})[instance_uuid]
    if owner.error:
        raise manage.CommandError(owner.error)
    if owner.instance is None or owner.instance.deleted:
        return None
    return owner.instance


def uploader(store):
    return upload.SnapshotUploader(store, find_instance=find_instance)


# -- kept drain ------------------------------------------------------------

DRAIN_COLUMNS = (
    ('Instance', manage._key('instance')),
    ('Snapshot', manage._key('snapshot')),
    ('Path', manage._key('path')),
    ('Result', lambda e: e['result'] + (
        ': %s' % e['error'] if e['error'] else '')),
)


def drain(args):
    store = manage.kept_disk_store()
    uploads = uploader(store)
    context = upload.service_context()
    deadline = time.monotonic() + args.timeout
    results = {}
    while True:
        for record, where in pending_disks(store):
            if results.get(_key(record), {}).get('result') not in FINAL:
                results[_key(record)] = drain_one(uploads, context, record,
                                                  where)
        still = {_key(record) for record, _where in pending_disks(store)}
        for key, entry in results.items():
            if entry['result'] == upload.LEASED and key not in still:
                entry['result'] = BY_ANOTHER_HOST
        if all(e['result'] in FINAL for e in results.values()):
            break
        if time.monotonic() > deadline:
            for entry in results.values():
                if entry['result'] not in FINAL:
                    entry['error'] = ('still uploading after %d s'
                                      % args.timeout)
            break
        time.sleep(DRAIN_POLL_SECONDS)
    report = {'kept_disks_path': store.path,
              'uploads': sorted(results.values(),
                                key=lambda e: (e['instance'], e['snapshot'])),
              'evicted': evict_all(store, context) if args.evict else []}
    left = [e for e in report['uploads'] if e['result'] not in DONE and (
        e['result'] != upload.NOT_NEEDED)]
    report['pending_left'] = len(left)
    if args.output_format == 'json':
        manage.print_json(report)
    else:
        print_drain(report)
    return manage.ERROR if left else manage.SUCCESS


def pending_disks(store):
    try:
        return store.pending_disks()
    except OSError as e:
        raise manage.CommandError(
            'Cannot read the kept-disks directory %s: %s' % (store.path, e))


def _key(record):
    return record.instance_uuid, record.snapshot_id


def drain_one(uploads, context, record, where):
    entry = {'instance': record.instance_uuid,
             'snapshot': record.snapshot_id, 'path': where, 'error': None}
    try:
        entry['result'] = uploads.upload_pending(
            context, record.instance_uuid, record.snapshot_id)
    except accel_exc.SnapshotLost as e:
        entry.update(result='snapshot lost', error='%s; "nova-shelve-accel '
                     'kept restore %s" makes a new one from the disk'
                     % (e, record.instance_uuid))
    except Exception as e:
        LOG.debug('Uploading %s failed.', where, exc_info=True)
        entry.update(result='failed', error=str(e))
    return entry


def evict_all(store, context):
    """Evict every kept disk whose snapshot holds its data; say which."""
    evictor = eviction.Evictor(store, find_instance=find_instance)
    evicted = []
    for record in store.list_kept():
        if not record.snapshot_pending and evictor.evict(
                record, 'evicted by "nova-shelve-accel kept drain --evict"'):
            evicted.append({'instance': record.instance_uuid,
                            'snapshot': record.snapshot_id,
                            'allocated_bytes': record.allocated_bytes})
    return evicted


def print_drain(report):
    if not report['uploads']:
        print('No disk in %s waits for its upload.'
              % report['kept_disks_path'])
    else:
        manage.print_table(DRAIN_COLUMNS, report['uploads'])
    if report['evicted']:
        print('Evicted %d kept disks whose snapshot is active (%s).' % (
            len(report['evicted']), manage.human_size(sum(
                e['allocated_bytes'] for e in report['evicted']))))
    if report['pending_left']:
        print('%d disks still wait for their upload: each is the only copy '
              'of its instance.' % report['pending_left'])


# -- kept restore ----------------------------------------------------------

# (vm_state, task_state) of an instance restored from its kept disk: one
# offloaded, or one whose unshelve Nova's conductor failed for want of the
# image (it sets ERROR and leaves the task as it was).
RESTORABLE_STATES = ((vm_states.SHELVED_OFFLOADED, None),
                     (vm_states.ERROR, None),
                     (vm_states.ERROR, task_states.UNSHELVING))


def restore(args):
    instance_uuid = manage.instance_uuid_argument(args.instance_uuid)
    store = manage.kept_disk_store()
    instance = find_instance(instance_uuid)
    snapshot_id, record = restorable(store, instance_uuid, instance)
    context = upload.service_context()
    image_api = glance.API()
    status = snapshot_status(image_api, context, snapshot_id)
    if status == 'active':
        raise manage.CommandError(
            'Snapshot %s of instance %s is active in Glance: nothing to '
            'restore.' % (snapshot_id, instance_uuid), manage.NOT_FOUND)
    uploads = uploader(store)
    if status == 'queued' and record.snapshot_pending:
        uploads.upload_pending(context, instance_uuid, snapshot_id)
        report = {'instance': instance_uuid, 'snapshot': snapshot_id,
                  'new_snapshot': None,
                  'kept_disk': store.kept_dir(instance_uuid, snapshot_id)}
    else:
        report = new_snapshot(store, uploads, image_api, context, instance,
                              record)
    if args.output_format == 'json':
        manage.print_json(report)
    else:
        manage.print_properties(sorted(report.items()))
    return manage.SUCCESS


def restorable(store, instance_uuid, instance):
    """(snapshot id, kept disk record) of an instance one can restore."""
    if instance is None:
        raise manage.CommandError('Instance %s is deleted or in no database.'
                                  % instance_uuid, manage.NOT_FOUND)
    if (instance.vm_state, instance.task_state) not in RESTORABLE_STATES:
        raise manage.CommandError(
            'Instance %s is %s%s: only a shelved-offloaded instance, or one '
            'a failed unshelve left in ERROR, is restored from its kept '
            'disk.' % (instance_uuid, instance.vm_state,
                       '/' + instance.task_state if instance.task_state
                       else ''), manage.NOT_FOUND)
    snapshot_id = instance.system_metadata.get('shelved_image_id')
    record = snapshot_id and store.find(instance_uuid, snapshot_id)
    if not record:
        raise manage.CommandError(
            'Instance %s has no kept disk of its snapshot %s in %s: run the '
            'command on a host of its storage group ("nova-shelve-accel kept '
            'show %s" says where its disks are).' % (
                instance_uuid, snapshot_id, store.path, instance_uuid),
            manage.NOT_FOUND)
    try:
        store.verify(record, instance_uuid, snapshot_id)
    except (accel_exc.VerificationFailed, OSError) as e:
        raise manage.CommandError('The kept disk of instance %s cannot be '
                                  'used: %s' % (instance_uuid, e))
    return snapshot_id, record


def snapshot_status(image_api, context, snapshot_id):
    try:
        return image_api.get(context, snapshot_id).get('status')
    except exception.ImageNotFound:
        return 'gone'


def new_snapshot(store, uploads, image_api, context, instance, record):
    """Upload the kept disk into a new image and point the instance at it."""
    old_id = record.snapshot_id
    disk = store.kept_dir(instance.uuid, old_id)
    # As the API names and describes a shelve's snapshot.
    image = compute_utils.create_image(
        context, instance, '%s-shelved' % instance.display_name, 'snapshot',
        image_api)

    def check():
        if not store.unchanged(record):
            raise manage.CommandError('The kept disk %s was claimed or '
                                      'changed during the upload.' % disk)

    uploads.upload(context, instance, image,
                   os.path.join(disk, storage.ROOT_DISK), record.disk_format,
                   check)
    if snapshot_status(image_api, context, image['id']) != 'active':
        raise manage.CommandError('Glance did not activate the new snapshot '
                                  '%s; the instance is unchanged.'
                                  % image['id'])
    sysmeta = instance.system_metadata
    sysmeta['shelved_image_id'] = image['id']
    sysmeta[shelved.KEPT_DISK_KEY] = image['id']
    sysmeta.pop(shelved.PENDING_UPLOAD_KEY, None)
    # What the failed unshelve should have left: offloaded, data whole.
    instance.vm_state = vm_states.SHELVED_OFFLOADED
    instance.task_state = None
    instance.save(expected_task_state=[None, task_states.UNSHELVING])
    kept = store.kept_dir(instance.uuid, image['id'])
    try:
        store.keep(instance.uuid, image['id'], record.disk_format,
                   source=store.kept_dir(instance.uuid, old_id))
    except (accel_exc.KeepRefused, OSError) as e:
        # The new snapshot holds the data: the next unshelve downloads it.
        LOG.warning('Could not keep the disk under the new snapshot\'s '
                    'name: %s. The next unshelve downloads snapshot %s.',
                    e, image['id'])
        kept = None
    return {'instance': instance.uuid, 'snapshot': old_id,
            'new_snapshot': image['id'], 'kept_disk': kept}


# -- the command line ------------------------------------------------------

def add_parsers(kept_commands):
    drain_parser = kept_commands.add_parser(
        'drain', help='upload now every disk of this storage that waits for '
        'its upload, and wait for them')
    drain_parser.add_argument(
        '--evict', action='store_true',
        help='then evict every kept disk whose snapshot is active (before '
             'removing the plugin from the hosts of this storage)')
    drain_parser.add_argument(
        '--timeout', type=int, default=3600, metavar='SECONDS',
        help='how long to wait for uploads other hosts run (default 3600)')
    manage._add_format_option(drain_parser)
    drain_parser.set_defaults(run=drain)

    restore_parser = kept_commands.add_parser(
        'restore', help="make a new snapshot from an instance's kept disk "
        'when its snapshot is gone from Glance')
    restore_parser.add_argument('instance_uuid', metavar='<instance uuid>')
    manage._add_format_option(restore_parser)
    restore_parser.set_defaults(run=restore)
