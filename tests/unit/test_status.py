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

"""nova-shelve-accel-status on real options, directories and aggregates.

Options are set with Nova's test flags or parsed from a nova.conf written
by the test; directories are real temporary ones; aggregates are created
in the test's API database.
"""

import contextlib
from importlib import metadata as importlib_metadata
import io
import itertools
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import fixtures
from oslo_config import cfg
from oslo_db.sqlalchemy import enginefacade
from oslo_db.sqlalchemy import test_fixtures as db_fixtures
from oslo_upgradecheck import upgradecheck
from oslo_utils.fixture import uuidsentinel as uuids
import sqlalchemy
import testtools

import nova.conf
from nova import context as nova_context
from nova.db.api import api as api_db_api
from nova.db.api import models as api_models
from nova import objects
from nova import test
from nova import version as nova_version

from nova_shelve_accel.cmd import status
from nova_shelve_accel import compat
from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import storage_groups
from tests.unit import disks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

CONF = nova.conf.CONF
SUCCESS = upgradecheck.Code.SUCCESS
WARNING = upgradecheck.Code.WARNING
FAILURE = upgradecheck.Code.FAILURE
NOBODY = 65534
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
NOVA_FILTERS = 'nova.scheduler.filters.all_filters'
GOOD_FILTERS = ['ComputeFilter', 'ImagePropertiesFilter',
                'HostAggregateGroupFilter']


class NovaConfFile(fixtures.Fixture):
    """A nova.conf written by the test, and the arguments naming it.

    Nova's ConfFixture parsed the global CONF with no file at all.
    ``parse()`` parses it again from this file, as a service started with
    ``--config-file`` would; ``args_for_main()`` leaves the parsing to
    ``main()``, and drops at the end the command line option that
    ``upgradecheck.main`` registers, as a new process would not have it.
    """

    def __init__(self, text):
        super().__init__()
        self.text = textwrap.dedent(text)

    def _setUp(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(tmp, 'nova.conf')
        with open(path, 'w') as f:
            f.write(self.text)
        # An empty --config-dir: no /etc/nova/nova.conf.d of the machine.
        config_dir = os.path.join(tmp, 'nova.conf.d')
        os.mkdir(config_dir)
        self.args = ['--config-file', path, '--config-dir', config_dir]

    def parse(self):
        self._unparse()
        CONF(self.args, project='nova')

    def args_for_main(self):
        # Cleanups run last first: unregistering needs CONF unparsed.
        self.addCleanup(CONF.unregister_opt, cfg.SubCommandOpt('command'))
        self._unparse()
        return self.args

    def _unparse(self):
        CONF.clear()
        self.addCleanup(CONF.clear)


@contextlib.contextmanager
def unprivileged():
    """Run the block as user nobody, where root could write anything."""
    if os.geteuid() != 0:
        # Not root: the directories the tests make read-only stay so.
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


class CheckTestMixin:

    def setUp(self):
        super().setUp()
        self.cmd = status.UpgradeCommands()

    def assertResult(self, result, code, *fragments):
        self.assertEqual(code, result.code, result.details)
        for fragment in fragments:
            self.assertIn(fragment, result.details)

    def use_plugin_driver(self):
        self.flags(compute_driver=status.PLUGIN_DRIVER)

    def parse_nova_conf(self, text):
        self.useFixture(NovaConfFile(text)).parse()


class TestNovaRelease(CheckTestMixin, test.NoDBTestCase):

    SERIES = {31: '2025.1', 32: '2025.2', 33: '2026.1', 34: '2026.2'}

    def release_check_with(self, version):
        with mock.patch.object(nova_version, 'version_string',
                               return_value=version):
            return self.cmd._check_nova_release()

    def test_installed_nova_is_named_and_supported(self):
        # Run by every lane (tox -e py3, py3-nova31 ...): each names its own.
        installed = importlib_metadata.version('nova')
        self.assertResult(
            self.cmd._check_nova_release(), status.SUCCESS,
            'Nova %s (%s): supported' % (
                installed, self.SERIES[int(installed.split('.')[0])]))

    def test_newer_and_older_releases_fail(self):
        for version in ('35.0.0', '30.2.1', '35.0.0.0rc2.dev14'):
            self.assertResult(
                self.release_check_with(version), status.FAILURE,
                'Nova %s is installed' % version,
                'supports Nova 31.x (2025.1) to 34.x (2026.2)',
                'private methods')

    def test_a_version_that_is_no_number_fails(self):
        self.assertResult(self.release_check_with('unknown'), status.FAILURE,
                          'Nova unknown is installed')

    def test_the_range_is_the_one_pip_enforces(self):
        # requirements.txt and compat.SUPPORTED_SERIES state one range.
        with open(os.path.join(REPO, 'requirements.txt')) as f:
            pin, = [line.split('#')[0].strip() for line in f
                    if line.startswith('nova')]
        self.assertEqual(
            'nova>=%d.0.0,<%d' % (min(self.SERIES), max(self.SERIES) + 1),
            pin)
        self.assertEqual(self.SERIES, compat.SUPPORTED_SERIES)


class TestComputeDriver(CheckTestMixin, test.NoDBTestCase):

    def test_plugin_driver_applies_the_compute_checks(self):
        self.use_plugin_driver()
        self.assertResult(self.cmd._check_compute_driver(), SUCCESS,
                          status.PLUGIN_DRIVER, 'runs the plugin')

    def test_plugin_driver_without_nova_shim_fails(self):
        self.use_plugin_driver()
        self.hide_module(status.DRIVER_SHIM)
        self.assertResult(self.cmd._check_compute_driver(), FAILURE,
                          status.DRIVER_SHIM, 'does not start')

    def test_plugin_driver_nova_cannot_load_fails(self):
        # The shim is there, but what it names does not import (a package
        # of another version, or in another Python environment).
        self.use_plugin_driver()
        self.hide_module(status.DRIVER_SHIM + '.virt.libvirt')
        self.assertResult(self.cmd._check_compute_driver(), FAILURE,
                          'cannot load nova.virt.%s' % status.PLUGIN_DRIVER)

    def hide_module(self, name):
        # None in sys.modules is how Python says a module is not there.
        previous = sys.modules.get(name)
        sys.modules[name] = None
        if previous is None:
            self.addCleanup(sys.modules.pop, name)
        else:
            self.addCleanup(sys.modules.__setitem__, name, previous)

    def test_misspelled_plugin_driver_fails(self):
        self.flags(compute_driver='nova_shelve_accel.PartialOffloadDriver')
        self.assertResult(self.cmd._check_compute_driver(), FAILURE,
                          'nova_shelve_accel.PartialOffloadDriver',
                          'Set compute_driver = %s' % status.PLUGIN_DRIVER)

    def test_no_compute_driver_skips_the_compute_checks(self):
        self.flags(compute_driver=None)
        result = self.cmd._check_compute_driver()
        self.assertResult(result, SUCCESS, 'compute_driver is not set')
        for check in (self.cmd._check_shelve_accel_options,
                      self.cmd._check_kept_disks_directory,
                      self.cmd._check_image_cache_pass):
            self.assertEqual(result.details, check().details)

    def test_other_driver_skips_the_compute_checks(self):
        self.flags(compute_driver='libvirt.LibvirtDriver')
        # Even what would fail on a host of the plugin.
        self.flags(manager_interval=-1, group='image_cache')
        self.flags(instances_path='/nonexistent/instances')
        for check in (self.cmd._check_compute_driver,
                      self.cmd._check_shelve_accel_options,
                      self.cmd._check_kept_disks_directory,
                      self.cmd._check_image_cache_pass):
            self.assertResult(check(), SUCCESS, 'Skipped',
                              'libvirt.LibvirtDriver')

    def test_compute_options_without_the_driver_warn(self):
        self.parse_nova_conf("""
            [DEFAULT]
            compute_driver = libvirt.LibvirtDriver
            [shelve_accel]
            partial_offload = true
            snapshot_upload = after_offload
            free_space_floor_percent = 5
            """)
        result = self.cmd._check_compute_driver()
        self.assertResult(result, WARNING, 'partial_offload',
                          'snapshot_upload', 'keeps no disk')
        # The scheduler's option is at home in a scheduler's nova.conf.
        self.assertNotIn('free_space_floor_percent', result.details)

    def test_scheduler_option_alone_without_the_driver_is_fine(self):
        self.parse_nova_conf("""
            [DEFAULT]
            compute_driver = libvirt.LibvirtDriver
            [shelve_accel]
            free_space_floor_percent = 5
            """)
        self.assertResult(self.cmd._check_compute_driver(), SUCCESS,
                          'Skipped')


class TestSchedulerOptions(testtools.TestCase):

    def test_scheduler_options_are_options_of_the_group(self):
        [(group, options)] = accel_conf.list_opts()
        self.assertLessEqual(status.SCHEDULER_OPTIONS,
                             {option.name for option in options})


class TestSchedulerFilter(CheckTestMixin, test.NoDBTestCase):

    def set_filters(self, enabled, available=(NOVA_FILTERS,
                                              status.FILTER_PATH)):
        self.flags(enabled_filters=enabled, available_filters=available,
                   group='filter_scheduler')

    def test_filter_available_and_last(self):
        self.set_filters(GOOD_FILTERS)
        self.assertResult(self.cmd._check_scheduler_filter(), SUCCESS,
                          'available and last')

    def test_filter_not_enabled_warns_and_says_where_to_run(self):
        self.set_filters(['ComputeFilter', 'ImagePropertiesFilter'])
        self.assertResult(self.cmd._check_scheduler_filter(), WARNING,
                          'not in [filter_scheduler] enabled_filters',
                          status.FILTER_PATH, 'run this command there')

    def test_nova_default_filters_warn(self):
        self.assertResult(self.cmd._check_scheduler_filter(), WARNING,
                          'HostAggregateGroupFilter is not in')

    def test_filter_not_last_fails(self):
        self.set_filters(['ComputeFilter', 'HostAggregateGroupFilter',
                          'ImagePropertiesFilter',
                          'ServerGroupAffinityFilter'])
        self.assertResult(
            self.cmd._check_scheduler_filter(), FAILURE, 'must be last',
            'ImagePropertiesFilter, ServerGroupAffinityFilter come after',
            'No valid host was found')

    def test_filter_enabled_but_not_available_fails(self):
        self.set_filters(GOOD_FILTERS, available=[NOVA_FILTERS])
        self.assertResult(self.cmd._check_scheduler_filter(), FAILURE,
                          'SchedulerHostFilterNotFound',
                          'available_filters = %s' % status.FILTER_PATH)

    def test_available_filter_that_does_not_load_fails(self):
        wrong = 'nova_shelve_accel.scheduler.filters.HostAggregateFilter'
        self.set_filters(GOOD_FILTERS,
                         available=[NOVA_FILTERS, status.FILTER_PATH, wrong])
        self.assertResult(self.cmd._check_scheduler_filter(), FAILURE,
                          'available_filters = %s does not load' % wrong)


class TestSchedulerWeigher(CheckTestMixin, test.NoDBTestCase):

    def test_novas_default_weighers_alone(self):
        self.assertResult(self.cmd._check_scheduler_weigher(), SUCCESS,
                          'not in [filter_scheduler] weight_classes')

    def test_the_weigher_guides_snippet(self):
        # The block an operator pastes, as the guide gives it.
        path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                            'doc', 'source', 'weigher.rst')
        with open(path) as f:
            guide = f.read()
        lines = guide.split('.. code-block:: ini\n', 1)[1].splitlines()
        block = itertools.takewhile(lambda line: not line[:1].strip(),
                                    lines)
        self.parse_nova_conf(textwrap.dedent('\n'.join(block)))
        self.assertResult(self.cmd._check_scheduler_weigher(), SUCCESS,
                          'ShelvedHeadroomWeigher beside %s'
                          % status.NOVA_WEIGHERS)

    def test_two_lines_lose_novas_weighers(self):
        # A list option: the second line replaces the first.
        self.parse_nova_conf("""
            [filter_scheduler]
            weight_classes = %s
            weight_classes = %s
            """ % (status.NOVA_WEIGHERS, status.WEIGHER_PATH))
        self.assertResult(self.cmd._check_scheduler_weigher(), WARNING,
                          "none of Nova's weighers", 'the last one wins',
                          'weight_classes = %s,%s' % (status.NOVA_WEIGHERS,
                                                      status.WEIGHER_PATH))

    def test_novas_weighers_named_one_by_one(self):
        self.flags(weight_classes=[
            'nova.scheduler.weights.ram.RAMWeigher', status.WEIGHER_PATH],
            group='filter_scheduler')
        self.assertResult(self.cmd._check_scheduler_weigher(), SUCCESS,
                          'nova.scheduler.weights.ram.RAMWeigher')

    def test_weigher_options_without_the_weigher_warn(self):
        self.parse_nova_conf("""
            [shelve_accel]
            headroom_weight_multiplier = 100.0
            """)
        self.assertResult(self.cmd._check_scheduler_weigher(), WARNING,
                          'headroom_weight_multiplier', 'no effect')


class TestShelveAccelOptions(CheckTestMixin, test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.use_plugin_driver()

    def check(self):
        return self.cmd._check_shelve_accel_options()

    def test_defaults_with_service_user_credentials_are_consistent(self):
        self.flags(auth_type='none', group='service_user')
        self.assertResult(self.check(), SUCCESS, 'partial_offload = True',
                          'snapshot_upload = at_shelve')

    def test_eviction_without_service_user_credentials_warns(self):
        # Space eviction is on by default.
        self.assertResult(self.check(), WARNING,
                          'eviction_margin_percent = 5, max_kept_age = 0',
                          '[service_user] has no credentials',
                          'no kept disk is ever evicted')

    def test_without_eviction_no_credentials_are_needed(self):
        self.flags(eviction_margin_percent=0, group='shelve_accel')
        self.assertResult(self.check(), SUCCESS)

    def test_kept_disks_in_the_image_cache_directory_fails(self):
        self.flags(kept_disks_subdirectory='_base', group='shelve_accel')
        self.assertResult(self.check(), FAILURE, 'both \'_base\'',
                          'refuses to start')

    def test_partial_offload_off_warns(self):
        self.flags(partial_offload=False, group='shelve_accel')
        self.assertResult(self.check(), WARNING, 'partial_offload = False',
                          'no root disk is kept')

    def test_image_backend_without_files_warns(self):
        self.flags(images_type='rbd', group='libvirt')
        self.assertResult(self.check(), WARNING, 'images_type = rbd',
                          'never keeps one')

    def test_no_free_space_floor_warns(self):
        self.flags(free_space_floor_percent=0, group='shelve_accel')
        self.assertResult(self.check(), WARNING,
                          'free_space_floor_percent = 0', 'full')

    def test_full_free_space_floor_warns(self):
        self.flags(free_space_floor_percent=100, group='shelve_accel')
        self.assertResult(self.check(), WARNING,
                          'free_space_floor_percent = 100', 'never')

    def test_eviction_margin_up_to_a_full_storage_warns(self):
        self.flags(free_space_floor_percent=20, eviction_margin_percent=80,
                   group='shelve_accel')
        self.assertResult(self.check(), WARNING, 'eviction_margin_percent = '
                          '100%', 'every kept disk')

    def test_rejected_value_fails_naming_the_option(self):
        self.parse_nova_conf("""
            [DEFAULT]
            compute_driver = %s
            [shelve_accel]
            snapshot_upload = sometimes
            """ % status.PLUGIN_DRIVER)
        self.assertResult(self.check(), FAILURE, 'snapshot_upload',
                          'sometimes', 'correct it in nova.conf')


class TestFastShelveOptions(CheckTestMixin, test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.use_plugin_driver()
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.flags(shelved_offload_time=0)

    def check(self):
        return self.cmd._check_shelve_accel_options()

    def test_with_service_user_credentials_it_is_consistent(self):
        # The loopback cloud's Glance has no Keystone: no token needed.
        self.flags(auth_type='none', group='service_user')
        self.assertResult(self.check(), SUCCESS,
                          'snapshot_upload = after_offload')

    def test_without_service_user_credentials_warns(self):
        self.assertResult(self.check(), WARNING, '[service_user] has no '
                          'credentials', 'resumed after a restart')

    def test_service_user_credentials_that_do_not_load_warn(self):
        # A plugin that does not exist: keystoneauth registers no options
        # for it, which would outlive the test.
        self.flags(auth_type='passwrd', group='service_user')
        self.assertResult(self.check(), WARNING,
                          '[service_user] credentials do not load', 'passwrd')

    def test_delayed_offload_warns(self):
        self.flags(auth_type='none', group='service_user')
        self.flags(shelved_offload_time=3600)
        self.assertResult(self.check(), WARNING,
                          'shelved_offload_time = 3600', 'no effect')

    def test_without_partial_offload_it_has_no_effect(self):
        self.flags(auth_type='none', group='service_user')
        self.flags(partial_offload=False, group='shelve_accel')
        self.assertResult(self.check(), WARNING, 'after_offload has no '
                          'effect while partial_offload = False')


class TestKeptDisksDirectory(CheckTestMixin, test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.use_plugin_driver()
        tmp = self.useFixture(fixtures.TempDir()).path
        # Traversable by user nobody, as /var/lib/nova is: this directory
        # and the test's own temporary directory holding it.
        for directory in (os.path.dirname(tmp), tmp):
            os.chmod(directory, 0o755)
        self.instances_path = os.path.join(tmp, 'instances')
        os.mkdir(self.instances_path)
        self.kept_dir = os.path.join(self.instances_path, '_shelve_kept')
        self.flags(instances_path=self.instances_path)

    def check(self):
        return self.cmd._check_kept_disks_directory()

    def test_directory_to_be_created_at_first_keep(self):
        self.assertResult(self.check(), SUCCESS, self.kept_dir,
                          'creates it when it starts')
        self.assertFalse(os.path.lexists(self.kept_dir))

    def test_existing_directory(self):
        os.mkdir(self.kept_dir, 0o700)
        self.assertResult(self.check(), SUCCESS, self.kept_dir,
                          'on the filesystem of %s' % self.instances_path)

    def test_configured_subdirectory_name_is_checked(self):
        self.flags(kept_disks_subdirectory='kept', group='shelve_accel')
        os.symlink(self.instances_path,
                   os.path.join(self.instances_path, 'kept'))
        self.assertResult(self.check(), FAILURE,
                          os.path.join(self.instances_path, 'kept'))

    def test_link_fails(self):
        target = os.path.join(self.instances_path, 'elsewhere')
        os.mkdir(target)
        os.symlink(target, self.kept_dir)
        self.assertResult(self.check(), FAILURE, self.kept_dir,
                          'symbolic link', 'never follows')

    def test_file_fails(self):
        open(self.kept_dir, 'w').close()
        self.assertResult(self.check(), FAILURE, self.kept_dir,
                          'not a directory but a file')

    def test_other_filesystem_fails(self):
        # /proc is a directory of / and always a filesystem of its own.
        self.flags(instances_path='/')
        self.flags(kept_disks_subdirectory='proc', group='shelve_accel')
        self.assertResult(self.check(), FAILURE, '/proc is a filesystem of '
                          'its own', 'Invalid cross-device link')

    def test_directory_not_writable_fails(self):
        os.mkdir(self.kept_dir, 0o555)
        with unprivileged():
            result = self.check()
        self.assertResult(result, FAILURE, self.kept_dir,
                          'not writable by uid %d' % (
                              NOBODY if os.geteuid() == 0 else os.geteuid()))

    def test_missing_directory_in_read_only_instances_path_fails(self):
        os.chmod(self.instances_path, 0o555)
        with unprivileged():
            result = self.check()
        self.assertResult(result, FAILURE, self.kept_dir,
                          '%s is not writable' % self.instances_path,
                          'cannot create it')

    def test_missing_instances_path_fails(self):
        os.rmdir(self.instances_path)
        self.assertResult(self.check(), FAILURE, self.instances_path,
                          'does not exist', 'mount the instance storage')

    def test_instances_path_not_a_directory_fails(self):
        os.rmdir(self.instances_path)
        open(self.instances_path, 'w').close()
        self.assertResult(self.check(), FAILURE, self.instances_path,
                          'is not a directory')


class TestKeptDisks(CheckTestMixin, test.NoDBTestCase):
    """What the storage holds, checked whatever the driver of the host."""

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.flags(instances_path=self.instances_path)
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.store = disks.make_store(self.instances_path, host=CONF.host)

    def keep(self, instance_uuid, pending):
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        return self.store.keep(instance_uuid, SNAPSHOT,
                               snapshot_pending=pending)

    def check(self):
        return self.cmd._check_kept_disks()

    def test_no_kept_disks(self):
        self.assertResult(self.check(), SUCCESS, 'No kept disks')

    def test_pending_disks_on_a_host_back_on_novas_driver_fail(self):
        # Switched back to the stock driver: nothing uploads them, and its
        # image cache pass deletes their base files.
        self.keep(uuids.pending, pending=True)
        self.assertResult(self.check(), FAILURE, uuids.pending,
                          'only copy', 'nova-shelve-accel kept drain',
                          'libvirt.LibvirtDriver')

    def test_uploaded_disks_on_a_host_back_on_novas_driver_warn(self):
        self.keep(uuids.uploaded, pending=False)
        self.assertResult(self.check(), WARNING, 'kept drain --evict')

    def test_pending_disks_on_a_plugin_host_are_its_work(self):
        self.use_plugin_driver()
        self.keep(uuids.pending, pending=True)
        self.assertResult(self.check(), SUCCESS,
                          '1 kept disks, 1 of them waiting')

    def test_a_quarantined_only_copy_fails_on_any_host(self):
        self.use_plugin_driver()
        self.keep(uuids.quarantined, pending=True)
        self.store.claim(uuids.quarantined, SNAPSHOT)
        self.store.quarantine(uuids.quarantined, SNAPSHOT)
        self.assertResult(self.check(), FAILURE, 'quarantined',
                          uuids.quarantined, 'kept list')

    def test_damaged_disks_warn(self):
        self.use_plugin_driver()
        self.keep(uuids.damaged, pending=False)
        with open(os.path.join(self.store.kept_dir(uuids.damaged, SNAPSHOT),
                               'kept.json'), 'w') as f:
            f.write('{')
        self.assertResult(self.check(), WARNING, 'cannot be reused',
                          'may still be the only copy')


class TestImageCachePass(CheckTestMixin, test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.use_plugin_driver()

    def check(self):
        return self.cmd._check_image_cache_pass()

    def test_default_interval(self):
        self.assertResult(self.check(), SUCCESS, 'every 2400 seconds')

    def test_disabled_pass_warns(self):
        self.flags(manager_interval=-1, group='image_cache')
        self.assertResult(self.check(), WARNING, 'manager_interval = -1',
                          'reclaims', 'another host of the same storage')

    def test_zero_means_nova_default_interval(self):
        self.flags(manager_interval=0, group='image_cache')
        self.assertResult(self.check(), SUCCESS, '60 seconds')


class TestStorageGroups(CheckTestMixin, test.TestCase):
    NUMBER_OF_CELLS = 2

    def setUp(self):
        super().setUp()
        self.context = nova_context.get_admin_context()
        self.flags(host='c1')
        self.use_plugin_driver()

    def aggregate(self, name, group, *hosts):
        aggregate = objects.Aggregate(self.context, name=name)
        if group is not None:
            aggregate.metadata = {storage_groups.GROUP_KEY: group}
        aggregate.create()
        for host in hosts:
            aggregate.add_host(host)
        return aggregate

    def check(self):
        return self.cmd._check_storage_groups()

    def test_no_storage_group(self):
        self.aggregate('az1', None, 'c1', 'c2')
        self.assertResult(self.check(), SUCCESS, 'No aggregate has a '
                          'shelve_storage_group')

    def test_groups_say_where_this_host_is(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.aggregate('g2', 'g2', 'c3', 'c4', 'c5')
        self.assertResult(self.check(), SUCCESS, 'g1 (2 hosts)',
                          'g2 (3 hosts)', 'c1, is in storage group g1')

    def test_group_spread_over_aggregates_is_one_group(self):
        # Names compare without surrounding whitespace, as in the filter.
        self.aggregate('rack1', 'g1', 'c1', 'c2')
        self.aggregate('rack2', ' g1 ', 'c3')
        self.aggregate('rack3', 'g1', 'c1')
        self.assertResult(self.check(), SUCCESS,
                          'Storage groups: g1 (3 hosts).')

    def map_host(self, host, cell):
        objects.HostMapping(self.context, host=host,
                            cell_mapping=self.cell_mappings[cell]).create()

    def test_a_group_spanning_cells_fails(self):
        # A compute host looks instances up in its own cell: those of the
        # other cell are unknown to it, their disks never reused nor
        # reclaimed there.
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.map_host('c1', 'cell1')
        self.map_host('c2', 'cell2')
        self.assertResult(self.check(), FAILURE, 'several cells',
                          'g1 (c1: cell1, c2: cell2)')

    def test_a_group_in_one_cell_is_fine(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.map_host('c1', 'cell1')
        self.map_host('c2', 'cell1')
        self.assertResult(self.check(), SUCCESS)

    def test_fast_shelve_on_a_host_alone_on_its_storage_warns(self):
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.aggregate('g1', 'g1', 'c1')
        self.aggregate('g2', 'g2', 'c2', 'c3')
        self.assertResult(self.check(), WARNING, 'after_offload',
                          'no other host shares a storage group with this '
                          'host (c1)')

    def test_fast_shelve_with_a_peer_is_fine(self):
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.aggregate('rack1', 'g1', 'c1')
        self.aggregate('rack2', 'g1', 'c2')
        self.assertResult(self.check(), SUCCESS)

    def test_host_in_two_groups_fails(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.aggregate('g2', 'g2', 'c2', 'c3')
        self.assertResult(self.check(), FAILURE, 'c2 (g1, g2)',
                          'mounts one storage')

    def test_blank_group_warns(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        blank = self.aggregate('nameless', '  ', 'c3', 'c4')
        self.assertResult(self.check(), WARNING, 'blank shelve_storage_group',
                          'nameless (id %s)' % blank.id)

    def test_group_of_one_host_warns(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.aggregate('g2', 'g2', 'c3')
        self.aggregate('g3', 'g3')
        self.assertResult(self.check(), WARNING, 'fewer than two hosts: '
                          'g2 (c3), g3 (no host)')

    def test_failure_comes_before_warnings(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.aggregate('g2', 'g2', 'c2')
        result = self.check()
        self.assertResult(result, FAILURE, 'several storage groups',
                          'fewer than two hosts')
        self.assertLess(result.details.index('several'),
                        result.details.index('fewer'))

    def test_stock_driver_in_a_group_warns(self):
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.assertResult(self.check(), WARNING, 'This host, c1, is in '
                          'storage group g1', 'libvirt.LibvirtDriver')

    def test_no_compute_driver_in_a_group(self):
        # A controller that is also in an aggregate: no nova-compute here.
        self.flags(compute_driver=None)
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.assertResult(self.check(), SUCCESS)

    def test_api_database_not_configured_warns(self):
        self.flags(connection=None, group='api_database')
        self.assertResult(self.check(), WARNING, '[api_database] '
                          'connection is not set', 'nova-api or '
                          'nova-scheduler')

    def test_unreachable_api_database_warns(self):
        # A factory not started yet, as in a new process: the check
        # configures it from [api_database].
        self.useFixture(db_fixtures.ReplaceEngineFacadeFixture(
            api_db_api.context_manager, enginefacade.transaction_context()))
        tmp = self.useFixture(fixtures.TempDir()).path
        self.flags(connection='sqlite:///%s/missing/api.db' % tmp,
                   max_retries=0, group='api_database')
        self.assertResult(self.check(), WARNING, 'cannot read the host '
                          'aggregates', 'reaches it')

    def test_database_password_is_not_shown(self):
        self.assertEqual(
            'mysql+pymysql://nova:***@db/nova_api failed',
            status._without_credentials(
                'mysql+pymysql://nova:s3cr:et@db/nova_api failed'))


class TestStorageSharing(CheckTestMixin, test.TestCase):
    """The hosts of this host's group, against the probes on its storage."""

    def setUp(self):
        super().setUp()
        self.context = nova_context.get_admin_context()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.flags(instances_path=self.instances_path, host='c1')
        self.use_plugin_driver()
        self.kept_dir = os.path.join(self.instances_path, '_shelve_kept')

    def on_the_storage(self, *hosts):
        for host in hosts:
            disks.make_store(self.instances_path, host=host).leave_probe()

    def aggregate(self, name, group, *hosts):
        aggregate = objects.Aggregate(
            self.context, name=name,
            metadata={storage_groups.GROUP_KEY: group})
        aggregate.create()
        for host in hosts:
            aggregate.add_host(host)

    def check(self):
        return self.cmd._check_storage_sharing()

    def test_a_group_whose_hosts_all_share_the_storage(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.on_the_storage('c1', 'c2')
        self.assertResult(self.check(), SUCCESS, 'Hosts whose probe is in '
                          '%s: c1, c2.' % self.kept_dir, 'Every host')

    def test_a_host_of_the_group_not_sharing_the_storage_fails(self):
        self.aggregate('g1', 'g1', 'c1', 'c2', 'c3')
        self.on_the_storage('c1', 'c2')
        self.assertResult(self.check(), FAILURE, 'Hosts c3 are in the '
                          'storage group of this host but leave no probe in '
                          '%s' % self.kept_dir, 'Mount the storage there')

    def test_a_host_sharing_the_storage_outside_the_group_warns(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.on_the_storage('c1', 'c2', 'c9')
        self.assertResult(self.check(), WARNING, 'Hosts c9 share the storage '
                          'of this host', '.host-<host tag>')

    def test_this_hosts_own_probe_missing_warns(self):
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.on_the_storage('c2')
        self.assertResult(self.check(), WARNING, 'This host, c1, has left no '
                          'probe in %s' % self.kept_dir)

    def test_without_the_api_database_the_probes_are_listed(self):
        # A compute host has none, as a rule.
        self.flags(connection=None, group='api_database')
        self.on_the_storage('c1', 'c2')
        self.assertResult(self.check(), SUCCESS, 'c1, c2', 'Not compared',
                          'nova-compute compares them')

    def test_a_stock_host_is_not_checked(self):
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.aggregate('g1', 'g1', 'c1', 'c2')
        self.assertResult(self.check(), SUCCESS)
        self.assertNotIn('probe', self.check().details)


class TestMain(test.TestCase):
    """The command, from its arguments to its exit code."""

    def setUp(self):
        super().setUp()
        self.output = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stdout', self.output))
        self.errors = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', self.errors))
        tmp = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(tmp, 'instances')
        os.mkdir(self.instances_path)
        context = nova_context.get_admin_context()
        group = objects.Aggregate(context, name='g1', metadata={
            storage_groups.GROUP_KEY: 'g1'})
        group.create()
        group.add_host('c1')
        group.add_host('c2')
        # Both hosts of the group mount the storage and ran the plugin.
        for host in ('c1', 'c2'):
            disks.make_store(self.instances_path, host=host).leave_probe()

    def main(self, nova_conf, *options):
        conf = self.useFixture(NovaConfFile(nova_conf))
        return status.main(conf.args_for_main() + ['upgrade', 'check'] +
                           list(options))

    def nova_conf(self, enabled_filters=','.join(GOOD_FILTERS), extra=''):
        common = textwrap.dedent("""
            [DEFAULT]
            host = c1
            compute_driver = %s
            instances_path = %s
            [filter_scheduler]
            available_filters = %s
            available_filters = %s
            enabled_filters = %s
            [service_user]
            auth_type = none
            """) % (status.PLUGIN_DRIVER, self.instances_path, NOVA_FILTERS,
                    status.FILTER_PATH, enabled_filters)
        return common + textwrap.dedent(extra)

    def test_all_checks_succeed(self):
        self.assertEqual(0, self.main(self.nova_conf()))
        table = self.output.getvalue()
        self.assertIn('nova-shelve-accel Upgrade Check Results', table)
        self.assertEqual(10, table.count('Result: Success'))

    def test_a_warning_exits_1(self):
        conf = self.nova_conf(extra='[image_cache]\nmanager_interval = -1')
        self.assertEqual(1, self.main(conf))
        self.assertIn('Result: Warning', self.output.getvalue())

    def test_a_failure_exits_2_and_json_names_it(self):
        conf = self.nova_conf(
            enabled_filters='HostAggregateGroupFilter,ComputeFilter')
        self.assertEqual(2, self.main(conf, '--json'))
        output = json.loads(self.output.getvalue())
        results = {c['check']: c['result'] for c in output['checks']}
        self.assertEqual(
            {'Nova release': SUCCESS,
             'Compute driver': SUCCESS, 'Scheduler filter': FAILURE,
             'Scheduler weigher': SUCCESS, '[shelve_accel] options': SUCCESS,
             'Kept-disks directory': SUCCESS, 'Kept disks': SUCCESS,
             'Image cache pass': SUCCESS,
             'Storage groups': SUCCESS, 'Storage sharing': SUCCESS}, results)

    def test_the_worst_result_wins(self):
        conf = self.nova_conf(
            enabled_filters='HostAggregateGroupFilter,ComputeFilter',
            extra='[image_cache]\nmanager_interval = -1')
        self.assertEqual(2, self.main(conf))

    def test_unreadable_nova_conf_is_an_error_not_a_result(self):
        conf = self.useFixture(NovaConfFile(self.nova_conf()))
        args = conf.args_for_main()
        missing = args[1] + '.missing'
        self.assertEqual(255, status.main(
            ['--config-file', missing] + args[2:] + ['upgrade', 'check']))
        self.assertEqual('', self.output.getvalue())
        self.assertIn('Error: cannot read the configuration: Failed to find '
                      'some config files: %s' % missing,
                      self.errors.getvalue())

    def test_wrong_command_line_is_an_error_not_a_failure(self):
        # argparse exits 2 on its own; 2 would say "a check failed".
        self.assertEqual(255, self.main(self.nova_conf(), '--no-such-option'))
        self.assertIn('unrecognized arguments: --no-such-option',
                      self.errors.getvalue())

    def test_installed_console_script(self):
        conf = self.useFixture(NovaConfFile(self.nova_conf(extra="""
            [shelve_accel]
            kept_disks_subdirectory = _base
            """)))
        script = os.path.join(os.path.dirname(sys.executable),
                              'nova-shelve-accel-status')
        # Its own process: no API database there, and the test's CONF is
        # not parsed by it.
        process = subprocess.run(
            [script] + conf.args + ['upgrade', 'check', '--json'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True)
        self.assertEqual(2, process.returncode, process.stderr)
        results = {c['check']: (c['result'], c['details'])
                   for c in json.loads(process.stdout)['checks']}
        self.assertEqual(FAILURE, results['[shelve_accel] options'][0])
        self.assertIn('refuses to start', results['[shelve_accel] options'][1])
        self.assertEqual(WARNING, results['Storage groups'][0])
        self.assertEqual(SUCCESS, results['Kept-disks directory'][0])


class TestConsoleScriptReachesTheDatabase(testtools.TestCase):
    """The installed command in a process of its own, as operators run it.

    Nothing the test's fixtures registered helps it reach the database.
    """

    def test_the_storage_group_check_reads_the_api_database(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        api_db = os.path.join(tmp, 'api.sqlite')
        conf = self.useFixture(NovaConfFile("""
            [api_database]
            connection = sqlite:///%s
            max_retries = 0
            """ % api_db))
        script = os.path.join(os.path.dirname(sys.executable),
                              'nova-shelve-accel-status')
        process = subprocess.run(
            [script] + conf.args + ['upgrade', 'check', '--json'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True)
        results = {c['check']: (c['result'], c['details'])
                   for c in json.loads(process.stdout)['checks']}
        result, details = results['Storage groups']
        # An empty database: the query reached it and found no tables.
        self.assertEqual(WARNING, result)
        self.assertIn('no such table', details)
        self.assertNotIn('no such option', details)

    def test_the_storage_group_check_reads_the_cells_of_the_hosts(self):
        # Reading a host mapping formats its cell's transport_url with
        # [DEFAULT] transport_url: the command must know that option, as
        # Nova's services do, or the check cannot read the mappings.
        tmp = self.useFixture(fixtures.TempDir()).path
        api_db = os.path.join(tmp, 'api.sqlite')
        engine = sqlalchemy.create_engine('sqlite:///%s' % api_db)
        api_models.BASE.metadata.create_all(engine)
        with engine.begin() as db:
            db.execute(sqlalchemy.insert(api_models.CellMapping).values(
                id=1, uuid=uuids.cell1, name='cell1',
                transport_url='rabbit://guest:guest@127.0.0.1:5672/',
                database_connection='sqlite://'))
            db.execute(sqlalchemy.insert(api_models.Aggregate).values(
                id=1, uuid=uuids.g1, name='g1'))
            db.execute(sqlalchemy.insert(api_models.AggregateMetadata).values(
                aggregate_id=1, key=storage_groups.GROUP_KEY, value='g1'))
            for host in ('c1', 'c2'):
                db.execute(sqlalchemy.insert(api_models.AggregateHost).values(
                    aggregate_id=1, host=host))
                db.execute(sqlalchemy.insert(api_models.HostMapping).values(
                    cell_id=1, host=host))
        engine.dispose()
        conf = self.useFixture(NovaConfFile("""
            [DEFAULT]
            host = c1
            [api_database]
            connection = sqlite:///%s
            """ % api_db))
        script = os.path.join(os.path.dirname(sys.executable),
                              'nova-shelve-accel-status')
        process = subprocess.run(
            [script] + conf.args + ['upgrade', 'check', '--json'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True)
        results = {c['check']: (c['result'], c['details'])
                   for c in json.loads(process.stdout)['checks']}
        result, details = results['Storage groups']
        self.assertEqual(SUCCESS, result, details)
        self.assertIn('g1 (2 hosts)', details)
