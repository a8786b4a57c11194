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

"""Keep room in each storage group for the instances shelved there.

An instance shelved with a kept disk comes back without a download only if
a host of its storage group has room for it at unshelve. The weigher makes
other requests use that room last, and spreads the unshelves across the
group. See doc/source/weigher.rst.
"""

import collections
import threading
import time

from oslo_log import log as logging

from nova.compute import vm_states
from nova import context as nova_context
from nova import objects
from nova.scheduler import utils as scheduler_utils
from nova.scheduler import weights

from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel.scheduler import filters
from nova_shelve_accel import storage_groups

CONF = accel_conf.CONF
LOG = logging.getLogger(__name__)

MULTIPLIER_KEY = 'headroom_weight_multiplier'

# RAM (MB) and vCPUs: of a request, or free.
Resources = collections.namedtuple('Resources', ['memory_mb', 'vcpus'])
NOTHING = Resources(0, 0)

# What the instances shelved with kept disks from a host, or from the hosts
# of a group, need to come back: RAM (MB) and vCPUs in all, and the RAM of
# the smallest of them (0 when there is none).
Need = collections.namedtuple('Need', ['memory_mb', 'vcpus', 'smallest_mb'])
NO_NEED = Need(0, 0, 0)


class ShelvedHeadroomWeigher(weights.BaseHostWeigher):
    """Use a storage group's room for its shelved instances last.

    For every request but the unshelve of a kept disk in its group, a host
    weighs 1 when it is in no storage group, or when its group would still
    have, with this request on this host, the RAM and vCPUs free that the
    instances shelved from the group's hosts with kept disks need to come
    back; otherwise it weighs the share of that need the group would still
    cover (0 when nothing is left). The unshelve of a kept disk, when every
    host left by the filters shares its storage, is spread: a host weighs
    its free RAM divided by the most any of them has.

    The weights are already between 0 and 1, and Nova normalises them
    against those bounds rather than against each other: a group that
    covers 99% of its need loses 1% of the multiplier, not all of it.
    """

    minval = 0.0
    maxval = 1.0

    def __init__(self):
        # Nova's host manager creates each weigher once per scheduler
        # process, so this count lives as long as the process.
        self._demand = ShelvedDemand()

    def weight_multiplier(self, host_state):
        return scheduler_utils.get_weight_multiplier(
            host_state, MULTIPLIER_KEY,
            CONF.shelve_accel.headroom_weight_multiplier)

    def weigh_objects(self, weighed_obj_list, spec_obj):
        # The weight of a host depends on the other hosts of its group: the
        # state of the request is computed once here, not once per host.
        hosts = [weighed.obj for weighed in weighed_obj_list]
        if not any(self.weight_multiplier(h) for h in hosts):
            # Disabled: no database read at all.
            return [0.0] * len(hosts)
        request = self._weighing_for(hosts, spec_obj)
        return super().weigh_objects(weighed_obj_list, request)

    def _weigh_object(self, host_state, request):
        return request.weight_of(host_state)

    def _weighing_for(self, hosts, spec_obj):
        # Tells the unshelve of a kept disk apart exactly as the filter
        # does, with the instance the filter read for this request.
        instance = filters.instance_to_unshelve(spec_obj)
        kept_on = instance and instance.system_metadata.get('shelved_host')
        if kept_on:
            storage = storage_groups.KeptDiskStorage(kept_on, hosts)
            # Otherwise the filter found no host of the group able to take
            # the instance and let every host through: the unshelve lands
            # outside the group, as any other request would.
            if all(storage.is_shared_by(h) for h in hosts):
                return UnshelveSpread(hosts)
        return GroupHeadroom(hosts, _size_of(spec_obj),
                             self._demand.by_host())


class UnshelveSpread:
    """Weights of the unshelve of a kept disk in its group: spread."""

    def __init__(self, hosts):
        self._free = {(h.host, h.nodename): max(_free_of(h).memory_mb, 0)
                      for h in hosts}
        self._most = max(self._free.values(), default=0)

    def weight_of(self, host_state):
        if not self._most:
            return 0.0
        return self._free[host_state.host, host_state.nodename] / self._most


class GroupHeadroom:
    """Weights of any other request: keep the groups' room for later.

    A group's free resources are those of its hosts among ``hosts``, the
    hosts left by the filters for this request: a host that cannot take
    this request may still take a shelved instance, but the filters and
    Placement say nothing about that, so it counts as having nothing free
    and the weigher errs on the side of keeping room. On each host, RAM
    counts in whole multiples of the smallest shelved instance of the
    group: a smaller piece holds none of them.
    """

    def __init__(self, hosts, size, need_by_host):
        self._size = size
        self._groups = storage_groups.StorageGroups.of_request(hosts)
        self._need = {}
        for group, members in self._groups.hosts.items():
            need = NO_NEED
            for host in members:
                need = _add_need(need, need_by_host.get(host, NO_NEED))
            self._need[group] = need
        self._free = collections.defaultdict(lambda: NOTHING)
        for host_state in hosts:
            for group in self._groups.of_host_state(host_state):
                self._free[group] = _plus(self._free[group],
                                          self._usable(host_state, group))
        for group, need in self._need.items():
            if need != NO_NEED:
                LOG.debug('Storage group %s: %d MB RAM and %d vCPUs free on '
                          'the candidate hosts for its shelved instances, '
                          'which need %d MB (the smallest %d MB) and %d '
                          'vCPUs.', group, self._free[group].memory_mb,
                          self._free[group].vcpus, need.memory_mb,
                          need.smallest_mb, need.vcpus)

    def weight_of(self, host_state):
        groups = self._groups.of_host_state(host_state)
        # A host in several groups (a configuration error the filter warns
        # about) keeps the room of the tightest.
        return min((self._covered_share(host_state, g) for g in groups),
                   default=1.0)

    def _covered_share(self, host_state, group):
        """Share of the group's need covered once the request is there."""
        need = self._need[group]
        left = _plus(
            _minus(self._free[group], self._usable(host_state, group)),
            self._usable(host_state, group, taken=self._size))
        shares = [min(free / needed, 1.0)
                  for free, needed in ((left.memory_mb, need.memory_mb),
                                       (left.vcpus, need.vcpus))
                  if needed > 0]
        return min(shares, default=1.0)

    def _usable(self, host_state, group, taken=NOTHING):
        """What the host has free for the group's shelved instances.

        Once ``taken`` is allocated on it.
        """
        free = _minus(_free_of(host_state), taken)
        memory_mb = max(free.memory_mb, 0)
        smallest_mb = self._need[group].smallest_mb
        if smallest_mb:
            memory_mb -= memory_mb % smallest_mb
        return Resources(memory_mb, max(free.vcpus, 0))


class ShelvedDemand:
    """What the instances shelved with kept disks need, per host.

    Keyed by ``shelved_host``, the host that offloaded them (its storage
    holds their disks). Read from every cell's database, at most once per
    ``[shelve_accel] headroom_refresh_interval``: that read lists the
    shelved-offloaded instances, the scheduling requests never do, so their
    cost does not grow with the number of shelved instances. While one
    request reads, the others use the previous count rather than wait for
    a slow cell.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._reading = threading.Lock()
        self._by_host = {}
        self._read_at = None

    def by_host(self):
        if self._is_fresh():
            return self._by_host
        if not self._reading.acquire(blocking=False):
            return self._by_host
        try:
            if not self._is_fresh():
                self._by_host = self._read()
                self._read_at = self._clock()
        finally:
            self._reading.release()
        return self._by_host

    def _is_fresh(self):
        return self._read_at is not None and (
            self._clock() - self._read_at <
            CONF.shelve_accel.headroom_refresh_interval)

    def _read(self):
        """{shelved_host: Need} of all cells; a failed cell counts 0."""
        ctxt = nova_context.get_admin_context()
        try:
            results = nova_context.scatter_gather_skip_cell0(
                ctxt, self._read_cell)
        except Exception:
            # The API database (the cell mappings) is unreachable.
            LOG.exception('Cannot list the cells to count the instances '
                          'shelved with kept disks; until the next count '
                          '([shelve_accel] headroom_refresh_interval), the '
                          'headroom weigher keeps no room for them.')
            return {}
        demand = collections.defaultdict(lambda: NO_NEED)
        for cell_uuid, result in results.items():
            if nova_context.is_cell_failure_sentinel(result):
                LOG.warning('Cannot count the instances shelved with kept '
                            'disks in cell %s (%s); until the next count '
                            '([shelve_accel] headroom_refresh_interval), '
                            'the headroom weigher keeps no room for them.',
                            cell_uuid, _failure_text(result))
                continue
            for host, need in result.items():
                demand[host] = _add_need(demand[host], need)
        LOG.debug('Instances shelved with kept disks need %s per host that '
                  'offloaded them.', dict(demand))
        return dict(demand)

    def _read_cell(self, cctxt):
        # The instances' own sizes are those of their flavor (Nova copies
        # them at build and resize), and need no join of instance_extra.
        instances = objects.InstanceList.get_by_filters(
            cctxt, {'vm_state': vm_states.SHELVED_OFFLOADED,
                    'deleted': False},
            expected_attrs=['system_metadata'])
        demand = collections.defaultdict(lambda: NO_NEED)
        for instance in instances:
            if not filters.is_offloaded_with_kept_disk(instance):
                continue
            kept_on = instance.system_metadata.get('shelved_host')
            if kept_on:
                memory_mb = instance.memory_mb or 0
                demand[kept_on] = _add_need(demand[kept_on], Need(
                    memory_mb, instance.vcpus or 0, memory_mb))
        return dict(demand)


def _failure_text(result):
    if result is nova_context.did_not_respond_sentinel:
        return 'no answer within %d seconds' % nova_context.CELL_TIMEOUT
    return '%s: %s' % (type(result).__name__, result)


def _size_of(spec_obj):
    return Resources(spec_obj.memory_mb, spec_obj.vcpus)


def _free_of(host_state):
    """RAM and vCPUs the host can still allocate, as Placement counts them.

    The allocation ratios multiply the hosts' totals, not what is free.
    """
    total_mb = host_state.total_usable_ram_mb
    return Resources(
        total_mb * host_state.ram_allocation_ratio -
        (total_mb - host_state.free_ram_mb),
        host_state.vcpus_total * host_state.cpu_allocation_ratio -
        host_state.vcpus_used)


def _plus(a, b):
    return Resources(a.memory_mb + b.memory_mb, a.vcpus + b.vcpus)


def _minus(a, b):
    return Resources(a.memory_mb - b.memory_mb, a.vcpus - b.vcpus)


def _add_need(a, b):
    smallest_mb = min((m for m in (a.smallest_mb, b.smallest_mb) if m),
                      default=0)
    return Need(a.memory_mb + b.memory_mb, a.vcpus + b.vcpus, smallest_mb)
