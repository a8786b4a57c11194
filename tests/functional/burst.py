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

"""A burst of unshelves on a functional cloud of many compute hosts.

The cloud of tests/functional/base.py grows to several storage groups (the
hosts of a group share one ``instances_path``) and several hosts with
storage of their own. Servers are booted evenly over every host and all
shelved (offloaded, their disks kept); then every unshelve request is sent
before the first one is waited for. Used by tests/functional/test_burst.py
and by tools/bench_burst.py.

What is measured is observed, never replaced: the scheduler, the filter,
the drivers, the claims and the disk files are the real code, and the
fixtures below only wrap them to count and time each call.
"""

import collections
import contextlib
import dataclasses
import functools
import math
import os
import time

import fixtures
import greenlet
from placement import db_api as placement_db_api
from sqlalchemy import engine as sa_engine
from sqlalchemy import event as sa_event

from nova.compute import manager as compute_manager
from nova.scheduler import manager as scheduler_manager

from nova_shelve_accel import compat
from nova_shelve_accel.scheduler import filters
from nova_shelve_accel import storage
from tests.functional import base

FLAVOR_MB = 512
# Servers of FLAVOR_MB a host can run; the vCPUs are not the limit.
SLOTS_PER_HOST = (base.HOST_MEMORY_MB -
                  base.HOST_RESERVED_MEMORY_MB) // FLAVOR_MB

# The API is polled this often while servers change state: a phase takes
# minutes, and each poll takes the CPU from the services.
POLL_SECONDS = 1.0
# A phase (booting, shelving, the burst) fails after this long per server:
# every qemu-img run and every service shares the two cores.
SECONDS_PER_SERVER = 5
MIN_PHASE_SECONDS = 120


# -- the cloud's layout -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """Compute hosts and the storage each sees.

    The base cloud's hosts are kept: A and B start storage group g1 and C
    is the first host with storage of its own.
    """

    groups: dict   # group name -> its hosts, which share one storage
    local: tuple   # hosts with storage of their own

    @classmethod
    def of(cls, groups, hosts_per_group, local_hosts):
        if groups < 1 or hosts_per_group < 2 or local_hosts < 1:
            raise ValueError(
                '%d groups of %d hosts and %d hosts of their own: the cloud '
                'needs at least one group of two hosts (A and B) and one '
                'host of its own (C).' % (groups, hosts_per_group,
                                          local_hosts))
        members = {}
        for number in range(1, groups + 1):
            name = 'g%d' % number
            first = ['A', 'B'] if number == 1 else []
            members[name] = tuple(first + [
                '%s-%d' % (name, i)
                for i in range(len(first) + 1, hosts_per_group + 1)])
        local = ('C',) + tuple('local-%d' % i
                               for i in range(2, local_hosts + 1))
        return cls(members, local)

    @property
    def hosts(self):
        return [h for hosts in self.groups.values() for h in hosts] + list(
            self.local)

    def storage_of(self, host):
        """The group of the host, or the host itself if it is in none."""
        for group, hosts in self.groups.items():
            if host in hosts:
                return group
        return host

    def describe(self):
        return '; '.join(
            ['%s = %s' % (g, ' '.join(hosts))
             for g, hosts in self.groups.items()] +
            ['own storage: %s' % ' '.join(self.local)])


def check_room(instances, layout):
    """Raise ValueError unless every host has room for its share.

    Servers are booted evenly over the hosts, and unshelved where they were
    shelved from, so each storage then has room for all of its unshelves.
    """
    per_host = math.ceil(instances / len(layout.hosts))
    if instances < 1 or per_host > SLOTS_PER_HOST:
        raise ValueError(
            '%d servers on %d hosts: a host has room for %d servers of %d '
            'MB, so ask for 1 to %d.' % (
                instances, len(layout.hosts), SLOTS_PER_HOST, FLAVOR_MB,
                SLOTS_PER_HOST * len(layout.hosts)))


# -- what is observed -------------------------------------------------------

@dataclasses.dataclass
class SchedulingRequest:
    """One call of SchedulerManager.select_destinations."""

    instance_uuids: list
    # Seconds from the call to its return, and the CPU seconds of the
    # greenthreads working for it. Every service runs in this one thread,
    # so the wall time includes the work of the others in between; the CPU
    # time does not, nor the time the machine gave to other processes.
    wall: float = 0.0
    cpu: float = 0.0
    # CPU seconds inside HostAggregateGroupFilter.filter_all, its lookups
    # of the instance (how many, and their CPU seconds), and the SQL
    # statements issued inside the filter.
    filter_cpu: float = 0.0
    lookups: int = 0
    lookup_cpu: float = 0.0
    filter_sql: int = 0
    # SQL statements issued during the request, to Nova's databases (API
    # and cell) and to Placement's (the scheduler's Placement calls run in
    # its greenthread through wsgi-intercept).
    nova_sql: int = 0
    placement_sql: int = 0
    in_filter: bool = dataclasses.field(default=False, repr=False)


class SchedulerCost(fixtures.Fixture):
    """Time and count the work of each scheduling request.

    A request is followed into the greenthreads it spawns (the scheduler
    reads the cells through a pool). Its CPU time is summed between
    greenlet switches, so that the other services, which run in the same
    thread meanwhile, do not count. Relies on Nova's eventlet mode, in
    which the functional tests run.
    """

    def setUp(self):
        super().setUp()
        self.requests = []
        # greenlet -> the request it works for.
        self._working_for = {}
        self._switched_at = time.thread_time()
        self._placement_engine = placement_db_api.get_placement_engine()
        self._previous_trace = greenlet.settrace(self._switch)
        self.addCleanup(greenlet.settrace, self._previous_trace)
        sa_event.listen(sa_engine.Engine, 'before_cursor_execute',
                        self._statement)
        self.addCleanup(sa_event.remove, sa_engine.Engine,
                        'before_cursor_execute', self._statement)
        self._observe_select_destinations()
        self._follow_spawned_threads()
        self._observe_filter()

    def forget(self):
        """Drop the requests seen so far."""
        self.requests = []

    # CPU time per request ------------------------------------------------

    def _switch(self, event, args):
        now = time.thread_time()
        origin, _target = args
        request = self._working_for.get(origin)
        if request is not None:
            request.cpu += now - self._switched_at
        self._switched_at = now
        if self._previous_trace is not None:
            self._previous_trace(event, args)

    def _current(self):
        return self._working_for.get(greenlet.getcurrent())

    @contextlib.contextmanager
    def _work_for(self, request):
        """Count the current greenthread's CPU time to ``request``."""
        current = greenlet.getcurrent()
        self._switched_at = time.thread_time()
        self._working_for[current] = request
        try:
            yield
        finally:
            del self._working_for[current]
            now = time.thread_time()
            request.cpu += now - self._switched_at
            self._switched_at = now

    def _cpu_so_far(self, request):
        # Valid in a greenthread working for the request: the time since
        # the last switch is its own.
        return request.cpu + time.thread_time() - self._switched_at

    # Wrappers -------------------------------------------------------------

    def _observe_select_destinations(self):
        real = scheduler_manager.SchedulerManager.select_destinations

        @functools.wraps(real)
        def select_destinations(manager, context, *args, **kwargs):
            request = SchedulingRequest(
                list(kwargs.get('instance_uuids') or ()))
            self.requests.append(request)
            start = time.perf_counter()
            try:
                with self._work_for(request):
                    return real(manager, context, *args, **kwargs)
            finally:
                request.wall = time.perf_counter() - start

        self.useFixture(fixtures.MonkeyPatch(
            'nova.scheduler.manager.SchedulerManager.select_destinations',
            select_destinations))

    def _follow_spawned_threads(self):
        real_spawn_on = base.real_thread_start()

        def spawn_on(executor_type, func, *args, **kwargs):
            request = self._current()
            if request is None:
                return real_spawn_on(executor_type, func, *args, **kwargs)

            @functools.wraps(func)
            def work_for_request(*args, **kwargs):
                with self._work_for(request):
                    return func(*args, **kwargs)

            return real_spawn_on(executor_type, work_for_request, *args,
                                 **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            compat.thread_start_hook(), spawn_on))

    def _observe_filter(self):
        group_filter = filters.HostAggregateGroupFilter
        real_filter_all = group_filter.filter_all
        real_load_instance = group_filter._load_instance

        @functools.wraps(real_filter_all)
        def filter_all(filter_, host_states, spec_obj):
            request = self._current()
            if request is None:
                return real_filter_all(filter_, host_states, spec_obj)
            before = self._cpu_so_far(request)
            request.in_filter = True
            try:
                return real_filter_all(filter_, host_states, spec_obj)
            finally:
                request.in_filter = False
                request.filter_cpu += self._cpu_so_far(request) - before

        @functools.wraps(real_load_instance)
        def load_instance(cell, instance_uuid):
            request = self._current()
            if request is None:
                return real_load_instance(cell, instance_uuid)
            request.lookups += 1
            before = self._cpu_so_far(request)
            try:
                return real_load_instance(cell, instance_uuid)
            finally:
                request.lookup_cpu += self._cpu_so_far(request) - before

        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.scheduler.filters.HostAggregateGroupFilter.'
            'filter_all', filter_all))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.scheduler.filters.HostAggregateGroupFilter.'
            '_load_instance', load_instance))

    def _statement(self, conn, cursor, statement, parameters, context,
                   executemany):
        request = self._current()
        # oslo.db sends a BEGIN of its own on the tests' SQLite only; on
        # MySQL a transaction begins with its first statement.
        if request is None or statement == 'BEGIN':
            return
        if conn.engine is self._placement_engine:
            request.placement_sql += 1
        else:
            request.nova_sql += 1
        if request.in_filter:
            request.filter_sql += 1


class UnshelveProgress(fixtures.Fixture):
    """When each unshelve ended on its compute host, or how it failed."""

    def setUp(self):
        super().setUp()
        # instance uuid -> time.perf_counter() when it was ACTIVE.
        self.finished = {}
        # instance uuid -> the error its unshelve raised.
        self.failed = {}
        real = compute_manager.ComputeManager._unshelve_instance

        @functools.wraps(real)
        def unshelve_instance(manager, context, instance, *args, **kwargs):
            try:
                result = real(manager, context, instance, *args, **kwargs)
            except Exception as e:
                self.failed[instance.uuid] = '%s: %s' % (type(e).__name__, e)
                raise
            # The instance was saved ACTIVE at the end of the unshelve.
            self.finished[instance.uuid] = time.perf_counter()
            return result

        self.useFixture(fixtures.MonkeyPatch(
            'nova.compute.manager.ComputeManager._unshelve_instance',
            unshelve_instance))


class KeptDiskClaims(fixtures.Fixture):
    """Claims of kept disks, per instance: won (renamed) or lost."""

    def setUp(self):
        super().setUp()
        self.won = collections.Counter()
        self.lost = collections.Counter()
        real = storage.KeptDiskStore.claim

        @functools.wraps(real)
        def claim(store, instance_uuid, snapshot_id):
            claimed = real(store, instance_uuid, snapshot_id)
            (self.won if claimed else self.lost)[instance_uuid] += 1
            return claimed

        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.storage.KeptDiskStore.claim', claim))


# -- the burst --------------------------------------------------------------

@dataclasses.dataclass
class InstanceOutcome:
    uuid: str
    shelved_from: str
    unshelved_on: str
    # Whether it came back to a host sharing the storage it was shelved
    # on (for a host in no group: that host).
    in_its_storage: bool
    # From the first unshelve request to the instance being ACTIVE.
    seconds_to_active: float
    claims: int
    snapshot_downloads: int


@dataclasses.dataclass
class BurstOutcome:
    with_filter: bool
    layout: Layout
    boot_seconds: float
    shelve_seconds: float
    # Sending every unshelve request, and from the first request to the
    # last instance ACTIVE.
    issue_seconds: float
    seconds: float
    # Image downloads from Glance during the burst, of any image.
    downloads: int
    instances: list       # InstanceOutcome, in the order of the requests
    requests: list        # SchedulingRequest of the burst
    kept_left: list       # kept-disk directories left on the storages


class BurstCloud(base.ShelveAccelTestBase):
    """The base cloud grown to ``layout``, observed for a burst."""

    # Set by a subclass, or on the test object before it runs.
    instances = 24
    layout = Layout.of(groups=2, hosts_per_group=2, local_hosts=2)
    with_filter = True

    def setUp(self):
        check_room(self.instances, self.layout)
        # The project's default quota is 10 instances.
        self.flags(driver='nova.quota.NoopQuotaDriver', group='quota')
        super().setUp()
        self._grow_to_layout()
        self.burst_flavor = self._create_flavor(
            name='m1.burst', memory_mb=FLAVOR_MB, vcpu=1, disk=1,
            ephemeral=0)
        self.scheduler_cost = self.useFixture(SchedulerCost())
        self.progress = self.useFixture(UnshelveProgress())
        self.claims = self.useFixture(KeptDiskClaims())

    def start_service(self, name, *args, **kwargs):
        if name == 'scheduler' and not self.with_filter:
            # The base enables the plugin's filter; the baseline's scheduler
            # starts with Nova's list alone.
            self.flags(enabled_filters=[
                f for f in base.CONF.filter_scheduler.enabled_filters
                if f != base.FILTER], group='filter_scheduler')
        return super().start_service(name, *args, **kwargs)

    def _grow_to_layout(self):
        """Start the hosts the base cloud lacks, in their storage groups."""
        paths = {'g1': self.g1_path, 'C': self.c_path}
        for host in self.layout.hosts:
            if host not in self.computes:
                storage_name = self.layout.storage_of(host)
                path = paths.setdefault(storage_name, os.path.join(
                    self.storage_root, storage_name))
                self.start_compute(host, path)
        for group, hosts in self.layout.groups.items():
            if group == 'g1':
                for host in hosts:
                    if host not in ('A', 'B'):
                        self.admin_api.add_host_to_aggregate(self.g1, host)
            else:
                self._create_storage_group(group, list(hosts))

    # -- phases ------------------------------------------------------------

    def run_burst(self):
        """Boot and shelve every server, then unshelve them all at once."""
        start = time.monotonic()
        servers = self.boot_evenly()
        booted = time.monotonic()
        ids = [s['id'] for s in servers]
        self.shelve_all(ids)
        shelved = time.monotonic()
        snapshots = {s['id']: self.snapshot_id(s) for s in servers}
        downloads_before = sum(self.downloads.values())
        self.scheduler_cost.forget()

        first_request = time.perf_counter()
        for server_id in ids:
            self.api.post_server_action(server_id, {'unshelve': None})
        issued = time.perf_counter()
        self.wait_for_unshelves(ids)

        hosts = {s['id']: self.host_of(s) for s in servers}
        back_on = {s['id']: self.host_of(s)
                   for s in self.api.get_servers(detail=True)}
        return BurstOutcome(
            with_filter=self.with_filter, layout=self.layout,
            boot_seconds=booted - start, shelve_seconds=shelved - booted,
            issue_seconds=issued - first_request,
            seconds=max(self.progress.finished.values()) - first_request,
            downloads=sum(self.downloads.values()) - downloads_before,
            instances=[self._outcome_of(
                server_id, hosts[server_id], back_on[server_id],
                snapshots[server_id], first_request) for server_id in ids],
            requests=list(self.scheduler_cost.requests),
            kept_left=self.kept_disks_left())

    def boot_evenly(self):
        """Boot the servers round-robin over the hosts; their details."""
        hosts = self.layout.hosts
        ids = []
        for number in range(self.instances):
            body = self._build_server(
                image_uuid=base.IMAGE_ID, flavor_id=self.burst_flavor,
                networks='none', host=hosts[number % len(hosts)])
            ids.append(self.api.post_server({'server': body})['id'])
        self.wait_for_status(ids, 'ACTIVE')
        by_id = {s['id']: s for s in self.api.get_servers(detail=True)}
        return [by_id[server_id] for server_id in ids]

    def shelve_all(self, ids):
        for server_id in ids:
            self.api.post_server_action(server_id, {'shelve': {}})
        self.wait_for_status(ids, 'SHELVED_OFFLOADED')
        # The host is cleared just after the status is saved.
        self.wait_until(lambda: not [
            s for s in self.api.get_servers(detail=True)
            if s['id'] in ids and self.host_of(s) is not None],
            'every shelved server has left its host', len(ids))

    def wait_for_unshelves(self, ids):
        progress = self.progress
        self.wait_until(
            lambda: len(progress.finished) + len(progress.failed) >= len(ids),
            'every unshelve has ended', len(ids))
        self.assertEqual({}, progress.failed)
        # What the compute hosts saved is what the API shows.
        self.wait_for_status(ids, 'ACTIVE')

    # -- waiting -----------------------------------------------------------

    def wait_for_status(self, ids, status):
        wanted = set(ids)

        def all_have_status():
            listed = self.api.get_servers(detail=False,
                                          search_opts={'status': status})
            if wanted <= {s['id'] for s in listed}:
                return True
            self._fail_on_errors(wanted)
            return False

        self.wait_until(all_have_status,
                        'all %d servers are %s' % (len(ids), status),
                        len(ids))

    def _fail_on_errors(self, wanted):
        failed = [s['id'] for s in self.api.get_servers(
            detail=False, search_opts={'status': 'ERROR'})
            if s['id'] in wanted]
        if failed:
            self.fail('%d servers in ERROR; %s: %s' % (
                len(failed), failed[0],
                self.api.get_server(failed[0]).get('fault')))

    def wait_until(self, predicate, what, servers):
        seconds = max(MIN_PHASE_SECONDS, SECONDS_PER_SERVER * servers)
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                self.fail('Not true after %d s: %s' % (seconds, what))
            time.sleep(POLL_SECONDS)

    # -- observations ------------------------------------------------------

    def _outcome_of(self, server_id, shelved_from, unshelved_on, snapshot_id,
                    first_request):
        layout = self.layout
        return InstanceOutcome(
            uuid=server_id, shelved_from=shelved_from,
            unshelved_on=unshelved_on,
            in_its_storage=(layout.storage_of(unshelved_on) ==
                            layout.storage_of(shelved_from)),
            seconds_to_active=(self.progress.finished[server_id] -
                               first_request),
            claims=self.claims.won[server_id],
            snapshot_downloads=self.downloads[snapshot_id])

    def kept_disks_left(self):
        """Whatever is left in the kept-disk directory of each storage."""
        paths = sorted({self.storage_of(host) for host in self.computes})
        return [os.path.join(path, base.KEPT_SUBDIR, name)
                for path in paths for name in self.kept_disks(path)]
