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

"""What the loopback cloud holds for a server, seen from outside.

The fault matrix and the soak check the design's invariants with these:
the server's files on every storage, its libvirt domains on every host,
its allocations in Placement, and the waits for the image cache pass that
resolves what a crash left behind.
"""

import os
import time

from tests.e2e import cloud

# Prefixes of in-flight work on a storage (see nova_shelve_accel.storage):
# none may outlive the operation that made it.
IN_FLIGHT_PREFIXES = ('.staging-', '.reclaiming-', '.quarantine-')
# The clock probes earlier releases touched (storage._CLOCK_PROBE).
CLOCK_PROBE_PREFIX = '.clock-'
# The scratch directories of uploads (see
# nova_shelve_accel.virt.libvirt.upload).
SCRATCH_PREFIX = '.shelve-accel-upload-'
KEPT_SUBDIRECTORY = '_shelve_kept'
# [libvirt] snapshots_directory: Nova's snapshot and the upload of a kept
# disk convert the disk into a temporary directory here, which must not
# outlive them either.
SNAPSHOTS_SUBDIRECTORY = 'snapshots'


def storages():
    return sorted(set(cloud.STORAGE.values()))


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def in_flight_entries():
    """Paths of every staging, trash or conversion entry on any storage."""
    found = set()
    for storage in storages():
        for directory in (storage, os.path.join(storage, KEPT_SUBDIRECTORY)):
            found.update(os.path.join(directory, name)
                         for name in _listdir(directory)
                         if name.startswith(IN_FLIGHT_PREFIXES))
        snapshots = os.path.join(storage, SNAPSHOTS_SUBDIRECTORY)
        found.update(os.path.join(snapshots, name)
                     for name in _listdir(snapshots)
                     if not name.startswith(CLOCK_PROBE_PREFIX))
    return found


def upload_scratch():
    """Paths of the upload scratch directories on every storage."""
    return sorted(
        os.path.join(storage, SNAPSHOTS_SUBDIRECTORY, name)
        for storage in storages()
        for name in _listdir(os.path.join(storage, SNAPSHOTS_SUBDIRECTORY))
        if name.startswith(SCRATCH_PREFIX))


def kept_entries(server_id):
    """Paths of the server's kept disks on any storage."""
    return sorted(
        os.path.join(storage, KEPT_SUBDIRECTORY, name)
        for storage in storages()
        for name in _listdir(os.path.join(storage, KEPT_SUBDIRECTORY))
        if name.startswith(server_id + '.'))


def instance_dirs(server_id):
    """Paths of the server's instance directory on any storage."""
    return [os.path.join(storage, server_id) for storage in storages()
            if os.path.exists(os.path.join(storage, server_id))]


def storage_leftovers(server_id, host=None, before=()):
    """What is on the storages for the server that should not be.

    host: where the server runs (its instance directory there is not a
    leftover). before: in-flight entries that existed before the caller
    started; other entries count, and so does any named after the server.
    """
    found = kept_entries(server_id)
    found += [path for path in instance_dirs(server_id)
              if host is None or os.path.dirname(path) != cloud.STORAGE[host]]
    found += sorted(path for path in in_flight_entries()
                    if path not in before or server_id in path)
    return found


def provider_names():
    return {rp['uuid']: rp['name']
            for rp in cloud.placement('resource', 'provider', 'list')}


def allocations(server_id, names=None):
    """{provider name: resources} of the server's allocations."""
    names = names or provider_names()
    rows = cloud.placement('resource', 'provider', 'allocation', 'show',
                           server_id)
    return {names.get(row['resource_provider'], row['resource_provider']):
            row['resources'] for row in rows}


def wait_for_image_cache_passes(hosts, since, timeout=180):
    """Wait until a pass of each host that started after since has ended.

    A host's periodic tasks run one after the other, so a pass has ended
    when the next one starts. Returns the hosts that ran no complete pass
    within the timeout.
    """
    seen = {host: set() for host in hosts}
    deadline = time.monotonic() + timeout
    while True:
        starts = cloud.image_cache_pass_starts()
        for host in hosts:
            if starts.get(host, 0) > since:
                seen[host].add(starts[host])
        missing = [host for host in hosts if len(seen[host]) < 2]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1)


def server_gone(server_id, server_name, providers=None):
    """What the cloud still holds of a deleted server: [] when nothing.

    Its instance directories, its shelve snapshots (a queued one
    included), its guests and its allocations.
    """
    left = instance_dirs(server_id)
    left += ['image %s' % i for i in shelved_snapshots(server_name)]
    left += ['guest on %s' % host
             for host in sorted(cloud.domain_states(server_id))]
    if allocations(server_id, providers):
        left.append('allocations')
    return left


def shelved_snapshots(server_name):
    """Ids of the server's shelve snapshots left in Glance."""
    return [image['ID'] for image in
            cloud.openstack('image', 'list', '--name',
                            server_name + '-shelved')]
