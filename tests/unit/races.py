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

"""Processes racing for the same kept disk, as hosts of one storage would.

Each worker is a separate process with a store of its own host name, as
each compute host has. Every round the parent lays out a fresh kept disk,
all workers are released at once by a barrier, each runs its operation on
that disk, and the parent checks the outcome: the counts say how many
rounds had exactly one winner, how many raised, and how many lost the
disk's data (a disk neither claimed by its winner nor deleted by a
reclaim that won).
"""

import collections
import multiprocessing
import os
import traceback
import uuid

from nova_shelve_accel import safe_files
from nova_shelve_accel import storage
from nova_shelve_accel import untouched
from nova_shelve_accel import upload_lease

SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
SUBDIR = '_shelve_kept'
DATA = b'kept disk data\n' * 64


def lay_out_kept_disk(instances_path):
    """A kept disk (files and record, no qemu-img) of a new instance."""
    instance = str(uuid.uuid4())
    store = storage.KeptDiskStore(instances_path, SUBDIR, '_base', 'parent')
    store.ensure_directory()
    where = store.kept_dir(instance, SNAPSHOT)
    os.makedirs(where)
    with open(os.path.join(where, 'disk'), 'wb') as f:
        f.write(DATA)
    st = os.lstat(os.path.join(where, 'disk'))
    storage._write_record(where, storage.KeptDiskRecord(
        instance_uuid=instance, snapshot_id=SNAPSHOT, disk_format='raw',
        backing_file=None, disk_size=st.st_size,
        disk_mtime_ns=st.st_mtime_ns, files=('disk',), kept_by='parent',
        kept_at='2026-01-01T00:00:00', allocated_bytes=4096))
    return instance


def _lease(instances_path, instance):
    return os.path.join(instances_path, SUBDIR,
                        storage.kept_name(instance, SNAPSHOT),
                        upload_lease.UPLOAD_LEASE + '.1')


def lay_out_dead_lease(instances_path, instance):
    """A lease of a dead host on the kept disk: nobody touches it."""
    with open(_lease(instances_path, instance), 'w') as f:
        f.write('deadbeef-00000000')


class _WatchedForLong:
    """This process's watch clock: each round, hours pass before the race."""

    def __init__(self):
        self.offset = 0
        self._real = untouched.clock

    def __call__(self):
        return self._real() + self.offset


def _take_lease(store, instance):
    return store.leases.take(store.kept_dir(instance, SNAPSHOT))


def _claim(store, instance):
    return store.claim(instance, SNAPSHOT)


def _reclaim(store, instance):
    record = store.find(instance, SNAPSHOT)
    return bool(record) and store.reclaim(record, 'race')


def _empty_trash(store, instance):
    """Another host's pass deleting every in-flight entry as abandoned."""
    _kept, _damaged, in_flight = store.inventory()
    for item in in_flight:
        if item.kind == storage.TRASH:
            safe_files.remove_tree(item.path)
    return False


OPERATIONS = {'claim': _claim, 'reclaim': _reclaim,
              'empty-trash': _empty_trash, 'take-lease': _take_lease}


def _worker(instances_path, host, operation, barrier, tasks, results):
    store = storage.KeptDiskStore(instances_path, SUBDIR, '_base', host)
    function = OPERATIONS[operation]
    clock = untouched.clock = _WatchedForLong()
    while True:
        instance = tasks.get()
        if instance is None:
            return
        if operation == 'take-lease':
            # Every racer has watched the dead lease go untouched for long.
            store.untouched_for(_lease(instances_path, instance))
            clock.offset += 2 * upload_lease.UPLOAD_LEASE_SECONDS
        barrier.wait()
        try:
            results.put((host, operation, function(store, instance), None))
        except Exception:
            results.put((host, operation, None, traceback.format_exc()))


def _outcome(instances_path, instance, answers):
    """'ok' or what went wrong in one round."""
    errors = [error for _h, _op, _won, error in answers if error]
    if errors:
        return 'raised', errors[0]
    winners = [(op, host) for host, op, won, _e in answers if won]
    inst_dir = os.path.join(instances_path, instance)
    kept = os.path.join(instances_path, SUBDIR,
                        storage.kept_name(instance, SNAPSHOT))
    claimed = [host for op, host in winners if op == 'claim']
    reclaimed = [host for op, host in winners if op == 'reclaim']
    leased = [won for _h, op, won, _e in answers if op == 'take-lease' and won]
    emptied = any(op == 'empty-trash' for _h, op, _w, _e in answers)
    gone = not (os.path.lexists(kept) or os.path.lexists(inst_dir))
    if len(winners) != 1 and not (emptied and not winners and gone):
        # Nobody won is right only when another host emptied the trash
        # between the reclaim's rename and its look at its trash name: the
        # reclaim then leaves the win to it (a real host's pass deletes
        # only trash it has watched for an hour, never one that new).
        return 'not one winner', '%d winners: %s' % (len(winners), winners)
    if claimed:
        with open(os.path.join(inst_dir, 'disk'), 'rb') as f:
            if f.read() != DATA:
                return 'data lost', 'claimed disk of %s differs' % instance
        if os.path.lexists(kept):
            return 'data lost', '%s still kept after its claim' % instance
    if reclaimed and (os.path.lexists(kept) or os.path.lexists(inst_dir)):
        return 'left behind', 'reclaimed %s still on the storage' % instance
    if leased:
        leases = sorted(n for n in os.listdir(kept)
                        if n.startswith(upload_lease.UPLOAD_LEASE))
        with open(os.path.join(kept, leases[-1])) as f:
            holder = f.read()
        if len(leases) != 1 or leased[0] != '2/' + holder:
            return 'not one winner', 'leases %s, the newest held by %s, ' \
                'the winner %s' % (leases, holder, leased[0])
    # This round's entries only: one left by an earlier round (a name
    # GlusterFS lost the handle of, say) was counted in that round.
    leftovers = [n for n in os.listdir(os.path.join(instances_path, SUBDIR))
                 if n.startswith('.') and instance in n]
    if leftovers:
        return 'left behind', 'in flight after the round: %s' % leftovers
    return 'ok', None


def _clear(instances_path, instance):
    """Remove what the round left; what cannot be removed, and why.

    An entry whose handle the filesystem lost answers ESTALE to every
    call: it stays, and the next rounds go on beside it.
    """
    stuck = []
    subdir = os.path.join(instances_path, SUBDIR)
    for path in [os.path.join(instances_path, instance)] + [
            os.path.join(subdir, name) for name in os.listdir(subdir)
            if instance in name]:
        try:
            safe_files.remove_tree(path)
        except OSError as e:
            stuck.append('%s: %s' % (os.path.basename(path), e))
    return stuck


def race(instances_path, operations, rounds, other_clients=(),
         problems=None):
    """Run ``rounds`` rounds of ``operations`` (one process each).

    ``other_clients`` are the same directory as ``instances_path`` seen
    through other clients of a network filesystem: the workers take turns
    among all of them, as hosts with a mount each would.

    Returns a Counter of outcomes (and of rounds whose entries could not
    be removed afterwards, as 'not cleared'); ``problems``, a dict, gets
    the first problem of each.
    """
    views = [instances_path] + list(other_clients)
    ctx = multiprocessing.get_context('fork')
    barrier = ctx.Barrier(len(operations))
    results = ctx.Queue()
    queues, workers = [], []
    for index, operation in enumerate(operations):
        tasks = ctx.Queue()
        worker = ctx.Process(target=_worker, args=(
            views[index % len(views)], 'host-%d' % index, operation, barrier,
            tasks, results))
        worker.start()
        queues.append(tasks)
        workers.append(worker)
    counts = collections.Counter()
    problems = {} if problems is None else problems
    try:
        for _ in range(rounds):
            instance = lay_out_kept_disk(instances_path)
            if 'take-lease' in operations:
                lay_out_dead_lease(instances_path, instance)
            for tasks in queues:
                tasks.put(instance)
            answers = [results.get(timeout=60) for _ in operations]
            outcome, problem = _outcome(instances_path, instance, answers)
            counts[outcome] += 1
            if problem:
                problems.setdefault(outcome, problem)
            stuck = _clear(instances_path, instance)
            if stuck:
                counts['not cleared'] += 1
                problems.setdefault('not cleared', '; '.join(stuck))
    finally:
        for tasks in queues:
            tasks.put(None)
        for worker in workers:
            worker.join(timeout=60)
    return counts


SCENARIOS = {
    'claim x8': ['claim'] * 8,
    'claim vs reclaim': ['claim', 'reclaim'],
    'reclaim vs reclaim': ['reclaim', 'reclaim'],
    'empty-trash vs reclaim': ['reclaim', 'empty-trash'],
    # Hosts taking over the abandoned upload lease of the same disk.
    'lease takeover x8': ['take-lease'] * 8,
}
