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

"""Storage groups: which hosts share the storage that holds a kept disk.

An operator names the storage a set of hosts mounts at ``instances_path`` in
the metadata of their host aggregates (``shelve_storage_group``). Every part
of the plugin reads the groups through this module: the filter and the
weigher from the host states of a scheduling request, the status check and
the command-line tool from the API database, nova-compute for the storage
groups its notifications name.

Names are compared without surrounding whitespace; a blank name names no
group. A host in no group has a storage of its own, shared with nobody.
"""

import collections
import threading
import time

from oslo_log import log as logging

from nova import objects

LOG = logging.getLogger(__name__)

# Aggregate metadata key naming the storage group of the aggregate's hosts.
GROUP_KEY = 'shelve_storage_group'


def group_name(aggregate):
    """The storage group the aggregate's metadata names, or None."""
    # Both fields are nullable in the Aggregate object.
    group = ((aggregate.metadata or {}).get(GROUP_KEY) or '').strip()
    return group or None


class StorageGroups:
    """The storage groups a list of aggregates defines."""

    def __init__(self, aggregates):
        # (aggregate, group) for the aggregates that name a group.
        self._named = []
        # The aggregates whose key is there but blank.
        self.blank = []
        # id(aggregate) -> the group it names, or None.
        self._group_of = {}
        for aggregate in aggregates:
            if id(aggregate) in self._group_of:
                continue
            group = group_name(aggregate)
            self._group_of[id(aggregate)] = group
            if group:
                self._named.append((aggregate, group))
            elif GROUP_KEY in (aggregate.metadata or {}):
                self.blank.append(aggregate)
        # {group: the hosts its aggregates list}
        self.hosts = collections.defaultdict(set)
        # {host: the groups whose aggregates list it}
        self.groups_of = collections.defaultdict(set)
        for aggregate, group in self._named:
            self.hosts[group].update(aggregate.hosts or ())
            for host in aggregate.hosts or ():
                self.groups_of[host].add(group)

    @classmethod
    def of_request(cls, host_states):
        """The groups of the aggregates of the hosts of a request.

        The host states of Nova's host manager share one object per
        aggregate, so each aggregate is read once per request, not once per
        host in it: the cost grows with the number of hosts, not with its
        square.
        """
        storage_groups = cls(aggregate for host_state in host_states
                             for aggregate in host_state.aggregates)
        for aggregate in storage_groups.blank:
            warn_once(('blank', aggregate.id, aggregate.metadata[GROUP_KEY]),
                      'Aggregate %s (id %s) has a blank %s; it names no '
                      'storage group and is ignored. Set it to the name of '
                      'the storage its hosts share, or unset it.',
                      aggregate.name, aggregate.id, GROUP_KEY)
        return storage_groups

    @classmethod
    def from_database(cls, context):
        """All the groups: one query of the aggregates with the key."""
        return cls(objects.AggregateList.get_by_metadata_key(context,
                                                             GROUP_KEY))

    def listing(self, host):
        """The groups whose aggregates list ``host``.

        The aggregates, not the host states, say where a host is: it may
        have been filtered out before.
        """
        return set(self.groups_of.get(host, ()))

    def of_host_state(self, host_state):
        """The groups of the aggregates a host of the request is in."""
        groups = {self._group_of.get(id(aggregate))
                  for aggregate in host_state.aggregates}
        groups.discard(None)
        return groups

    def hosts_of(self, groups):
        """The hosts the aggregates of ``groups`` list."""
        hosts = set()
        for group in groups:
            hosts |= self.hosts.get(group, set())
        return hosts

    def peers_of(self, host):
        """The other hosts of ``host``'s storage groups."""
        peers = self.hosts_of(self.listing(host))
        peers.discard(host)
        return peers


class KeptDiskStorage:
    """Which hosts of one request share the storage holding a kept disk."""

    def __init__(self, kept_on, host_states):
        self.kept_on = kept_on
        self._storage_groups = StorageGroups.of_request(host_states)
        self.groups = self._storage_groups.listing(kept_on)
        if len(self.groups) > 1:
            warn_several_groups(kept_on, self.groups)
        # The hosts the aggregates of those groups list; a host in no group
        # has storage of its own, shared with nobody.
        self._sharing = self._storage_groups.hosts_of(self.groups)
        self._sharing.add(kept_on)

    def is_shared_by(self, host_state):
        # Run for every host of the request: a set lookup, no logging for
        # the hosts outside the group (the filter logs the count).
        if host_state.host not in self._sharing:
            return False
        # The shelving host's groups were checked above.
        if host_state.host != self.kept_on and len(
                host_state.aggregates) > 1:
            own_groups = self._storage_groups.of_host_state(host_state)
            if len(own_groups) > 1:
                warn_several_groups(host_state.host, own_groups)
        return True


def groups_of_host(context, host):
    """The storage groups of ``host``, read from the database.

    For the messages of an unshelve that cannot stay in its group: no host
    of that request may share an aggregate with ``host`` then.
    """
    aggregates = objects.AggregateList.get_by_host(context, host,
                                                   key=GROUP_KEY)
    return {g for g in map(group_name, aggregates) if g}


def storage_of_host(context, host):
    """(names of ``host``'s storage groups, the other hosts in them)."""
    groups = StorageGroups.from_database(context)
    return sorted(groups.listing(host)), sorted(groups.peers_of(host))


class StorageOfHost:
    """``storage_of_host`` of this host, read again every TTL seconds.

    On a compute host the aggregates are read through the conductor: worth
    a call every few minutes, not one per event or per shelve.
    """

    TTL_SECONDS = 600

    def __init__(self):
        self._lock = threading.Lock()
        self._forget()

    def _forget(self):
        self._value = None
        self._read_at = 0.0

    def forget(self):
        """Read again at the next call (tests change the aggregates)."""
        with self._lock:
            self._forget()

    def get(self, context, host):
        """(groups, peers); the last value read if the read fails.

        Raises when nothing was ever read and the read fails.
        """
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._read_at >= (
                    self.TTL_SECONDS):
                try:
                    self._value = storage_of_host(context, host)
                    self._read_at = now
                except Exception:
                    if self._value is None:
                        raise
            return self._value


# The one of the process: its host is CONF.host.
this_host = StorageOfHost()


# -- warnings of a misconfiguration, once per change -----------------------

# The scheduler sees the aggregates at every request: a mistake there is
# said when it first appears and again only once it changes, not at every
# scheduling request.
_warned = set()
_warned_lock = threading.Lock()


def warn_once(key, message, *args):
    """Log the warning unless one was logged with this ``key`` already."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    LOG.warning(message, *args)


def forget_warnings():
    """Warn again about every mistake (tests that look for warnings)."""
    with _warned_lock:
        _warned.clear()


def warn_several_groups(host, groups):
    warn_once(('several', host, frozenset(groups)),
              'Host %s is in several storage groups (%s), but a host '
              'mounts one storage at instances_path. Hosts of any of them '
              'may take an unshelve; where the storage differs the kept '
              'disk is not found and the snapshot is downloaded. Remove '
              'the host from all aggregates but one with %s.',
              host, ', '.join(sorted(groups)), GROUP_KEY)
