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

import threading

from oslo_context import context as oslo_context
from oslo_log import log as logging
import sqlalchemy as sa

from nova.compute import vm_states
from nova import context as nova_context
from nova.db.main import api as main_db
from nova.db.main import models
from nova import exception
from nova import objects
from nova.scheduler import filters
from nova.scheduler import utils as scheduler_utils

from nova_shelve_accel import conf as accel_conf
from nova_shelve_accel import notifications
from nova_shelve_accel import shelved
from nova_shelve_accel import storage_groups

CONF = accel_conf.CONF
LOG = logging.getLogger(__name__)

# The instance the last request of this thread unshelves, as looked up for
# it: the filter and then the headroom weigher decide the same request, in
# the same thread, and the weigher needs the same instance.
_last_lookup = threading.local()


class HostAggregateGroupFilter(filters.BaseHostFilter):
    """Unshelve an instance whose root disk was kept where that disk is.

    Only hosts that share the storage holding the kept disk pass: the hosts
    of the aggregates whose ``shelve_storage_group`` metadata names the group
    of the host that offloaded the instance, or that host itself when it is
    in no group. When none of the hosts handed to the filter qualifies, all
    pass, and the unshelve downloads the snapshot as stock Nova does. Every
    other request passes untouched. Put it last in ``enabled_filters`` so
    that "qualifies" means "can also take the instance".

    While the instance's snapshot is still waiting for the kept disk's data
    (``snapshot_upload = after_offload``) there is nothing to download: only
    hosts sharing the storage pass, whatever their free space, and if none
    is left the unshelve fails with NoValidHost saying so. The instance
    stays shelved-offloaded with its disk.

    Group names are stripped of surrounding whitespace; a blank value names
    no group and is ignored with a warning. A host in two groups is a
    configuration error (it mounts one storage): the hosts of any of its
    groups pass, and a warning names the host and its groups. The filter
    trusts the aggregates: if the hosts of a group do not really share a
    storage, the host chosen finds no kept disk and downloads the snapshot.
    """

    # Decided from the instance and the aggregates, both fixed per request.
    run_filter_once_per_request = True

    def filter_all(self, filter_obj_list, spec_obj):
        hosts = list(filter_obj_list)
        instance = self.shelved_instance(spec_obj)
        kept_on = instance and instance.system_metadata.get('shelved_host')
        if not kept_on:
            return hosts
        pending = shelved.pending_snapshot_id(instance)
        storage = storage_groups.KeptDiskStorage(kept_on, hosts)
        groups = storage.groups
        floor = 0 if pending else CONF.shelve_accel.free_space_floor_percent
        sharing = [h for h in hosts if storage.is_shared_by(h)]
        qualified = [h for h in sharing if _storage_above_floor(h, floor)]
        if not qualified and pending:
            raise exception.NoValidHost(reason=_pending_message(
                instance, kept_on, groups or _groups_of_host(kept_on),
                len(hosts)))
        if not qualified:
            why = _why_none_qualified(sharing, floor)
            # The hosts handed in may all be outside the group: then only
            # the database names it.
            groups = groups or _groups_of_host(kept_on)
            LOG.info('No host sharing the storage of %s (groups %s) can take '
                     'instance %s: %s; letting all %d hosts through '
                     '(stock scheduling).', kept_on,
                     sorted(groups) or 'none', spec_obj.instance_uuid,
                     why, len(hosts))
            notifications.notify(
                'shelve_accel.scheduler.fallback', spec_obj.instance_uuid,
                project_id=instance.project_id, kept_on=kept_on,
                kept_groups=sorted(groups),
                snapshot_id=instance.system_metadata.get('shelved_image_id'),
                reason=why, candidates=len(hosts))
            return hosts
        LOG.debug('Instance %s has a kept root disk on the storage of %s '
                  '(groups %s): %d of %d hosts share it.',
                  spec_obj.instance_uuid, kept_on, sorted(groups) or 'none',
                  len(qualified), len(hosts))
        return qualified

    def shelved_instance(self, spec_obj):
        """The instance unshelved onto its kept disk, or None."""
        return instance_to_unshelve(spec_obj, self._load_instance)

    @staticmethod
    def _load_instance(cell, instance_uuid):
        """The instance as the filter reads it, in one statement, or None.

        Instance.get_by_uuid joins the security groups, their rules and the
        network info cache, and loads the system metadata in a second
        statement; this reads only the fields the filter and the weigher
        use (``tools/bench_lookup.py`` times both on the loopback cloud).
        Read at every request: nothing is cached.
        """
        ctxt = nova_context.get_admin_context()
        # target_cell() makes its copy of our admin context the thread's
        # current one: put the request's back, or every later log line of
        # this scheduling request would carry the copy's request id.
        request_context = oslo_context.get_current()
        try:
            with nova_context.target_cell(ctxt, cell) as cctxt:
                rows = _instance_rows(cctxt, instance_uuid)
        finally:
            if request_context is not None:
                request_context.update_store()
        if not rows:
            return None
        vm_state, project_id = rows[0][:2]
        # An Instance holding only what was read; never saved.
        return objects.Instance(
            uuid=instance_uuid, vm_state=vm_state, project_id=project_id,
            system_metadata={key: value for _s, _p, key, value in rows
                             if key is not None})


def _instance_rows(cctxt, instance_uuid):
    """[(vm_state, project_id, key, value)] of a live instance's metadata.

    One row per system metadata item (one row of None keys if it has
    none); no row if no live instance has that uuid. Soft-deleted rows
    (``deleted`` != 0) are left out, as Nova's own queries leave them out.
    """
    instance, sysmeta = models.Instance, models.InstanceSystemMetadata
    query = sa.select(
        instance.vm_state, instance.project_id, sysmeta.key, sysmeta.value,
    ).select_from(instance).outerjoin(sysmeta, sa.and_(
        sysmeta.instance_uuid == instance.uuid, sysmeta.deleted == 0,
    )).where(instance.uuid == instance_uuid, instance.deleted == 0)
    with main_db.get_context_manager(cctxt).reader.using(cctxt) as session:
        return session.execute(query).all()


def instance_to_unshelve(spec_obj, load_instance=None):
    """The instance ``spec_obj`` unshelves onto its kept disk, or None.

    Read from the instance's cell once per request: the headroom weigher,
    which tells these requests apart too, gets the filter's answer.
    """
    # Keyed by the spec object and its instance: a multi-create request
    # schedules its instances one after the other with one spec.
    last = getattr(_last_lookup, 'request', None)
    if last and last[0] is spec_obj and last[1] == spec_obj.instance_uuid:
        return last[2]
    instance = _instance_to_unshelve(
        spec_obj, load_instance or HostAggregateGroupFilter._load_instance)
    _last_lookup.request = (spec_obj, spec_obj.instance_uuid, instance)
    return instance


def _instance_to_unshelve(spec_obj, load_instance):
    if scheduler_utils.request_is_rebuild(spec_obj):
        return None
    # A move of an existing instance (unshelve, migrate, evacuate) is
    # targeted at the instance's cell; a new boot is not, and skips the
    # lookup.
    destination = spec_obj.obj_attr_is_set('requested_destination') and \
        spec_obj.requested_destination
    cell = destination and destination.obj_attr_is_set('cell') and \
        destination.cell
    if not cell:
        return None
    instance = load_instance(cell, spec_obj.instance_uuid)
    if instance is None or not is_offloaded_with_kept_disk(instance):
        return None
    return instance


def is_offloaded_with_kept_disk(instance):
    """Whether the instance is shelved-offloaded with its root disk kept."""
    return (instance.vm_state == vm_states.SHELVED_OFFLOADED and
            bool(shelved.kept_snapshot_id(instance) or
                 shelved.pending_snapshot_id(instance)))


def _groups_of_host(host):
    """The storage groups of ``host``, read from the database, or none."""
    try:
        return storage_groups.groups_of_host(
            nova_context.get_admin_context(), host)
    except Exception:
        LOG.exception('Cannot read the aggregates of %s.', host)
        return set()


def _pending_message(instance, kept_on, groups, candidates):
    # Nova keeps the first 255 characters in the instance action's event:
    # what the user must know comes first.
    snapshot_id = instance.system_metadata['shelved_image_id']
    message = (
        'Snapshot %s is still being uploaded from the kept root disk, the '
        'only copy of the data: retry once the image is active, or free a '
        'host of storage group %s. None of the %d hosts left by the other '
        'filters shares the storage of %s, where instance %s was shelved '
        '(openstack image show %s).' % (
            snapshot_id, ', '.join(sorted(groups)) or 'none (no aggregate)',
            candidates, kept_on, instance.uuid, snapshot_id))
    LOG.warning(message)
    return message


def _why_none_qualified(sharing, floor):
    # Said at INFO on every fallback: an operator must tell "the group's
    # hosts were full or filtered out" from "their storage is low" without
    # turning debug logging on.
    if not sharing:
        return 'none of them is left by the other filters'
    return 'below the free-space floor of %d%%: %s' % (floor, ', '.join(
        '%s (%s)' % (h.host, _free_text(h)) for h in sharing))


def _free_text(host_state):
    free, source = _free_percent(host_state)
    if free is None:
        return 'reports no disk'
    return '%.1f%% free %s' % (free, source)


def _free_percent(host_state):
    """Free share of the host's instance storage, and where it comes from.

    The host's own reading of its storage, from its last resource update,
    when it runs the plugin's driver: reusing a kept disk adds no data to
    the storage. Otherwise Nova's view, which counts every instance at its
    flavor's full disk, including those this scheduler placed since.
    """
    reported = (host_state.stats or {}).get(shelved.STORAGE_FREE_STAT)
    if reported is not None:
        try:
            return float(reported), 'as the host read it'
        except ValueError:
            LOG.warning('%s reports %s = %r, not a number; using Nova\'s '
                        'free disk figure.', host_state.host,
                        shelved.STORAGE_FREE_STAT, reported)
    total_mb = host_state.total_usable_disk_gb * 1024
    if total_mb <= 0:
        return None, None
    return (100.0 * host_state.free_disk_mb / total_mb,
            "in Nova's accounting")


def _storage_above_floor(host_state, floor):
    free, _source = _free_percent(host_state)
    if free is None:
        LOG.debug('%s reports no disk; not reusing a kept disk there.',
                  host_state.host)
        return False
    if free < floor:
        LOG.debug('%s has %.1f%% of its storage free, below '
                  '[shelve_accel] free_space_floor_percent = %d.',
                  host_state.host, free, floor)
        return False
    return True
