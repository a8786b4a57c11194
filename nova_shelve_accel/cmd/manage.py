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

"""The ``nova-shelve-accel`` command: the kept disks of this host's storage.

It looks at the storage the compute driver of this host sees (the kept-disks
directory of ``[DEFAULT] instances_path``) and asks the Nova databases about
the instances the disks were kept for, as the periodic pass of nova-compute
does:

* ``kept list``: every kept disk, damaged ones too, and whether its instance
  still needs it;
* ``kept show <instance uuid>``: everything about one instance's kept disks;
* ``kept reclaim [--apply]``: the disks the periodic pass would reclaim, and
  with ``--apply`` reclaims them through the same code;
* ``kept drain [--evict]`` and ``kept restore <instance uuid>``: see
  ``snapshots``;
* ``storage usage``: the storage group, the filesystem's space and what kept
  disks occupy.

It reads ``nova.conf`` as ``nova-manage`` does and needs the
``[api_database]`` connection. Exit codes: 0 success, 1 nothing found or
invalid input, 2 error (a database or the storage could not be read, or a
reclaim failed; the answer printed is incomplete), 255 a configuration file
is missing or does not parse.
"""

# Native threads, as Nova's own services default to; before anything else
# is imported, and on one line so that the imports below still count as the
# top of the module.
from nova_shelve_accel import cmd; cmd.monkey_patch('threading')  # noqa

import collections
import dataclasses
import functools
import json
import logging as py_logging
import os
import sys
import uuid

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import timeutils
import prettytable

from nova import config
from nova import context as nova_context
from nova import exception
from nova import objects

from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import notifications
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import storage_groups

CONF = accel_conf.CONF
LOG = logging.getLogger(__name__)

SUCCESS = 0
NOT_FOUND = 1   # also invalid input: arguments, options' values
ERROR = 2

# What the system metadata says about a kept disk, shown by ``kept show``.
SYSTEM_METADATA_MARKS = (shelved.KEPT_DISK_KEY, shelved.PENDING_UPLOAD_KEY,
                         'shelved_image_id', 'shelved_host')

API_DATABASE_HINT = ('The command reads the Nova API database, as nova-manage '
                     'does: give it a configuration file that sets '
                     '[api_database] connection (--config-file can be '
                     'repeated).')

NEEDED_TEXT = {True: 'yes', False: 'no', None: 'unknown'}


class CommandError(Exception):
    """The command cannot answer; the message says why and what to do."""

    def __init__(self, message, exit_code=ERROR):
        super().__init__(message)
        self.exit_code = exit_code


# -- the storage -----------------------------------------------------------

def kept_disk_store():
    """The kept disks of this host's storage, as the compute driver sees it."""
    subdirectory = CONF.shelve_accel.kept_disks_subdirectory
    if subdirectory == CONF.image_cache.subdirectory_name:
        raise CommandError(
            '[shelve_accel] kept_disks_subdirectory and [image_cache] '
            'subdirectory_name are both %r; the compute driver refuses to '
            'start with this configuration. Fix it in nova.conf.'
            % subdirectory, NOT_FOUND)
    return storage.KeptDiskStore(
        CONF.instances_path, subdirectory,
        CONF.image_cache.subdirectory_name, CONF.host)


def read_inventory(store, others=False):
    """The kept and the damaged disks of the storage.

    With ``others``, also the other directories that may hold an
    instance's data (see ``Other``).
    """
    try:
        kept, damaged, in_flight = store.inventory()
        if not others:
            return kept, damaged
        return kept, damaged, other_directories(store, in_flight)
    except OSError as e:
        raise CommandError(
            'Cannot read the kept-disks directory %s: %s. Run the command '
            'as the user nova-compute runs as, on a host that mounts the '
            'storage.' % (store.path, e))


@dataclasses.dataclass(frozen=True)
class Other:
    """A directory that may hold an instance's data, and is no kept disk.

    Work a crash or a failure left (a keep or release being staged, a disk
    quarantined after a failed spawn, a reclaim), or the claim a failed
    unshelve left in an instance directory. The periodic pass of
    nova-compute resolves them; until then they are shown.
    """

    path: str
    kind: str
    instance_uuid: str
    # The record in it, None if it cannot be read.
    record: object


CLAIM_LEFT = 'claim left'


def other_directories(store, in_flight):
    found = [Other(item.path, item.kind, item.instance_uuid,
                   storage.read_record(item.path)) for item in in_flight]
    # Only a claim's record: the mark of a finished unshelve is the
    # directory of an instance that runs.
    for instance_uuid in store.claimed_dirs(marks=(storage.RECORD_NAME,)):
        path = store.instance_dir(instance_uuid)
        found.append(Other(path, CLAIM_LEFT, instance_uuid,
                           storage.read_record(path)))
    return found


def occupied_bytes(path):
    """Bytes the files below ``path`` occupy, following no link.

    A damaged kept disk has no record to say what it holds: its files are
    counted as they are.
    """
    total = 0
    for directory, _subdirectories, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks
            except FileNotFoundError:
                continue    # reclaimed while we counted
    return total * 512


# -- the databases ---------------------------------------------------------

def admin_context():
    # Deleted instances too: a kept disk of one is reclaimable.
    return nova_context.get_admin_context(read_deleted='yes')


@dataclasses.dataclass(frozen=True)
class Owner:
    """What the databases say about the instance a disk was kept for."""

    # The objects.Instance, deleted or not; None when no database has it.
    instance: object = None
    project_id: str | None = None
    # Why the instance could not be looked up; then nothing is known.
    error: str | None = None

    @property
    def state(self):
        if self.error:
            return 'unknown'
        if self.instance is None:
            return 'not found'
        if self.instance.deleted:
            return 'deleted'
        if self.instance.task_state:
            return '%s/%s' % (self.instance.vm_state,
                              self.instance.task_state)
        return self.instance.vm_state

    def needs(self, snapshot_id, kept_by=None, known_hosts=frozenset()):
        """(needed, why) for the disk kept at ``snapshot_id``.

        ``needed`` is None when nothing is known: the instance could not be
        looked up, or it is in no database while ``kept_by``, the host that
        kept the disk, is not in ``known_hosts`` (the hosts this API
        database maps to a cell): a wrong API database, or an instance of
        another deployment sharing the storage. Such a disk is never
        reclaimed without --reclaim-unfound.
        """
        if self.error:
            return None, 'the instance could not be looked up: %s' % (
                self.error)
        if self.instance is None:
            if kept_by in known_hosts:
                return False, shelved.ARCHIVED % kept_by
            return None, (
                'the instance is in no database, and the host that kept '
                'the disk (%s) is not known to this API database: is '
                '[api_database] connection the right one?' % (
                    kept_by or 'unknown: the record cannot be read'))
        reason = shelved.reason_to_reclaim(self.instance, snapshot_id)
        if reason:
            return False, reason
        if shelved.pending_snapshot_id(self.instance) == snapshot_id:
            return True, ('the instance is shelved with this snapshot, whose '
                          'upload waits for this disk: its only copy')
        return True, 'the instance is shelved with this snapshot'


def look_up_owners(ctxt, instance_uuids):
    """The Owner of each instance uuid.

    One query of the API database finds the cell of every instance, then one
    query per cell reads its instances; an instance with no mapping is not
    found (deleted and archived).
    """
    owners = {instance_uuid: Owner() for instance_uuid in instance_uuids}
    if not owners:
        return owners
    try:
        mappings = objects.InstanceMappingList.get_by_instance_uuids(
            ctxt, sorted(owners))
    except Exception as e:
        # Whatever failed, nothing is known about the instances.
        LOG.debug('Reading the instance mappings failed.', exc_info=True)
        error = ('cannot read the instance mappings of the API database: '
                 '%s. %s' % (e, API_DATABASE_HINT))
        return {instance_uuid: Owner(error=error) for instance_uuid in owners}
    cells = {}
    mapped = collections.defaultdict(list)
    for mapping in mappings:
        if mapping.cell_mapping is None:
            owners[mapping.instance_uuid] = Owner(
                project_id=mapping.project_id,
                error='the instance is mapped to no cell yet')
            continue
        cells[mapping.cell_mapping.uuid] = mapping.cell_mapping
        mapped[mapping.cell_mapping.uuid].append(mapping)
    for cell_uuid, result in _read_cells(ctxt, cells, mapped).items():
        error = _cell_failure(cells[cell_uuid], result)
        found = {} if error else {inst.uuid: inst for inst in result}
        for mapping in mapped[cell_uuid]:
            instance = found.get(mapping.instance_uuid)
            owners[mapping.instance_uuid] = Owner(
                instance,
                instance.project_id if instance else mapping.project_id,
                error)
    return owners


def look_up(kept, damaged, others=()):
    """(owners, known hosts) of the instances of these disks."""
    ctxt = admin_context()
    owners = look_up_owners(ctxt, {
        item.instance_uuid for item in kept + damaged + list(others)})
    records = kept + [o.record for o in others if o.record is not None]
    unfound = {r.kept_by for r in records
               if owners[r.instance_uuid].instance is None and
               not owners[r.instance_uuid].error}
    return owners, look_up_hosts(ctxt, unfound)


def look_up_hosts(ctxt, hosts):
    """The ``hosts`` this API database maps to a cell (a frozenset).

    Empty when the mappings cannot be read: then nothing is known.
    """
    known = set()
    for host in sorted(h for h in hosts if h):
        try:
            objects.HostMapping.get_by_host(ctxt, host)
        except exception.HostMappingNotFound:
            continue
        except Exception:
            LOG.debug('Reading the host mapping of %s failed.', host,
                      exc_info=True)
            return frozenset()
        known.add(host)
    return frozenset(known)


def _read_cells(ctxt, cells, mapped):
    """{cell uuid: the cell's instances, or why they could not be read}."""
    uuids = {cell_uuid: [m.instance_uuid for m in mappings]
             for cell_uuid, mappings in mapped.items()}
    try:
        return nova_context.scatter_gather_cells(
            ctxt, list(cells.values()), nova_context.CELL_TIMEOUT,
            _instances_of_cell, uuids)
    except Exception as e:
        LOG.debug('Reading the cell databases failed.', exc_info=True)
        return {cell_uuid: e for cell_uuid in cells}


def _instances_of_cell(cctxt, uuids):
    return objects.InstanceList.get_by_filters(
        cctxt, {'uuid': uuids[cctxt.cell_uuid]},
        expected_attrs=['system_metadata'])


def _cell_failure(cell, result):
    if result is nova_context.did_not_respond_sentinel:
        return ('the database of cell %s did not answer within %d seconds'
                % (cell.identity, nova_context.CELL_TIMEOUT))
    if isinstance(result, Exception):
        return 'cannot read the database of cell %s: %s' % (
            cell.identity, result)
    return None


# -- what is reported about one disk ---------------------------------------

def kept_entry(store, record, owner, now, known_hosts=frozenset()):
    needed, why = owner.needs(record.snapshot_id, record.kept_by, known_hosts)
    return {
        'instance': record.instance_uuid,
        'project': owner.project_id,
        'snapshot': record.snapshot_id,
        'path': store.kept_dir(record.instance_uuid, record.snapshot_id),
        'allocated_bytes': record.allocated_bytes,
        'kept_at': record.kept_at,
        'age_seconds': age_seconds(record.kept_at, now),
        'kept_by': record.kept_by,
        'upload_state': 'pending' if record.snapshot_pending else 'uploaded',
        'instance_state': owner.state,
        'needed': needed,
        'reason': why,
    }


def damaged_entry(item, owner):
    needed, why = owner.needs(item.snapshot_id)
    return {
        'instance': item.instance_uuid,
        'project': owner.project_id,
        'snapshot': item.snapshot_id,
        'path': item.path,
        'allocated_bytes': occupied_bytes(item.path),
        'problem': item.problem,
        'instance_state': owner.state,
        'needed': needed,
        'reason': why,
    }


def other_entry(item, owner, known_hosts):
    record = item.record
    if item.kind == storage.TRASH:
        needed, why = False, 'a reclaim of it was under way'
    elif record is None:
        needed, why = None, 'its %s cannot be read' % storage.RECORD_NAME
    else:
        needed, why = owner.needs(record.snapshot_id, record.kept_by,
                                  known_hosts)
    return {
        'instance': item.instance_uuid,
        'project': owner.project_id,
        'snapshot': record.snapshot_id if record else None,
        'path': item.path,
        'kind': item.kind,
        'allocated_bytes': occupied_bytes(item.path),
        'upload_state': 'unknown' if record is None else (
            'pending' if record.snapshot_pending else 'uploaded'),
        'instance_state': owner.state,
        'needed': needed,
        'reason': why,
    }


def warn_only_copies(entries):
    """Say on stderr which of these directories hold an only copy."""
    for entry in entries:
        if entry['upload_state'] == 'pending' and entry['needed']:
            print('Note: %s (%s) holds the only copy of instance %s: its '
                  'snapshot still waits for this data. The periodic pass '
                  'of nova-compute resolves it; see "Directories that may '
                  'hold an instance\'s data" in the admin guide.'
                  % (entry['path'], entry['kind'], entry['instance']),
                  file=sys.stderr)


def age_seconds(kept_at, now):
    """Seconds since ``kept_at`` (UTC, ISO 8601), or None if unreadable."""
    try:
        kept = timeutils.normalize_time(timeutils.parse_isotime(kept_at))
    except (ValueError, TypeError):
        return None
    return max(0, int(timeutils.delta_seconds(kept, now)))


def human_size(size):
    if size is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if size < 1024 or unit == 'TiB':
            break
        size /= 1024.0
    return '%d B' % size if unit == 'B' else '%.1f %s' % (size, unit)


def human_age(seconds):
    if seconds is None:
        return '-'
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return '%dd %dh' % (days, hours)
    if hours:
        return '%dh %dm' % (hours, minutes)
    if minutes:
        return '%dm' % minutes
    return '%ds' % seconds


# -- output ----------------------------------------------------------------

def print_json(report):
    print(json.dumps(report, indent=2, sort_keys=True))


def print_table(columns, entries):
    """``columns`` are (title, function of an entry giving the cell)."""
    table = prettytable.PrettyTable([title for title, _cell in columns])
    table.align = 'l'
    for entry in entries:
        table.add_row([cell(entry) for _title, cell in columns])
    print(table)


def print_properties(rows):
    table = prettytable.PrettyTable(['Property', 'Value'])
    table.align = 'l'
    for name, value in rows:
        table.add_row([name, '-' if value is None else value])
    print(table)


def _key(name):
    return lambda entry: '-' if entry[name] is None else entry[name]


def _needed(entry):
    return NEEDED_TEXT[entry['needed']]


KEPT_COLUMNS = (
    ('Instance', _key('instance')),
    ('Project', _key('project')),
    ('Snapshot', _key('snapshot')),
    ('Size', lambda e: human_size(e['allocated_bytes'])),
    ('Age', lambda e: human_age(e['age_seconds'])),
    ('Kept by', _key('kept_by')),
    ('Upload', _key('upload_state')),
    ('Instance state', _key('instance_state')),
    ('Needed', _needed),
    ('Why', _key('reason')),
)

DAMAGED_COLUMNS = (
    ('Instance', _key('instance')),
    ('Project', _key('project')),
    ('Snapshot', _key('snapshot')),
    ('Size', lambda e: human_size(e['allocated_bytes'])),
    ('Problem', _key('problem')),
    ('Instance state', _key('instance_state')),
    ('Needed', _needed),
    ('Why', _key('reason')),
)


def warn_unknown(entries):
    """Say on stderr what is kept for want of knowledge.

    True if an instance could not be looked up (the answer is incomplete);
    one in no database is a state, said as a note.
    """
    failed = False
    for entry in entries:
        if entry['needed'] is not None:
            continue
        lookup_failed = entry['instance_state'] == 'unknown'
        failed = failed or lookup_failed
        print('%s: %s: %s' % ('Error' if lookup_failed else 'Note',
                              entry['path'], entry['reason']),
              file=sys.stderr)
    return failed


OTHER_COLUMNS = (
    ('Instance', _key('instance')),
    ('Snapshot', _key('snapshot')),
    ('Kind', _key('kind')),
    ('Size', lambda e: human_size(e['allocated_bytes'])),
    ('Upload', _key('upload_state')),
    ('Instance state', _key('instance_state')),
    ('Needed', _needed),
    ('Why', _key('reason')),
)


# -- kept list -------------------------------------------------------------

def list_kept(args):
    store = kept_disk_store()
    kept, damaged, others = read_inventory(store, others=True)
    owners, known_hosts = look_up(kept, damaged, others)
    now = timeutils.utcnow()
    report = {
        'host': CONF.host,
        'kept_disks_path': store.path,
        'kept': [kept_entry(store, r, owners[r.instance_uuid], now,
                            known_hosts)
                 for r in kept],
        'damaged': [damaged_entry(d, owners[d.instance_uuid])
                    for d in damaged],
        'others': [other_entry(o, owners[o.instance_uuid], known_hosts)
                   for o in others],
    }
    if args.output_format == 'json':
        print_json(report)
    elif not kept and not damaged and not others:
        print('No kept disks in %s.' % store.path)
    else:
        print_table(KEPT_COLUMNS, report['kept'])
        if damaged:
            print('Damaged kept disks (never reused; reclaimed once their '
                  'instance no longer needs them):')
            print_table(DAMAGED_COLUMNS, report['damaged'])
        if others:
            print('Other directories that may hold an instance\'s data '
                  '(left by a crash or a failure; nova-compute\'s periodic '
                  'pass resolves them):')
            print_table(OTHER_COLUMNS, report['others'])
    warn_only_copies(report['others'])
    unknown = warn_unknown(report['kept'] + report['damaged'] +
                           report['others'])
    return ERROR if unknown else SUCCESS


# -- kept show -------------------------------------------------------------

def instance_uuid_argument(value):
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise CommandError('%r is not an instance UUID.' % value, NOT_FOUND)


def show_kept(args):
    instance_uuid = instance_uuid_argument(args.instance_uuid)
    store = kept_disk_store()
    kept, damaged = read_inventory(store)
    kept = [r for r in kept if r.instance_uuid == instance_uuid]
    damaged = [d for d in damaged if d.instance_uuid == instance_uuid]
    if not kept and not damaged:
        raise CommandError(
            'Instance %s has no kept disk in %s, the kept-disks directory of '
            'this host\'s storage ([DEFAULT] instances_path = %s). Its disk '
            'may be kept on the storage of another storage group, reclaimed '
            'already, or never kept; "nova-shelve-accel kept list" lists the '
            'kept disks here.' % (instance_uuid, store.path,
                                  store.instances_path), NOT_FOUND)
    owners, known_hosts = look_up(kept, damaged)
    owner = owners[instance_uuid]
    now = timeutils.utcnow()
    report = {
        'instance': instance_uuid,
        'project': owner.project_id,
        'instance_state': owner.state,
        'lookup_error': owner.error,
        'system_metadata': system_metadata_marks(owner.instance),
        'kept': [dict(kept_entry(store, record, owner, now, known_hosts),
                      record=dataclasses.asdict(record))
                 for record in kept],
        'damaged': [damaged_entry(item, owner) for item in damaged],
    }
    if args.output_format == 'json':
        print_json(report)
    else:
        print_instance(report)
        for entry in report['kept']:
            print_kept_disk(entry)
        for entry in report['damaged']:
            print_damaged_disk(entry)
    unknown = warn_unknown(report['kept'] + report['damaged'])
    return ERROR if unknown else SUCCESS


def system_metadata_marks(instance):
    sysmeta = instance.system_metadata if instance is not None else {}
    return {key: sysmeta.get(key) for key in SYSTEM_METADATA_MARKS}


def print_instance(report):
    print('Instance %s:' % report['instance'])
    print_properties(
        [('project', report['project']),
         ('instance state', report['instance_state'])] +
        ([('lookup error', report['lookup_error'])]
         if report['lookup_error'] else []) +
        [('system_metadata %s' % key, value)
         for key, value in report['system_metadata'].items()])


def print_kept_disk(entry):
    print('Kept disk %s:' % entry['path'])
    record = entry['record']
    print_properties(
        [(name, ', '.join(value) if name == 'files' else value)
         for name, value in record.items()] +
        [('size', human_size(entry['allocated_bytes'])),
         ('age', human_age(entry['age_seconds'])),
         ('upload state', entry['upload_state']),
         ('needed', _needed(entry)),
         ('why', entry['reason'])])


def print_damaged_disk(entry):
    print('Damaged kept disk %s:' % entry['path'])
    print_properties([('snapshot', entry['snapshot']),
                      ('problem', entry['problem']),
                      ('size', human_size(entry['allocated_bytes'])),
                      ('needed', _needed(entry)),
                      ('why', entry['reason'])])


# -- kept reclaim ----------------------------------------------------------

RESULT_TEXT = {
    'dry_run': 'would be reclaimed',
    'reclaimed': 'reclaimed',
    'already_gone': 'already gone (reclaimed by another host)',
    'failed': 'failed',
    'refused': 'kept: nothing is known of the instance',
}

RECLAIM_COLUMNS = (
    ('Instance', _key('instance')),
    ('Snapshot', _key('snapshot')),
    ('Size', lambda e: human_size(e['allocated_bytes'])),
    ('Damaged', lambda e: 'yes' if e['damaged'] else 'no'),
    ('Why', _key('reason')),
    ('Result', lambda e: RESULT_TEXT[e['result']] + (
        ': %s' % e['error'] if e['error'] else '')),
)


def reclaim_plan(store, kept, damaged, owners, known_hosts=frozenset(),
                 reclaim_unfound=False):
    """(reclaimable, refused): entries and, for the first, how to reclaim.

    Exactly what the periodic pass of nova-compute reclaims: kept disks and
    damaged ones whose instance no longer needs them. Disks whose instance
    could not be looked up are refused; so are those whose instance is in
    no database unless ``reclaim_unfound`` (see Owner.needs).
    """
    now = timeutils.utcnow()
    reclaimable, refused = [], []

    def plan(entry, owner, reclaim):
        if entry['needed'] is None and reclaim_unfound and (
                owner.error is None):
            entry['reason'] = ('the instance is in no database; reclaimed '
                               'as asked (--reclaim-unfound)')
            entry['needed'] = False
        if entry['needed'] is False:
            reclaimable.append((entry, functools.partial(
                reclaim, entry['reason'])))
        elif entry['needed'] is None:
            refused.append(entry)

    for record in kept:
        owner = owners[record.instance_uuid]
        plan(dict(kept_entry(store, record, owner, now, known_hosts),
                  damaged=False),
             owner, functools.partial(store.reclaim, record))
    for item in damaged:
        owner = owners[item.instance_uuid]
        # The words of the periodic pass, so that its log reads the same.
        plan(dict(damaged_entry(item, owner), damaged=True), owner,
             lambda why, item=item: store.reclaim_path(
                 item.path, item.instance_uuid, item.snapshot_id,
                 'it was never usable (%s) and no instance needs it: %s'
                 % (item.problem, why)))
    return reclaimable, refused


def reclaim_one(entry, reclaim, apply):
    entry = dict(entry, result='dry_run', error=None)
    if not apply:
        return entry
    try:
        entry['result'] = 'reclaimed' if reclaim() else 'already_gone'
    except OSError as e:
        LOG.error('Could not reclaim %s: %s', entry['path'], e)
        entry.update(result='failed', error=str(e))
    if entry['result'] == 'reclaimed':
        notifications.notify(
            'shelve_accel.disk.reclaimed', entry['instance'],
            project_id=entry['project'], snapshot_id=entry['snapshot'],
            reason=entry['reason'], disk_bytes=entry['allocated_bytes'],
            by_command=True)
    return entry


def reclaim_kept(args):
    store = kept_disk_store()
    kept, damaged = read_inventory(store)
    owners, known_hosts = look_up(kept, damaged)
    reclaimable, refused = reclaim_plan(store, kept, damaged, owners,
                                        known_hosts, args.reclaim_unfound)
    done = [reclaim_one(entry, reclaim, args.apply)
            for entry, reclaim in reclaimable]
    refused = [dict(entry, result='refused', error=None) for entry in refused]
    reclaimed = [e for e in done if e['result'] == 'reclaimed']
    report = {
        'applied': args.apply,
        'kept_disks_path': store.path,
        'reclaim': done,
        'refused': refused,
        'reclaimable_count': len(done),
        'reclaimable_bytes': sum(e['allocated_bytes'] for e in done),
        'reclaimed_count': len(reclaimed),
        'reclaimed_bytes': sum(e['allocated_bytes'] for e in reclaimed),
    }
    if args.output_format == 'json':
        print_json(report)
    else:
        print_reclaim(report)
    failed = [e for e in done if e['result'] == 'failed']
    return ERROR if warn_unknown(refused) or failed else SUCCESS


def print_reclaim(report):
    if not report['reclaim'] and not report['refused']:
        print('Nothing to reclaim in %s: every kept disk there is still '
              'needed.' % report['kept_disks_path'])
        return
    print_table(RECLAIM_COLUMNS, report['reclaim'] + report['refused'])
    if report['applied']:
        print('Reclaimed %d kept disks (%s).' % (
            report['reclaimed_count'],
            human_size(report['reclaimed_bytes'])))
    elif report['reclaim']:
        print('Dry run: nothing was deleted. "nova-shelve-accel kept '
              'reclaim --apply" reclaims these %d kept disks (%s).' % (
                  report['reclaimable_count'],
                  human_size(report['reclaimable_bytes'])))


# -- storage usage ---------------------------------------------------------

def storage_usage(args):
    store = kept_disk_store()
    kept, damaged = read_inventory(store)
    try:
        fs = os.statvfs(store.instances_path)
        free_percent = store.free_percent()
    except OSError as e:
        raise CommandError('Cannot read the filesystem of %s: %s'
                           % (store.instances_path, e))
    try:
        sharing = store.hosts_sharing()
    except OSError as e:
        raise CommandError('Cannot read the probes of the hosts in %s: %s'
                           % (store.path, e))
    try:
        groups, peers = storage_groups.storage_of_host(admin_context(),
                                                       CONF.host)
        missing, outside = storage.sharing_problems(CONF.host, peers,
                                                    sharing)
    except Exception as e:
        LOG.debug('Reading the aggregates failed.', exc_info=True)
        print('Error: cannot read the storage groups of host %s from the '
              'aggregates in the API database: %s. %s'
              % (CONF.host, e, API_DATABASE_HINT), file=sys.stderr)
        groups = missing = outside = None
    size = fs.f_blocks * fs.f_frsize
    floor = CONF.shelve_accel.free_space_floor_percent
    pending = [r for r in kept if r.snapshot_pending]
    report = {
        'host': CONF.host,
        'instances_path': store.instances_path,
        'kept_disks_path': store.path,
        'storage_groups': groups,
        # Which hosts leave their probe on this storage, against the
        # aggregates: the group's hosts that do not, the others that do.
        'hosts_sharing': sharing,
        'group_hosts_not_sharing': missing,
        'hosts_sharing_outside_group': outside,
        'filesystem_size_bytes': size,
        'filesystem_free_bytes': fs.f_bavail * fs.f_frsize,
        'filesystem_free_percent': round(free_percent, 1),
        'free_space_floor_percent': floor,
        'free_space_floor_bytes': size * floor // 100,
        'keeps_new_disks': free_percent >= floor,
        'kept_count': len(kept),
        'kept_bytes': sum(r.allocated_bytes for r in kept),
        'pending_count': len(pending),
        'pending_bytes': sum(r.allocated_bytes for r in pending),
        'damaged_count': len(damaged),
        'damaged_bytes': sum(occupied_bytes(d.path) for d in damaged),
    }
    if args.output_format == 'json':
        print_json(report)
    else:
        print_usage(report)
    return SUCCESS if groups is not None else ERROR


def print_usage(report):
    groups = report['storage_groups']
    print_properties([
        ('host', report['host']),
        ('instances path', report['instances_path']),
        ('kept disks path', report['kept_disks_path']),
        ('storage group', 'unknown' if groups is None else
         ', '.join(groups) or 'none'),
        ('hosts sharing', _names(report['hosts_sharing'])),
        ('group hosts not sharing', _names(
            report['group_hosts_not_sharing'])),
        ('sharing, not in group', _names(
            report['hosts_sharing_outside_group'])),
        ('filesystem size', human_size(report['filesystem_size_bytes'])),
        ('free', '%s (%.1f%%)' % (human_size(report['filesystem_free_bytes']),
                                  report['filesystem_free_percent'])),
        ('free-space floor', '%d%% (%s): %s' % (
            report['free_space_floor_percent'],
            human_size(report['free_space_floor_bytes']),
            'new disks are kept' if report['keeps_new_disks'] else
            'below it, shelve-offload deletes disks as stock Nova does')),
        ('kept disks', _count(report, 'kept')),
        ('pending upload', _count(report, 'pending')),
        ('damaged', _count(report, 'damaged')),
    ])


def _names(hosts):
    return 'unknown' if hosts is None else ', '.join(hosts) or 'none'


def _count(report, kind):
    return '%d (%s)' % (report['%s_count' % kind],
                        human_size(report['%s_bytes' % kind]))


# -- the command line ------------------------------------------------------

def _add_format_option(parser):
    parser.add_argument(
        '--format', dest='output_format', choices=('table', 'json'),
        default='table',
        help='table for people (the default), json for programs')


def add_command_parsers(subparsers):
    kept = subparsers.add_parser(
        'kept', help='kept root disks on the storage of this host')
    kept_commands = kept.add_subparsers(dest='kept_command',
                                        metavar='<command>')
    kept_commands.required = True

    listing = kept_commands.add_parser(
        'list', help='every kept disk, and whether its instance needs it')
    _add_format_option(listing)
    listing.set_defaults(run=list_kept)

    show = kept_commands.add_parser(
        'show', help="everything about one instance's kept disks")
    show.add_argument('instance_uuid', metavar='<instance uuid>')
    _add_format_option(show)
    show.set_defaults(run=show_kept)

    reclaim = kept_commands.add_parser(
        'reclaim', help='the kept disks no instance needs any more: list '
        'them (the default), or reclaim them with --apply')
    mode = reclaim.add_mutually_exclusive_group()
    mode.add_argument('--dry-run', dest='apply', action='store_false',
                      help='only say what would be reclaimed (the default)')
    mode.add_argument('--apply', dest='apply', action='store_true',
                      help='reclaim them, as the periodic pass does')
    _add_format_option(reclaim)
    reclaim.add_argument(
        '--reclaim-unfound', action='store_true',
        help='also reclaim the disks whose instance is in no database while '
             'the host that kept them is unknown to it (refused by default: '
             'a wrong [api_database] would make every instance look gone, '
             'and a disk pending upload is its instance\'s only copy)')
    reclaim.set_defaults(run=reclaim_kept, apply=False)

    # kept drain and kept restore build on this module's helpers.
    from nova_shelve_accel.cmd import snapshots
    snapshots.add_parsers(kept_commands)

    storage_parser = subparsers.add_parser(
        'storage', help='the storage of this host')
    storage_commands = storage_parser.add_subparsers(
        dest='storage_command', metavar='<command>')
    storage_commands.required = True
    usage = storage_commands.add_parser(
        'usage', help='storage group, free space and kept disks')
    _add_format_option(usage)
    usage.set_defaults(run=storage_usage)


command_opt = cfg.SubCommandOpt('command', title='Commands',
                                handler=add_command_parsers)


def parse_config(argv):
    """Read the command line and nova.conf as nova-manage does."""
    CONF.register_cli_opt(command_opt)
    if cmd.printed_version(argv[1:]):
        raise SystemExit(0)
    # With the transport, as nova-manage: the cell mappings' transport URLs
    # are read against [DEFAULT] transport_url, and a reclaim is notified
    # on Nova's bus like one of the periodic pass.
    config.parse_args(argv)


def setup_logging():
    logging.setup(CONF, 'nova')
    # Without a log file oslo.log writes to stdout, where log lines would
    # break the table or the JSON document: they go to stderr instead.
    for handler in py_logging.getLogger().handlers:
        if isinstance(handler, py_logging.StreamHandler) and (
                handler.stream is sys.stdout):
            handler.setStream(sys.stderr)


def main(argv=None):
    argv = sys.argv if argv is None else argv
    try:
        parse_config(argv)
    except SystemExit as e:
        # argparse exits 0 after --help and 2 on a usage error, which this
        # command reports as invalid input.
        return SUCCESS if not e.code else NOT_FOUND
    except cfg.Error as e:
        return cmd.config_error(e)
    setup_logging()
    objects.register_all()
    try:
        return CONF.command.run(CONF.command)
    except CommandError as e:
        print('Error: %s' % e, file=sys.stderr)
        return e.exit_code
    except Exception as e:
        LOG.exception('nova-shelve-accel failed.')
        print('Error: %s' % e, file=sys.stderr)
        return ERROR


if __name__ == '__main__':
    sys.exit(main())
