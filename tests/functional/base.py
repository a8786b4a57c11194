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

"""A small cloud for functional tests of shelve acceleration.

Nova's API, conductor, scheduler, three compute services and Placement run
in-process, as in Nova's own functional tests. The computes run our driver
on Nova's fake libvirt, but every disk is a real file made by qemu-img, and
Glance (Nova's GlanceFixture) serves real qcow2 image data and counts what it
serves. Hosts A and B share one instance storage and form the aggregate
``g1``; host C has its own storage.
"""

import collections
import contextlib
import datetime
import functools
import hashlib
import importlib
import json
import os
import subprocess
import sys
import threading
import time
import unittest
from unittest import mock

import fixtures
from glanceclient import exc as glance_exc
from oslo_config import cfg
from oslo_messaging.notify import _impl_test as notify_test_driver
from oslo_messaging.rpc import dispatcher as rpc_dispatcher
from oslo_utils.fixture import uuidsentinel as uuids
from oslo_utils import timeutils

from nova import context as nova_context
from nova import exception
from nova import objects
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional import integrated_helpers
from nova.virt.libvirt import config as libvirt_config
from nova.virt.libvirt import utils as libvirt_utils

from nova_shelve_accel import compat
from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import notifications
from nova_shelve_accel.virt.libvirt import upload
from tests import notification_samples as samples

CONF = accel_conf.CONF

# LibvirtFixture replaces it with a mock; our storages are real directories.
_REAL_GET_FS_INFO = libvirt_utils.get_fs_info

DRIVER = 'nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver'
FILTER = 'HostAggregateGroupFilter'
FILTER_PATH = 'nova_shelve_accel.scheduler.filters.' + FILTER
KEPT_SUBDIR = '_shelve_kept'

IMAGE_ID = '6c8a3ef4-5f9b-4a8c-9c55-3b0c6b4c1f10'
IMAGE_VIRTUAL_SIZE = 64 * 1024 * 1024
# Where the image carries data, and where each test writes its own marker
# into the instance's disk, as a guest would.
IMAGE_DATA_OFFSET = 4 * 1024 * 1024
MARKER_OFFSET = 16 * 1024 * 1024
MARKER_LENGTH = 64 * 1024

# Polls of the API, half a second apart, before a wait fails: converting
# disks with qemu-img takes seconds on a loaded two-core test machine.
WAIT_RETRIES = 120

HOST_MEMORY_MB = 8192
HOST_RESERVED_MEMORY_MB = 512


def run_for_benchmark(case):
    """Run one in-process cloud case for a benchmark (tools/bench_*.py).

    Prints what failed and exits; the case stores its own outcome.
    """
    result = unittest.TestResult()
    case.run(result)
    for _case, trace in result.errors + result.failures:
        print(trace, file=sys.stderr)
    if not result.wasSuccessful():
        sys.exit('The run failed; see above.')


def real_thread_start():
    """Nova's function that every thread it starts goes through."""
    module, _dot, name = compat.thread_start_hook().rpartition('.')
    return getattr(importlib.import_module(module), name)


class InstancesPathRouter(fixtures.Fixture):
    """Give each compute service its own ``instances_path`` and ``host``.

    All services of a functional test share one process and one CONF, but
    host C must see a storage of its own, and each driver must know which
    host it is, as in a process of its own. This fixture labels the thread that
    handles an RPC request of a compute service with that service's host,
    carries the label into the threads Nova and the uploader start for the
    request, and
    answers ``CONF.instances_path`` from the label. Work a test runs itself
    on a host's behalf (starting it, periodic tasks) uses ``on_host``.
    """

    def __init__(self, default_path):
        super().__init__()
        self.default_path = default_path
        self.paths = {}
        self._label = threading.local()

    def setUp(self):
        super().setUp()
        real_get = cfg.ConfigOpts._get
        real_spawn_on = real_thread_start()
        router = self

        def routed_get(conf, name, group=None, namespace=None):
            if name in ('instances_path', 'host') and group is None and (
                    conf is CONF):
                host = router.current_host()
                if host in router.paths:
                    return {'instances_path': router.paths[host],
                            'host': host}[name]
            return real_get(conf, name, group, namespace)

        def labelled_spawn_on(executor_type, func, *args, **kwargs):
            host = router.current_host()

            @functools.wraps(func)
            def run_labelled(*args, **kwargs):
                with router.labelled(host):
                    return func(*args, **kwargs)

            return real_spawn_on(executor_type, run_labelled, *args, **kwargs)

        real_in_context = upload._in_context

        def labelled_in_context(func):
            # The threads the uploader starts (its pool, the lease
            # heartbeat) carry the label as Nova's do.
            host = router.current_host()
            run = real_in_context(func)

            @functools.wraps(func)
            def run_labelled(*args, **kwargs):
                with router.labelled(host):
                    return run(*args, **kwargs)

            return run_labelled

        self.useFixture(fixtures.MonkeyPatch(
            'oslo_config.cfg.ConfigOpts._get', routed_get))
        self.useFixture(fixtures.MonkeyPatch(
            compat.thread_start_hook(), labelled_spawn_on))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.virt.libvirt.upload._in_context',
            labelled_in_context))

        real_dispatch = rpc_dispatcher.RPCDispatcher._do_dispatch

        def labelled_dispatch(dispatcher, endpoint, *args, **kwargs):
            # A compute manager handles the requests sent to its host, from
            # the first one on (a restarted service may receive requests it
            # sent itself while starting).
            with router.labelled(getattr(endpoint, 'host', None)):
                return real_dispatch(dispatcher, endpoint, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'oslo_messaging.rpc.dispatcher.RPCDispatcher._do_dispatch',
            labelled_dispatch))

    def current_host(self):
        return getattr(self._label, 'host', None)

    @contextlib.contextmanager
    def labelled(self, host):
        previous = self.current_host()
        self._label.host = host
        try:
            yield
        finally:
            self._label.host = previous

    def add_host(self, host, path):
        os.makedirs(path, exist_ok=True)
        self.paths[host] = path

    @contextlib.contextmanager
    def on_host(self, host):
        with self.labelled(host):
            yield nova_context.get_admin_context()


def make_image(path, data_offset=IMAGE_DATA_OFFSET):
    """A real qcow2 image with a recognisable block of data in it."""
    subprocess.check_call(['qemu-img', 'create', '-q', '-f', 'qcow2', path,
                           str(IMAGE_VIRTUAL_SIZE)])
    subprocess.check_call(['qemu-io', '-f', 'qcow2', '-c',
                           'write -P 0x61 %d 1M' % data_offset, path],
                          stdout=subprocess.DEVNULL)


def write_marker(disk, pattern):
    subprocess.check_call(
        ['qemu-io', '-f', 'qcow2', '-c',
         'write -P %#x %d %d' % (pattern, MARKER_OFFSET, MARKER_LENGTH), disk],
        stdout=subprocess.DEVNULL)


def read_marker(disk):
    """The byte the disk holds over the whole marker range, or None."""
    out = subprocess.run(
        ['qemu-io', '-f', 'qcow2', '-c',
         'read -v %d 16' % MARKER_OFFSET, disk],
        check=True, capture_output=True, text=True).stdout
    first = out.split(':', 1)[1].split()[:16]
    values = {int(b, 16) for b in first}
    return values.pop() if len(values) == 1 else None


def backing_file(disk):
    out = subprocess.run(['qemu-img', 'info', '--output=json', '-U', disk],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out).get('backing-filename')


class ShelveAccelTestBase(integrated_helpers.ProviderUsageBaseTestCase):
    """Hosts A and B share storage g1; host C has its own."""

    compute_driver = DRIVER
    microversion = '2.91'

    def setUp(self):
        self.storage_root = self.useFixture(fixtures.TempDir()).path
        self.g1_path = os.path.join(self.storage_root, 'g1')
        self.c_path = os.path.join(self.storage_root, 'c')
        self.flags(instances_path=os.path.join(self.storage_root, 'unused'))
        self.flags(api_paste_config=os.path.join(
            sys.prefix, 'etc', 'nova', 'api-paste.ini'), group='wsgi')
        self.flags(available_filters=[
            'nova.scheduler.filters.all_filters', FILTER_PATH],
            group='filter_scheduler')
        self.flags(enabled_filters=(
            CONF.filter_scheduler.enabled_filters + [FILTER]),
            group='filter_scheduler')
        self.flags(shelved_offload_time=0)
        self.flags(images_type='qcow2', group='libvirt')
        # The floor has its own test; the others must not depend on how full
        # the test machine's disk is.
        self.flags(free_space_floor_percent=0, group='shelve_accel')

        self.router = self.useFixture(InstancesPathRouter(
            CONF.instances_path))
        super().setUp()
        # Nova's test base sends notifications to oslo.messaging's
        # in-memory driver; ours go there through a real Notifier.
        notify_test_driver.reset()
        notifications.forget_storage_groups()
        self.useFixture(samples.SentLikeTheSamples(self))
        self._fake_host_environment()
        self._glance_keeps_image_data()
        self.downloads = self._count_image_downloads()
        self._upload_image()
        self.computes = {}
        self.connections = {}
        for host, path in (('A', self.g1_path), ('B', self.g1_path),
                           ('C', self.c_path)):
            self.start_compute(host, path)
        self.g1 = self._create_storage_group('g1', ['A', 'B'])
        self.flavor_id = self._create_flavor(
            name='m1.accel', memory_mb=512, vcpu=1, disk=1, ephemeral=0)

    # -- environment -------------------------------------------------------

    def _fake_host_environment(self):
        """What a compute host would read from its hardware and Cinder."""
        self.useFixture(nova_fixtures.CGroupsFixture())
        # Privileged helpers (utime, chown of disk files) run in-process on
        # the test's own files instead of in a root daemon.
        self.useFixture(nova_fixtures.PrivsepFixture())
        self.libvirt = self.useFixture(nova_fixtures.LibvirtFixture())
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.utils.get_fs_info', _REAL_GET_FS_INFO))
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._get_vcpu_available',
            return_value=set(range(8))))
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.host.Host.get_memory_mb_total',
            return_value=HOST_MEMORY_MB))
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.host.Host.get_online_cpus',
            return_value=set(range(8))))
        # Volume attachment is Cinder's and os-brick's business.
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.get_volume_connector'))
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._connect_volume'))
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._disconnect_volume'))
        volume_config = libvirt_config.LibvirtConfigGuestDisk()
        volume_config.driver_name = 'qemu'
        volume_config.source_path = '/dev/fake-volume'
        volume_config.target_dev = 'vda'
        volume_config.target_bus = 'virtio'
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._get_volume_config',
            return_value=volume_config))

    def _count_image_downloads(self):
        downloads = collections.Counter()
        real_download = self.glance.download

        def counting_download(context, image_id, *args, **kwargs):
            downloads[image_id] += 1
            return real_download(context, image_id, *args, **kwargs)

        self.glance.download = counting_download
        return downloads

    def _glance_keeps_image_data(self):
        """Make GlanceFixture's image life cycle that of Glance v2.

        GlanceFixture marks every image it creates active and drops the data
        of an update. Fast shelve depends on the difference: the image the
        API creates for a shelve is ``queued`` until data is uploaded into
        it, and a queued image cannot be downloaded. Here, as in Glance:

        * an image created with no data and no status is ``queued``, with
          the size Nova's Glance client reports for it (0) and no checksum;
        * an upload (an update with data) is refused unless the image is
          queued; the image is ``saving`` while the data is read, goes back
          to ``queued`` if reading fails, and is ``active`` with the size
          and MD5 checksum of the data once it is read; an image deleted
          meanwhile stays deleted;
        * ``status`` in an update's metadata is ignored (it is read-only);
        * downloading an image with no data fails as Nova's client fails.

        What it observes, for the tests: ``uploads`` counts the uploads into
        each image (the attempts that reached Glance), ``upload_attempts``
        lists them in order as [image id, host label of the uploading
        thread, 'active' or the name of the exception], ``image_statuses``
        lists every status each image had, and ``max_concurrent_uploads``
        is the most uploads Glance was reading at once. ``upload_hook``, if
        set, is called with the image id inside an upload, once the image is
        ``saving`` and before any data is read.
        """
        glance = self.glance
        real_create = glance.create
        real_update = glance.update
        real_download = glance.download
        self.uploads = collections.Counter()
        self.upload_attempts = []
        self.image_statuses = collections.defaultdict(list)
        self.max_concurrent_uploads = 0
        self.upload_hook = None
        reading = 0
        lock = threading.Lock()

        def set_status(image_id, status, **attributes):
            image = glance.images.get(image_id)
            if image is None:
                return
            image['status'] = status
            image.update(attributes)
            self.image_statuses[image_id].append(status)

        def create(context, metadata, data=None):
            if data is None and 'status' not in metadata:
                metadata = dict(metadata, status='queued', size=0,
                                checksum=None)
            image = real_create(context, metadata, data=data)
            self.image_statuses[image['id']].append(image['status'])
            return image

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            nonlocal reading
            metadata = dict(metadata)
            metadata.pop('status', None)
            if data is None:
                return real_update(context, image_id, metadata,
                                   purge_props=purge_props)
            status = glance.show(context, image_id)['status']
            self.uploads[image_id] += 1
            attempt = [image_id, self.router.current_host(), None]
            self.upload_attempts.append(attempt)
            if status != 'queued':
                attempt[2] = 'HTTPConflict'
                raise glance_exc.HTTPConflict(
                    'Image status transition from %s to saving is not '
                    'allowed' % status)
            set_status(image_id, 'saving')
            with lock:
                reading += 1
                self.max_concurrent_uploads = max(
                    self.max_concurrent_uploads, reading)
            try:
                if self.upload_hook is not None:
                    self.upload_hook(image_id)
                payload = data.read()
            except BaseException as e:
                attempt[2] = type(e).__name__
                set_status(image_id, 'queued')
                raise
            finally:
                with lock:
                    reading -= 1
            if image_id not in glance.images:
                attempt[2] = 'ImageNotFound'
                raise exception.ImageNotFound(image_id=image_id)
            image = real_update(context, image_id, metadata,
                                purge_props=purge_props)
            glance._imagedata[image_id] = payload
            set_status(image_id, 'active', size=len(payload),
                       checksum=hashlib.md5(payload).hexdigest())
            attempt[2] = 'active'
            return image

        def download(context, image_id, *args, **kwargs):
            if glance.show(context, image_id)['status'] != 'active':
                raise exception.ImageUnacceptable(
                    image_id=image_id, reason='Image has no associated data')
            return real_download(context, image_id, *args, **kwargs)

        glance.create = create
        glance.update = update
        glance.download = download

    def _upload_image(self):
        path = os.path.join(self.storage_root, 'image.qcow2')
        make_image(path)
        with open(path, 'rb') as data:
            self.glance.create(None, {
                'id': IMAGE_ID, 'name': 'accel-image', 'status': 'active',
                'disk_format': 'qcow2', 'container_format': 'bare',
                'size': os.path.getsize(path), 'min_disk': 0,
                'properties': {}}, data=data)

    def start_compute(self, host, path):
        self.router.add_host(host, path)
        self.connections[host] = fakelibvirt.Connection(
            'qemu:///system', version=fakelibvirt.FAKE_LIBVIRT_VERSION,
            hv_version=fakelibvirt.FAKE_QEMU_VERSION,
            host_info=fakelibvirt.HostInfo(
                cpu_nodes=1, cpu_sockets=1, cpu_cores=4, cpu_threads=2,
                kB_mem=HOST_MEMORY_MB * 1024),
            hostname=host)
        return self._run_compute(
            host, lambda: self.start_service('compute', host=host))

    def restart_compute(self, host):
        """Restart a compute service as after a crash of its process.

        A new manager runs init_host; the hypervisor keeps its domains.
        Nova's helper keeps the driver object for that, so the background
        uploads the stopped service's cleanup_host ended are replaced by
        those of a new process, before init_host resumes the interrupted
        ones.
        """
        driver = self.computes[host].manager.driver
        real_init_host = driver.init_host

        def init_host_of_new_process(host):
            driver._uploads = upload.SnapshotUploader(
                driver._kept_disks,
                spawns_in_progress=driver.spawns_in_progress)
            return real_init_host(host)

        with mock.patch.object(driver, 'init_host',
                               side_effect=init_host_of_new_process), \
                self.shutdown_in_background(host):
            return self._run_compute(
                host, lambda: self.restart_compute_service(
                    self.computes[host]))

    def shutdown_in_background(self, host):
        """Let the service's stop() return before the driver's cleanup.

        Nova 34 runs the manager's graceful shutdown (cleanup_host with it)
        in a thread of its own and waits for it at most
        manager_shutdown_timeout; 31 and 32 call cleanup_host, 33
        graceful_shutdown, inside stop(), where Nova's test fixture makes
        the driver's cleanup_host wait for every upload in progress. A
        crashed process waits for nothing: on those releases the call runs
        in a thread here.
        """
        service = self.computes[host]
        if hasattr(service, '_run_manager_graceful_shutdown'):
            return contextlib.nullcontext()
        manager = service.manager
        name = ('graceful_shutdown' if hasattr(manager, 'graceful_shutdown')
                else 'cleanup_host')
        real = getattr(manager, name)

        def in_background(*args, **kwargs):
            threading.Thread(target=real, args=args, kwargs=kwargs,
                             daemon=True).start()
        return mock.patch.object(manager, name, in_background)

    def _run_compute(self, host, start):
        connection = self.connections[host]
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.router.on_host(host))
            stack.enter_context(mock.patch(
                'nova.virt.libvirt.host.Host.get_connection',
                return_value=connection))
            stack.enter_context(mock.patch(
                'nova.virt.node.get_local_node_uuid',
                return_value=str(getattr(uuids, 'node_%s' % host))))
            compute = start()
            compute.driver._host.get_node_uuid()
        compute.driver._host.get_connection = lambda: connection
        self.computes[host] = compute
        return compute

    def _create_storage_group(self, name, hosts):
        agg_id = self._create_aggregate(name)
        self.admin_api.post_aggregate_action(agg_id, {'set_metadata': {
            'metadata': {'shelve_storage_group': name}}})
        for host in hosts:
            self.admin_api.add_host_to_aggregate(agg_id, host)
        return agg_id

    # -- operations --------------------------------------------------------

    def run_periodic(self, host, task):
        """Run a compute periodic task of ``host`` as its service would."""
        with self.router.on_host(host) as ctxt:
            getattr(self.computes[host].manager, task)(ctxt)

    def run_image_cache_pass(self, host):
        self.run_periodic(host, '_run_image_cache_manager_pass')

    def update_resources(self, host):
        self.run_periodic(host, 'update_available_resource')

    def boot(self, host=None, flavor_id=None):
        body = self._build_server(
            image_uuid=IMAGE_ID, flavor_id=flavor_id or self.flavor_id,
            networks='none', host=host)
        server = self.api.post_server({'server': body})
        return self._wait_for_state_change(server, 'ACTIVE', WAIT_RETRIES)

    def shelve(self, server, expected_state='SHELVED_OFFLOADED'):
        self.api.post_server_action(server['id'], {'shelve': {}})
        expected = {'status': expected_state}
        if expected_state == 'SHELVED_OFFLOADED':
            # The host is cleared just after the status is saved.
            expected['OS-EXT-SRV-ATTR:host'] = None
        return self._wait_for_server_parameter(server, expected, WAIT_RETRIES)

    def unshelve(self, server, host=None, expected_state='ACTIVE'):
        body = {'unshelve': {'host': host} if host else None}
        self.api.post_server_action(server['id'], body)
        return self._wait_for_state_change(server, expected_state,
                                           WAIT_RETRIES)

    def _wait_for(self, predicate):
        for _ in range(WAIT_RETRIES):
            if predicate():
                return
            time.sleep(0.5)
        self.fail('still not true after %d polls: %s'
                  % (WAIT_RETRIES, predicate))

    def set_service_status(self, host, enabled):
        service = self.admin_api.get_services(
            binary='nova-compute', host=host)[0]
        self.admin_api.put_service(service['id'], {
            'status': 'enabled' if enabled else 'disabled'})

    # -- observations ------------------------------------------------------

    @staticmethod
    def events(event_type, instance_uuid=None):
        """Payloads of our notifications of that type, oldest first."""
        return [data for data in map(samples.data_of,
                                     samples.sent(event_type))
                if instance_uuid in (None, data['instance_uuid'])]

    @staticmethod
    def host_of(server):
        return server['OS-EXT-SRV-ATTR:host']

    def storage_of(self, host):
        return self.router.paths[host]

    def kept_disks(self, path):
        kept = os.path.join(path, KEPT_SUBDIR)
        if not os.path.isdir(kept):
            return []
        # Every entry but the probes the hosts leave there at start.
        return sorted(n for n in os.listdir(kept)
                      if not n.startswith('.host-'))

    def kept_dir(self, path, server):
        [name] = [n for n in self.kept_disks(path)
                  if n.startswith(server['id'] + '.')]
        return os.path.join(path, KEPT_SUBDIR, name)

    def instance_disk(self, server, host=None):
        host = host or self.host_of(server)
        return os.path.join(self.storage_of(host), server['id'], 'disk')

    def snapshot_id(self, server):
        ctxt = nova_context.get_admin_context()
        instance = objects.Instance.get_by_uuid(
            ctxt, server['id'], expected_attrs=['system_metadata'])
        return instance.system_metadata.get('shelved_image_id')

    def allocations(self, server):
        return self._get_allocations_by_server_uuid(server['id'])

    def reserved_disk_gb(self, host):
        rp_uuid = self._get_provider_uuid_by_host(host)
        return self._get_provider_inventory(rp_uuid)['DISK_GB']['reserved']

    def assert_offloaded_without_resources(self, server):
        server = self.api.get_server(server['id'])
        self.assertEqual('SHELVED_OFFLOADED', server['status'])
        self.assertIsNone(self.host_of(server))
        self.assertEqual({}, self.allocations(server))
        for host, connection in self.connections.items():
            self.assertNotIn(server['id'], [
                d.UUIDString() for d in connection._vms.values()],
                'a domain of the offloaded instance is left on %s' % host)

    def assert_runs_on(self, server, hosts):
        server = self.api.get_server(server['id'])
        self.assertEqual('ACTIVE', server['status'])
        self.assertIn(self.host_of(server), hosts)
        rp_uuid = self._get_provider_uuid_by_host(self.host_of(server))
        self.assertEqual([rp_uuid], list(self.allocations(server)))
        return server

    @contextlib.contextmanager
    def time_passes(self, seconds):
        timeutils.set_time_override(
            timeutils.utcnow() + datetime.timedelta(seconds=seconds))
        try:
            yield
        finally:
            timeutils.clear_time_override()
            # A heartbeat a service wrote meanwhile is in the future now, and
            # Nova's servicegroup takes a service whose last heartbeat is
            # that far off, either way, for down: the scheduler's
            # ComputeFilter would turn those hosts away. Every compute
            # reports again on the clock that is back.
            for compute in self.computes.values():
                compute.servicegroup_api._driver._report_state(compute)
