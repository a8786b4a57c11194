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

"""What keeping a disk and reporting kept space cost, by kept-disk count.

For 10, 1000 and 10000 kept disks on a local directory: the kept-space
figure that ``update_provider_tree`` reads under the resource tracker's
lock, one ``keep`` of a real qcow2 instance directory, and the one
inventory per image cache pass that reads every record. Beside them, the
walk of the whole kept tree that every provider update made before
(issue 7, defect 6), for comparison. Kept disks beyond the timed ones are
directories with a small file and a real record, written directly: what
is measured is directory and record I/O, not qemu-img.

    python -m tools.bench_kept_disks [--counts 10,1000,10000]
"""

import argparse
import os
import statistics
import tempfile
import time
import uuid


from nova_shelve_accel import storage
from tests.unit import disks

SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'


def fill(store, count):
    os.makedirs(store.path, exist_ok=True)
    for _ in range(count):
        instance = str(uuid.uuid4())
        where = store.kept_dir(instance, SNAPSHOT)
        os.makedirs(where)
        with open(os.path.join(where, 'disk'), 'wb') as f:
            f.write(b'\0' * 4096)
        record = storage.KeptDiskRecord(
            instance_uuid=instance, snapshot_id=SNAPSHOT, disk_format='raw',
            backing_file=None, disk_size=4096, disk_mtime_ns=0,
            files=('disk',), kept_by='bench', kept_at='2026-01-01T00:00:00',
            allocated_bytes=4096)
        storage._write_record(where, record)


def walk_kept_tree(path):
    """What every provider update did before: lstat every kept file."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def timed(function, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_keeps(store, repeat):
    samples = []
    for _ in range(repeat):
        instance = str(uuid.uuid4())
        disks.make_qcow2_instance(store.instances_path, instance)
        start = time.perf_counter()
        store.keep(instance, SNAPSHOT, 'qcow2')
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(count, root):
    instances_path = os.path.join(root, 'n%d' % count)
    os.makedirs(instances_path)
    store = disks.make_store(instances_path)
    fill(store, count)
    inventory = timed(store.inventory, 1)
    used = timed(store.used_bytes, 200)
    walk = timed(lambda: walk_kept_tree(store.path), 3)
    keep = time_keeps(store, 5)
    return count, used, keep, inventory, walk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--counts', default='10,1000,10000')
    args = parser.parse_args()
    print('%8s %22s %12s %24s %26s' % (
        'kept', 'provider update (us)', 'keep (ms)',
        'inventory per pass (ms)', 'previous per-update walk'))
    with tempfile.TemporaryDirectory() as root:
        for count in (int(c) for c in args.counts.split(',')):
            count, used, keep, inventory, walk = measure(count, root)
            print('%8d %22.2f %12.1f %24.1f %23.1f ms' % (
                count, used * 1e6, keep * 1e3, inventory * 1e3,
                walk * 1e3))


if __name__ == '__main__':
    main()
