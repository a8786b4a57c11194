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

"""``nova-shelve-accel-status upgrade check``: is this host set up right?

Built on oslo.upgradecheck like Nova's own ``nova-status``: it reads
``nova.conf`` as Nova's services do (``/etc/nova/nova.conf`` by default,
``--config-file`` and ``--config-dir`` as usual), prints one result per
check, and exits with the worst of them: 0 success, 1 warning, 2 failure;
255 when there is no result (a check broke, nova.conf cannot be read, the
command line is wrong).

Each check reads what one kind of host has: the compute checks apply where
nova-compute runs the plugin's driver, the filter check where
nova-scheduler reads this ``nova.conf``, the storage group check where the
API database is reachable. doc/source/cli/nova-shelve-accel-status.rst
says what each result means and what to do.
"""

# Done first, as in Nova's own commands (nova-status, nova-manage).
# autopep8: off
from nova_shelve_accel import cmd; cmd.monkey_patch('eventlet')  # noqa
# autopep8: on

import functools
import importlib.util
import os
import re
import stat
import sys

from oslo_config import cfg
from oslo_messaging import opts as messaging_opts
from oslo_upgradecheck import upgradecheck
from oslo_utils import importutils

from nova import context as nova_context
from nova.db.api import api as api_db_api
from nova import exception
from nova import objects
from nova.scheduler import filters as nova_filters

from nova_shelve_accel import compat
from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import safe_files
from nova_shelve_accel.scheduler import filters as accel_filters
from nova_shelve_accel.scheduler import weights as accel_weights
from nova_shelve_accel import service_user
from nova_shelve_accel import storage
from nova_shelve_accel import storage_groups
from nova_shelve_accel.virt.libvirt import driver as accel_driver

CONF = accel_conf.CONF

SUCCESS = upgradecheck.Code.SUCCESS
WARNING = upgradecheck.Code.WARNING
FAILURE = upgradecheck.Code.FAILURE
# What oslo.upgradecheck returns when a check raises.
ERROR = 255

PLUGIN_DRIVER = 'nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver'
# Nova loads compute_driver as a path below nova.virt; this package, which
# the plugin installs into Nova's own tree, is what makes the name load.
DRIVER_SHIM = 'nova.virt.nova_shelve_accel'
FILTER = accel_filters.HostAggregateGroupFilter
FILTER_PATH = '%s.%s' % (FILTER.__module__, FILTER.__name__)
NOVA_FILTERS = 'nova.scheduler.filters.all_filters'
WEIGHER = accel_weights.ShelvedHeadroomWeigher
WEIGHER_PATH = '%s.%s' % (WEIGHER.__module__, WEIGHER.__name__)
NOVA_WEIGHERS = 'nova.scheduler.weights.all_weighers'
# Options of the weigher only.
WEIGHER_OPTIONS = ('headroom_weight_multiplier', 'headroom_refresh_interval')
# The [shelve_accel] options nova-scheduler reads; nova-compute the others.
SCHEDULER_OPTIONS = frozenset(['free_space_floor_percent',
                               'headroom_weight_multiplier',
                               'headroom_refresh_interval'])
# Names listed in a result before "and N more".
LISTED = 10


def _rejected_value_fails(check):
    """A value oslo.config rejects, as a Failure of the check reading it.

    oslo.config checks a value (type, choices, bounds, pattern) when it is
    read; a Nova service reading it fails the same way.
    """
    @functools.wraps(check)
    def checked(self):
        try:
            return check(self)
        except cfg.ConfigSourceValueError as e:
            return upgradecheck.Result(FAILURE, (
                '%s Every service reading this option fails on it: correct '
                'it in nova.conf.' % e))
    return checked


class UpgradeCommands(upgradecheck.UpgradeCommands):
    """The checks of ``nova-shelve-accel-status upgrade check``.

    Each returns one Result whose details name the option, path or host
    concerned and say what to do. They read nova.conf, this host's
    instance storage and the API database; they change nothing.
    """

    display_title = 'nova-shelve-accel Upgrade Check Results'

    def _check_nova_release(self):
        """Whether the Nova found here is a release the plugin supports."""
        found, series = compat.nova_release()
        if series is None:
            return upgradecheck.Result(FAILURE, (
                'Nova %s is installed; nova-shelve-accel %s supports Nova '
                '%s. Its driver overrides and calls private methods of '
                'Nova\'s libvirt driver, which change between releases: '
                'on another release a shelve or unshelve may fail or lose '
                'the kept disk. Install the nova-shelve-accel release made '
                'for this Nova, or keep the stock driver and filter on '
                'this host (doc/source/admin.rst, "Removing the plugin").'
                % (found, cmd.version(), compat.supported_releases())))
        return upgradecheck.Result(SUCCESS, (
            'Nova %s (%s): supported; nova-shelve-accel %s supports Nova '
            '%s.' % (found, series, cmd.version(),
                     compat.supported_releases())))

    @_rejected_value_fails
    def _check_compute_driver(self):
        """Whether nova-compute here runs the plugin's driver, and can."""
        driver = CONF.compute_driver
        if driver == PLUGIN_DRIVER:
            if importlib.util.find_spec(DRIVER_SHIM) is None:
                return upgradecheck.Result(FAILURE, (
                    '[DEFAULT] compute_driver = %s, but %s is missing from '
                    'Nova\'s package directory: nova-compute cannot load '
                    'the driver and does not start. Install '
                    'nova-shelve-accel with the pip of the Python '
                    'environment Nova runs from (not --user, not another '
                    'virtualenv).' % (driver, DRIVER_SHIM)))
            try:
                # What nova-compute does with compute_driver.
                importutils.import_class('nova.virt.%s' % driver)
            except Exception as e:
                return upgradecheck.Result(FAILURE, (
                    '[DEFAULT] compute_driver = %s, but nova-compute cannot '
                    'load nova.virt.%s: %s. Install nova-shelve-accel '
                    'again with the pip of the Python environment Nova runs '
                    'from, then run this check with that Python\'s '
                    'nova-shelve-accel-status.' % (driver, driver, e)))
            return upgradecheck.Result(SUCCESS, (
                '[DEFAULT] compute_driver = %s: nova-compute on this host '
                'runs the plugin; the checks of its options, kept-disks '
                'directory and image cache pass apply.' % driver))
        if driver and ('nova_shelve_accel' in driver or
                       'PartialOffload' in driver):
            return upgradecheck.Result(FAILURE, (
                '[DEFAULT] compute_driver = %s names the plugin but not its '
                'driver: nova-compute cannot load it. Set compute_driver = '
                '%s.' % (driver, PLUGIN_DRIVER)))
        ignored = _compute_options_set_here()
        if driver and ignored:
            return upgradecheck.Result(WARNING, (
                '[DEFAULT] compute_driver = %s, yet nova.conf sets '
                '[shelve_accel] %s, which only the plugin\'s driver reads: '
                'nova-compute on this host keeps no disk. Set '
                'compute_driver = %s to use the plugin here, or remove '
                'those options.' % (driver, ', '.join(ignored),
                                    PLUGIN_DRIVER)))
        return upgradecheck.Result(SUCCESS, _compute_checks_skipped())

    @_rejected_value_fails
    def _check_scheduler_filter(self):
        """Whether nova-scheduler reading this nova.conf runs the filter."""
        enabled = CONF.filter_scheduler.enabled_filters
        name = FILTER.__name__
        if name not in enabled:
            return upgradecheck.Result(WARNING, (
                '%s is not in [filter_scheduler] enabled_filters of this '
                'nova.conf. If nova-scheduler reads it, add the filter at '
                'the end of enabled_filters and "available_filters = %s" '
                'as a line of its own: without it unshelves are scheduled '
                'as stock Nova does, reuse a kept disk only when they '
                'happen to land in its storage group, and with '
                'snapshot_upload = after_offload may fail while the '
                'snapshot is still uploading. If nova-scheduler runs on '
                'other hosts, run this command there.' % (name, FILTER_PATH)))
        try:
            available = _available_filter_classes()
        except _UnloadableFilter as e:
            return upgradecheck.Result(FAILURE, str(e))
        if FILTER not in available:
            return upgradecheck.Result(FAILURE, (
                '%s is in [filter_scheduler] enabled_filters, but no '
                'available_filters entry provides it: nova-scheduler does '
                'not start (SchedulerHostFilterNotFound). Add '
                '"available_filters = %s" as a line of its own, and keep '
                '"available_filters = %s" for Nova\'s own filters.'
                % (name, FILTER_PATH, NOVA_FILTERS)))
        after = enabled[len(enabled) - enabled[::-1].index(name):]
        if after:
            return upgradecheck.Result(FAILURE, (
                '%s must be last in [filter_scheduler] enabled_filters, but '
                '%s come after it. It keeps the hosts of the kept disk\'s '
                'storage group among those it is handed, or all of them '
                'when none qualifies; a later filter can still remove '
                'every host it kept, and the unshelve then fails with "No '
                'valid host was found" instead of downloading the snapshot '
                'on another host. Move it to the end.'
                % (name, ', '.join(after))))
        return upgradecheck.Result(SUCCESS, (
            '%s is available and last in [filter_scheduler] '
            'enabled_filters.' % name))

    @_rejected_value_fails
    def _check_scheduler_weigher(self):
        """Whether weight_classes keeps Nova's weighers beside ours."""
        classes = CONF.filter_scheduler.weight_classes
        if WEIGHER_PATH not in classes:
            unused = [name for name in WEIGHER_OPTIONS
                      if _set_by_operator(name, 'shelve_accel')]
            if unused:
                return upgradecheck.Result(WARNING, (
                    'nova.conf sets [shelve_accel] %s, but %s is not in '
                    '[filter_scheduler] weight_classes: the options have no '
                    'effect. Add it to weight_classes, on the same line '
                    'as %s, or remove the options.'
                    % (', '.join(unused), WEIGHER.__name__, NOVA_WEIGHERS)))
            return upgradecheck.Result(SUCCESS, (
                '%s is not in [filter_scheduler] weight_classes (it is '
                'optional).' % WEIGHER.__name__))
        novas = [name for name in classes
                 if name.startswith('nova.scheduler.weights.')]
        if not novas:
            return upgradecheck.Result(WARNING, (
                '[filter_scheduler] weight_classes = %s has none of '
                'Nova\'s weighers: nova-scheduler weighs hosts by the '
                'storage groups\' headroom alone, without RAM, CPU, disk, '
                'affinity or build failures. weight_classes is one list: '
                'of two weight_classes lines the last one wins. Write one '
                'line: weight_classes = %s,%s'
                % (','.join(classes), NOVA_WEIGHERS, WEIGHER_PATH)))
        return upgradecheck.Result(SUCCESS, (
            '[filter_scheduler] weight_classes has %s beside %s.'
            % (WEIGHER.__name__, ', '.join(novas))))

    @_rejected_value_fails
    def _check_shelve_accel_options(self):
        """Whether the [shelve_accel] options do what they say here."""
        if not _runs_plugin_driver():
            return upgradecheck.Result(SUCCESS, _compute_checks_skipped())
        options = _read_shelve_accel_options()
        problems = _option_problems(options)
        if options.snapshot_upload == 'after_offload':
            problems.extend(_fast_shelve_problems(options))
        else:
            problems.extend(_eviction_problems(options))
        return _result(problems, (
            'The [shelve_accel] options agree with each other and with '
            'Nova\'s: partial_offload = %s, snapshot_upload = %s, '
            'free_space_floor_percent = %d.'
            % (options.partial_offload, options.snapshot_upload,
               options.free_space_floor_percent)))

    @_rejected_value_fails
    def _check_kept_disks_directory(self):
        """Whether the kept-disks directory can hold kept disks."""
        if not _runs_plugin_driver():
            return upgradecheck.Result(SUCCESS, _compute_checks_skipped())
        instances_path = CONF.instances_path
        kept_dir = os.path.join(instances_path,
                                CONF.shelve_accel.kept_disks_subdirectory)
        try:
            return _kept_dir_result(instances_path, kept_dir)
        except OSError as e:
            return upgradecheck.Result(FAILURE, (
                'Cannot inspect %s as uid %d: %s. nova-compute, which needs '
                'it to keep disks, must be able to; check the mount and the '
                'permissions of [DEFAULT] instances_path.'
                % (kept_dir, os.geteuid(), e)))

    @_rejected_value_fails
    def _check_kept_disks(self):
        """Whether what the storage holds is safe with this host's driver.

        On every host, whatever its driver: a host switched back to Nova's
        own driver still sees the disks kept on its storage.
        """
        store = storage.KeptDiskStore(
            CONF.instances_path, CONF.shelve_accel.kept_disks_subdirectory,
            CONF.image_cache.subdirectory_name, CONF.host)
        try:
            if not safe_files.is_real_dir(store.path):
                return upgradecheck.Result(SUCCESS, (
                    'No kept disks in %s.' % store.path))
            held = _Held(store)
        except OSError as e:
            return upgradecheck.Result(FAILURE, (
                'Cannot read the kept-disks directory %s as uid %d: %s. Run '
                'this command as the user nova-compute runs as.'
                % (store.path, os.geteuid(), e)))
        return _result(held.problems(_runs_plugin_driver()), held.summary())

    @_rejected_value_fails
    def _check_image_cache_pass(self):
        """Whether the pass that reclaims kept disks runs on this host."""
        if not _runs_plugin_driver():
            return upgradecheck.Result(SUCCESS, _compute_checks_skipped())
        interval = CONF.image_cache.manager_interval
        if interval == -1:
            # Not a failure: Nova itself advises running the pass on one
            # host per shared storage, and any host of a storage reclaims
            # the kept disks of all its hosts.
            return upgradecheck.Result(WARNING, (
                '[image_cache] manager_interval = -1: this host never runs '
                'the image cache pass, in which the plugin reclaims the '
                'kept disks no instance can use any more, evicts those '
                'older than [shelve_accel] max_kept_age and recounts the '
                'space they use. That is fine if another host of the same '
                'storage runs it; otherwise kept disks accumulate until '
                'the free-space floor stops keeping, and must be deleted '
                'by hand. Set manager_interval to a number of seconds '
                '(default 2400) on at least one host of each storage.'))
        if interval == 0:
            return upgradecheck.Result(SUCCESS, (
                '[image_cache] manager_interval = 0: the image cache pass, '
                'which reclaims unused kept disks, runs at Nova\'s default '
                'periodic interval of 60 seconds (Nova advises a longer '
                'one for its own load).'))
        return upgradecheck.Result(SUCCESS, (
            'The image cache pass runs every %d seconds ([image_cache] '
            'manager_interval): kept disks that no instance can use any '
            'more are reclaimed within that time.' % interval))

    @_rejected_value_fails
    def _check_storage_groups(self):
        """Whether the aggregates define storage groups that make sense."""
        if not CONF.api_database.connection:
            return upgradecheck.Result(WARNING, (
                'Storage groups not checked: the API database is not '
                'configured on this host ([api_database] connection is '
                'not set). Run this command on a host where it is, such as '
                'one running nova-api or nova-scheduler, or add a '
                '--config-file that sets it.'))
        try:
            groups = _storage_groups()
            cells = _cells_of_hosts(groups)
        except Exception as e:
            # As nova-status does for Cinder: whatever stops the read is
            # this host's view of the database, not a fault of the groups.
            return upgradecheck.Result(WARNING, (
                'Storage groups not checked: cannot read the host '
                'aggregates and mappings from the API database '
                '([api_database] connection): %s. Run this command on a '
                'host that reaches it, such as one running nova-api or '
                'nova-scheduler.' % _without_credentials(str(e))))
        problems = groups.problems() + [groups.cells_spanned(cells)]
        if _runs_plugin_driver() and (
                CONF.shelve_accel.snapshot_upload == 'after_offload') and (
                not groups.peers_of(CONF.host)):
            problems.append((WARNING, (
                '[shelve_accel] snapshot_upload = after_offload, but no '
                'other host shares a storage group with this host (%s): '
                'were it to stop for good, nobody could upload the disks '
                'it keeps, so shelve here takes the snapshot as stock Nova '
                'does. Add the hosts that mount its storage to its '
                'aggregate.' % CONF.host)))
        return _result([p for p in problems if p], groups.summary())

    @_rejected_value_fails
    def _check_storage_sharing(self):
        """Whether the hosts of this host's group see the same storage.

        Each plugin host leaves a probe with its name on its storage; the
        hosts of a storage group must all find each other's there.
        """
        if not _runs_plugin_driver():
            return upgradecheck.Result(SUCCESS, _compute_checks_skipped())
        store = storage.KeptDiskStore(
            CONF.instances_path, CONF.shelve_accel.kept_disks_subdirectory,
            CONF.image_cache.subdirectory_name, CONF.host)
        try:
            sharing = store.hosts_sharing()
        except OSError as e:
            return upgradecheck.Result(FAILURE, (
                'Cannot read the probes of the hosts in %s as uid %d: %s. '
                'Run this command as the user nova-compute runs as.'
                % (store.path, os.geteuid(), e)))
        seen = ('Hosts whose probe is in %s: %s.'
                % (store.path, _listed(sharing) if sharing else 'none'))
        problems = []
        if CONF.host not in sharing:
            problems.append((WARNING, (
                'This host, %s, has left no probe in %s: nova-compute has '
                'not started here with the plugin\'s driver since it was '
                'installed, or could not write there (see its log).'
                % (CONF.host, store.path))))
        if not CONF.api_database.connection:
            # A compute host has no API database, as a rule: nova-compute
            # compares through the conductor and logs what differs.
            return _result(problems, (
                '%s Not compared with the storage groups: [api_database] '
                'connection is not set here (add a --config-file that sets '
                'it). nova-compute compares them at each image cache pass '
                'and logs a warning naming the hosts that differ.' % seen))
        try:
            groups = _storage_groups()
        except Exception as e:
            problems.append((WARNING, (
                '%s Not compared with the storage groups: cannot read the '
                'host aggregates from the API database: %s.'
                % (seen, _without_credentials(str(e))))))
            return _result(problems, seen)
        missing, outside = storage.sharing_problems(
            CONF.host, groups.peers_of(CONF.host), sharing)
        if missing:
            problems.append((FAILURE, (
                'Hosts %s are in the storage group of this host but leave no '
                'probe in %s: they do not mount this host\'s storage at '
                'instances_path, or have not started with the plugin\'s '
                'driver. Unshelves sent between them and this host find no '
                'kept disk and download the snapshot. Mount the storage '
                'there, or remove them from the aggregates of the group.'
                % (_listed(missing), store.path))))
        if outside:
            problems.append((WARNING, (
                'Hosts %s share the storage of this host (their probes are '
                'in %s) but are in none of its storage groups: add them to '
                'the aggregate of the group, or delete the probe of a host '
                'that no longer runs (.host-<host tag>).'
                % (_listed(outside), store.path))))
        return _result(problems, (
            '%s Every host of this host\'s storage groups is among them.'
            % seen))

    # Run in this order; a Failure does not stop the checks after it.
    _upgrade_checks = (
        ('Nova release', _check_nova_release),
        ('Compute driver', _check_compute_driver),
        ('Scheduler filter', _check_scheduler_filter),
        ('Scheduler weigher', _check_scheduler_weigher),
        ('[shelve_accel] options', _check_shelve_accel_options),
        ('Kept-disks directory', _check_kept_disks_directory),
        ('Kept disks', _check_kept_disks),
        ('Image cache pass', _check_image_cache_pass),
        ('Storage groups', _check_storage_groups),
        ('Storage sharing', _check_storage_sharing),
    )


def _result(problems, success_details):
    """The Result of ``(code, text)`` problems, listed failures first."""
    if not problems:
        return upgradecheck.Result(SUCCESS, success_details)
    return upgradecheck.Result(max(code for code, _text in problems),
                               ' '.join(text for _code, text in problems))


def _listed(names):
    names = list(names)
    if len(names) <= LISTED:
        return ', '.join(names)
    return '%s and %d more' % (', '.join(names[:LISTED]),
                               len(names) - LISTED)


# -- kept disks -----------------------------------------------------------

class _Held:
    """What the kept-disks directory of a storage holds, from its files."""

    def __init__(self, store):
        self.path = store.path
        kept, self.damaged, in_flight = store.inventory()
        self.pending = [r for r in kept if r.snapshot_pending]
        self.uploaded = [r for r in kept if not r.snapshot_pending]
        quarantined = [store.describe_quarantined(i) for i in in_flight
                       if i.kind == storage.QUARANTINE]
        self.quarantined = len(quarantined)
        self.quarantined_pending = [r for r in quarantined
                                    if r is not None and r.snapshot_pending]

    def problems(self, plugin_host):
        problems = []
        if self.pending and not plugin_host:
            problems.append((FAILURE, (
                '%d disks in %s wait for their upload into their snapshot '
                '(%s): each is the only copy of its instance, and the '
                'compute driver of this host (%s) neither uploads them nor '
                'keeps their base files from its image cache pass. Run '
                '"nova-shelve-accel kept drain" here before the hosts of '
                'this storage leave the plugin\'s driver, or set '
                'compute_driver = %s again.' % (
                    len(self.pending), self.path,
                    _listed(r.instance_uuid for r in self.pending),
                    CONF.compute_driver, PLUGIN_DRIVER))))
        if self.uploaded and not plugin_host:
            problems.append((WARNING, (
                '%d kept disks in %s, which the compute driver of this host '
                '(%s) neither reuses nor reclaims; its image cache pass '
                'removes their base files. Their snapshots hold the data: '
                '"nova-shelve-accel kept drain --evict" removes them.'
                % (len(self.uploaded), self.path, CONF.compute_driver))))
        if self.quarantined_pending:
            problems.append((FAILURE, (
                '%d disks quarantined after a failed spawn in %s are the '
                'only copy of their instance (%s), whose snapshot waits for '
                'them: any plugin host of the storage uploads them; their '
                'own host keeps them again once it has removed the failed '
                'guest. See "nova-shelve-accel kept list".' % (
                    len(self.quarantined_pending), self.path,
                    _listed(r.instance_uuid
                            for r in self.quarantined_pending)))))
        if self.damaged:
            problems.append((WARNING, (
                '%d kept disks in %s cannot be reused (%s): each may still '
                'be the only copy of its instance and stays until the '
                'instance is positively gone. See "nova-shelve-accel kept '
                'list" and the admin guide.' % (
                    len(self.damaged), self.path,
                    _listed('%s: %s' % (os.path.basename(d.path), d.problem)
                            for d in self.damaged)))))
        return problems

    def summary(self):
        return ('%s holds %d kept disks, %d of them waiting for their '
                'upload, and %d quarantined ones.' % (
                    self.path, len(self.pending) + len(self.uploaded),
                    len(self.pending), self.quarantined))


# -- compute driver -------------------------------------------------------

def _runs_plugin_driver():
    return CONF.compute_driver == PLUGIN_DRIVER


def _compute_checks_skipped():
    driver = CONF.compute_driver
    if not driver:
        return ('Skipped: [DEFAULT] compute_driver is not set, so '
                'nova-compute does not run from this nova.conf.')
    return ('Skipped: [DEFAULT] compute_driver = %s, so this host does not '
            'run the plugin\'s driver (%s).' % (driver, PLUGIN_DRIVER))


def _compute_options_set_here():
    """[shelve_accel] options only nova-compute reads, set in nova.conf."""
    [(group, options)] = accel_conf.list_opts()
    return [option.name for option in options
            if option.name not in SCHEDULER_OPTIONS and
            _set_by_operator(option.name, group.name)]


def _set_by_operator(name, group):
    location = CONF.get_location(name, group)
    return location is not None and location.location.is_user_controlled


# -- scheduler filter -----------------------------------------------------

class _UnloadableFilter(Exception):
    pass


def _available_filter_classes():
    """The filter classes nova-scheduler loads, as its host manager does."""
    handler = nova_filters.HostFilterHandler()
    classes = []
    for path in CONF.filter_scheduler.available_filters:
        try:
            classes.extend(handler.get_matching_classes([path]))
        except Exception as e:
            raise _UnloadableFilter(
                '[filter_scheduler] available_filters = %s does not load '
                '(%s): nova-scheduler does not start. Correct or remove '
                'that line.' % (path, e))
    return classes


# -- [shelve_accel] options -----------------------------------------------

def _read_shelve_accel_options():
    """The [shelve_accel] group, every value read once to have it checked."""
    [(group, options)] = accel_conf.list_opts()
    for option in options:
        getattr(CONF.shelve_accel, option.name)
    return CONF.shelve_accel


def _option_problems(options):
    problems = []
    cache_dir = CONF.image_cache.subdirectory_name
    if options.kept_disks_subdirectory == cache_dir:
        problems.append((FAILURE, (
            '[shelve_accel] kept_disks_subdirectory and [image_cache] '
            'subdirectory_name are both %r: the driver refuses to start. '
            'Set another kept_disks_subdirectory, the same on every host '
            'of the storage.' % cache_dir)))
    if not options.partial_offload:
        problems.append((WARNING, (
            '[shelve_accel] partial_offload = False: no root disk is kept '
            'at offload; the driver only reuses and reclaims disks kept '
            'before. Set it to True, unless you are taking the plugin out '
            '(see the administration guide).')))
    elif accel_driver.root_disk_format() is None:
        problems.append((WARNING, (
            '[libvirt] images_type = %s does not store root disks as files: '
            'the driver never keeps one and behaves as '
            'libvirt.LibvirtDriver. Use qcow2, raw or flat to keep disks.'
            % CONF.libvirt.images_type)))
    floor = options.free_space_floor_percent
    if floor == 0:
        problems.append((WARNING, (
            '[shelve_accel] free_space_floor_percent = 0: disks are kept '
            'until the instance storage is full, and a full storage fails '
            'every spawn on it. Keep a floor (default 10).')))
    elif floor == 100:
        problems.append((WARNING, (
            '[shelve_accel] free_space_floor_percent = 100: a disk is kept '
            'only while the storage is entirely free, that is never. '
            'Lower it (default 10).')))
    elif floor + options.eviction_margin_percent >= 100:
        problems.append((WARNING, (
            '[shelve_accel] free_space_floor_percent + '
            'eviction_margin_percent = %d%%: the storage is never that '
            'free, so every kept disk whose snapshot is active in Glance '
            'is evicted at the next resource update. Lower '
            'eviction_margin_percent (default 5).'
            % (floor + options.eviction_margin_percent))))
    return problems


def _fast_shelve_problems(options):
    """Why ``snapshot_upload = after_offload`` does not do its job here."""
    problems = []
    if not options.partial_offload:
        problems.append((WARNING, (
            '[shelve_accel] snapshot_upload = after_offload has no effect '
            'while partial_offload = False: with no disk kept, every '
            'shelve takes its snapshot.')))
    if CONF.shelved_offload_time != 0:
        problems.append((WARNING, (
            '[shelve_accel] snapshot_upload = after_offload has no effect '
            'with [DEFAULT] shelved_offload_time = %d: it applies to '
            'shelves that offload at once, so every shelve takes its '
            'snapshot. Set shelved_offload_time = 0, or snapshot_upload = '
            'at_shelve.' % CONF.shelved_offload_time)))
    code, why = _service_user_problem()
    if why:
        problems.append((code, (
            '[shelve_accel] snapshot_upload = after_offload, but %s: an '
            'upload resumed after a restart of nova-compute, or by another '
            'host of the storage, cannot authenticate to Glance (without '
            'credentials it sends no token, which only a Glance without '
            'Keystone accepts), and the kept disk stays the only copy '
            'until an upload succeeds. Set the [service_user] credentials '
            'of the nova service user (see the fast shelve guide, '
            '"Enabling it").' % why)))
    return problems


def _eviction_problems(options):
    """Eviction asks Glance with the [service_user] credentials."""
    evicts = options.eviction_margin_percent or options.max_kept_age
    if not (options.partial_offload and evicts):
        return []
    code, why = _service_user_problem()
    if not why:
        return []
    return [(code, (
        'Kept disks are evicted (eviction_margin_percent = %d, max_kept_age '
        '= %d), but %s: eviction asks Glance whether a disk\'s snapshot is '
        'active with those credentials, and with Keystone, without them, '
        'no kept disk is ever evicted and the storage can fill up to the '
        'free-space floor. Set the [service_user] credentials of the nova '
        'service user (see the administration guide, "Eviction").'
        % (options.eviction_margin_percent, options.max_kept_age, why)))]


def _service_user_problem():
    """(code, why) the [service_user] credentials fail; why is None if not.

    Credentials that are not set warn (a Glance without Keystone needs
    none); credentials Keystone refuses fail: with them Nova itself cannot
    send its service token.
    """
    unset, why = service_user.problem()
    return (WARNING if unset else FAILURE), why


# -- kept-disks directory -------------------------------------------------

def _kept_dir_result(instances_path, kept_dir):
    try:
        storage = os.stat(instances_path)
    except FileNotFoundError:
        return upgradecheck.Result(FAILURE, (
            '[DEFAULT] instances_path %s does not exist: mount the instance '
            'storage there, or start nova-compute once, then run this '
            'check again.' % instances_path))
    if not stat.S_ISDIR(storage.st_mode):
        return upgradecheck.Result(FAILURE, (
            '[DEFAULT] instances_path %s is not a directory.'
            % instances_path))
    try:
        kept = os.lstat(kept_dir)
    except FileNotFoundError:
        return _kept_dir_missing(instances_path, kept_dir)
    if stat.S_ISLNK(kept.st_mode) or not stat.S_ISDIR(kept.st_mode):
        return upgradecheck.Result(FAILURE, (
            '%s is not a directory but a %s: the driver never follows '
            'one, so it keeps no disk and sees none. Replace it by a real '
            'directory of %s, or let nova-compute create it.'
            % (kept_dir, _file_kind(kept.st_mode), instances_path)))
    if kept.st_dev != storage.st_dev or _is_mount_point(kept_dir):
        return upgradecheck.Result(FAILURE, (
            '%s is a filesystem of its own, not part of the one of %s: '
            'kept disks move in and out by rename, which is atomic, and '
            'possible at all, only within one filesystem (keeping fails '
            'with "Invalid cross-device link"). Unmount it and let it be '
            'a plain directory of %s.'
            % (kept_dir, instances_path, instances_path)))
    if not _writable(kept_dir):
        return upgradecheck.Result(FAILURE, (
            '%s is not writable by uid %d: the user nova-compute runs as '
            'must own it (mode 0700). Run this command as that user, and '
            'fix the owner if it still fails.'
            % (kept_dir, os.geteuid())))
    return upgradecheck.Result(SUCCESS, (
        '%s is a directory on the filesystem of %s, owned by uid %d and '
        'writable by uid %d.'
        % (kept_dir, instances_path, kept.st_uid, os.geteuid())))


def _kept_dir_missing(instances_path, kept_dir):
    if _writable(instances_path):
        return upgradecheck.Result(SUCCESS, (
            '%s does not exist yet: nova-compute creates it when it starts '
            'with the plugin\'s driver (%s is writable by uid %d).'
            % (kept_dir, instances_path, os.geteuid())))
    return upgradecheck.Result(FAILURE, (
        '%s does not exist, and %s is not writable by uid %d: nova-compute '
        'running as that user cannot create it, and keeps no disk. Run '
        'this command as the user nova-compute runs as, and fix the '
        'permissions of instances_path if it still fails.'
        % (kept_dir, instances_path, os.geteuid())))


def _writable(directory):
    # Effective ids: those this process would create and rename files with.
    return os.access(directory, os.W_OK | os.X_OK, effective_ids=True)


def _file_kind(mode):
    if stat.S_ISLNK(mode):
        return 'symbolic link'
    if stat.S_ISREG(mode):
        return 'file'
    return 'special file'


def _is_mount_point(path):
    """Whether ``path`` is mounted on, bind mounts of the same device too.

    A bind mount keeps the device number of its source, and rename(2)
    across it fails all the same: the kernel's mount table tells.
    """
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        with open('/proc/self/mountinfo') as mountinfo:
            return any(_mount_point(line) == real for line in mountinfo)
    except OSError:
        return False


def _mount_point(mountinfo_line):
    # Field 5 is the mount point, with space, tab, newline and backslash
    # written as octal escapes.
    field = mountinfo_line.split(' ')[4]
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), field)


# -- storage groups -------------------------------------------------------

def _storage_groups():
    """The storage groups the aggregates of the API DB define."""
    if not api_db_api.context_manager.is_started:
        # Configured from [api_database] as Nova's services configure it,
        # unless something in this process already did.
        api_db_api.configure(CONF)
    return _StorageGroups.from_database(nova_context.get_admin_context())


def _cells_of_hosts(groups):
    """{host: cell name} of the hosts of the storage groups, as mapped."""
    ctxt = nova_context.get_admin_context()
    hosts = set().union(*groups.hosts.values()) if groups.hosts else set()
    cells = {}
    for host in sorted(hosts):
        try:
            mapping = objects.HostMapping.get_by_host(ctxt, host)
        except exception.HostMappingNotFound:
            continue
        cells[host] = mapping.cell_mapping.name or mapping.cell_mapping.uuid
    return cells


def _without_credentials(text):
    """``text`` with the password of any database URL in it masked."""
    return re.sub(r'(://[^:/@\s]*:)[^@\s]*@', r'\1***@', text)


class _StorageGroups(storage_groups.StorageGroups):
    """The storage groups, as the filter reads them, and what is wrong."""

    def problems(self):
        """``(code, text)`` pairs, one per kind of mistake."""
        found = [self._hosts_in_several_groups(), self._blank_aggregates(),
                 self._small_groups(), self._stock_driver_in_group()]
        return [problem for problem in found if problem]

    def _hosts_in_several_groups(self):
        several = sorted(h for h, g in self.groups_of.items() if len(g) > 1)
        if not several:
            return None
        # Not a warning: one storage is mounted at instances_path, so all
        # but one of the groups are wrong for sure.
        return (FAILURE, (
            'Hosts in several storage groups: %s. A host mounts one '
            'storage at instances_path, so all but one of its groups are '
            'wrong: unshelves sent there find no kept disk and download '
            'the snapshot, or fail while it is still uploading '
            '(snapshot_upload = after_offload). Remove each from the '
            'aggregates of the groups whose storage it does not mount.'
            % _listed('%s (%s)' % (h, ', '.join(sorted(self.groups_of[h])))
                      for h in several)))

    def _blank_aggregates(self):
        if not self.blank:
            return None
        return (WARNING, (
            'Aggregates with a blank %s: %s. It names no group and is '
            'ignored, so their hosts count as storage of their own. Set it '
            'to the name of the storage the hosts share, or unset it.'
            % (storage_groups.GROUP_KEY,
               _listed('%s (id %s)' % (a.name, a.id) for a in self.blank))))

    def _small_groups(self):
        small = sorted(g for g, hosts in self.hosts.items() if len(hosts) < 2)
        if not small:
            return None
        return (WARNING, (
            'Storage groups with fewer than two hosts: %s. Such a group '
            'changes nothing (a host in no group is a group of its own): '
            'either the other hosts that mount its storage are missing '
            '(openstack aggregate add host), or the storage is not shared '
            'and %s is not needed.'
            % (_listed('%s (%s)' % (g, self._hosts_of(g)) for g in small),
               storage_groups.GROUP_KEY)))

    def cells_spanned(self, cells):
        """A failure for the groups whose hosts are in several cells.

        ``cells`` maps hosts to the name of their cell (unmapped hosts are
        left out).
        """
        spanning = sorted(
            g for g, hosts in self.hosts.items()
            if len({cells[h] for h in hosts if h in cells}) > 1)
        if not spanning:
            return None
        # A compute host looks instances up in its own cell only: one of
        # another cell would be unknown to it, and its disks would be
        # neither reused nor reclaimed.
        return (FAILURE, (
            'Storage groups whose hosts are in several cells: %s. A host '
            'looks up the instances of the kept disks on its storage in its '
            'own cell: another cell\'s are unknown to it, so their disks are '
            'never reused there and never reclaimed. A storage group must '
            'be the hosts of one cell that mount one storage.' % _listed(
                '%s (%s)' % (g, ', '.join('%s: %s' % (h, cells.get(
                    h, 'unmapped')) for h in sorted(self.hosts[g])))
                for g in spanning)))

    def _hosts_of(self, group):
        return ', '.join(sorted(self.hosts[group])) or 'no host'

    def _stock_driver_in_group(self):
        driver = CONF.compute_driver
        groups = self.groups_of.get(CONF.host)
        if not driver or driver == PLUGIN_DRIVER or not groups:
            return None
        return (WARNING, (
            'This host, %s, is in storage group %s but runs [DEFAULT] '
            'compute_driver = %s: the filter can send unshelves here, where '
            'no kept disk is reused, and this host never reclaims kept '
            'disks nor protects their base files in its image cache pass. '
            'Set compute_driver = %s, or remove the host from the group\'s '
            'aggregates.' % (CONF.host, ', '.join(sorted(groups)), driver,
                             PLUGIN_DRIVER)))

    def summary(self):
        if not self.hosts:
            return ('No aggregate has a %s: every host is a storage of its '
                    'own, and a kept disk is reused only on the host that '
                    'kept it.' % storage_groups.GROUP_KEY)
        groups = _listed('%s (%d hosts)' % (g, len(self.hosts[g]))
                         for g in sorted(self.hosts))
        mine = self.groups_of.get(CONF.host)
        where = ('in storage group %s' % ', '.join(sorted(mine)) if mine
                 else 'in no storage group')
        return ('Storage groups: %s. This host, %s, is %s.'
                % (groups, CONF.host, where))


def main(argv=None):
    """Entry point of ``nova-shelve-accel-status``."""
    objects.register_all()
    # Reading a host mapping formats its cell's transport_url with
    # [DEFAULT] transport_url. Nova's services have it from oslo.messaging
    # once they set up their transport, which this command never does.
    for group, opts in messaging_opts.list_opts():
        if group is None:
            CONF.register_opts(opts)
    # The database layer reads [profiler], as in every Nova command.
    profiler = importutils.try_import('osprofiler.opts')
    if profiler:
        profiler.set_defaults(CONF)
    argv = sys.argv[1:] if argv is None else argv
    if cmd.printed_version(argv):
        return SUCCESS
    try:
        return upgradecheck.main(CONF, project='nova',
                                 upgrade_command=UpgradeCommands(),
                                 argv=argv)
    except cfg.Error as e:
        # A nova.conf that cannot be read is no result of the checks: exit
        # as oslo.upgradecheck does when a check breaks, not with 1 or 2,
        # which say warning or failure.
        return cmd.config_error(e)
    except SystemExit as e:
        # argparse, on a wrong command line, exits 2: "failure" here.
        if e.code == 2:
            return ERROR
        raise
