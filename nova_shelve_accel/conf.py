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

"""Options of the ``[shelve_accel]`` group of ``nova.conf``.

They are registered once, on Nova's configuration, when this module is
first imported: every module that reads them takes ``CONF`` from here.
"""

from oslo_config import cfg

import nova.conf

CONF = nova.conf.CONF

shelve_accel_group = cfg.OptGroup(
    'shelve_accel',
    title='Shelve acceleration options',
    help="""
Options of nova-shelve-accel: keeping the root disk of an image-backed
instance on the instance storage when it is shelve-offloaded, and reusing it
when the instance is unshelved on a host that sees the same storage.

They are read by nova-compute (running
``nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver``) and by
nova-scheduler (running ``HostAggregateGroupFilter``); set them to the same
values on both.
""")

shelve_accel_opts = [
    cfg.BoolOpt(
        'partial_offload',
        default=True,
        help="""
Keep the root disk of image-backed instances on the instance storage when
they are shelve-offloaded.

When enabled, shelve-offload releases CPU, RAM, PCI devices and the
Placement allocations of the instance exactly as Nova does, but moves the
root disk (and its disk.info and config drive) into the kept-disks directory
of ``[DEFAULT] instances_path`` instead of deleting it. An unshelve on a host
that sees the same storage reuses that disk and reads no image data from
Glance. The Glance snapshot that shelve creates is still uploaded (at shelve
or, with ``snapshot_upload = after_offload``, from the kept disk after the
offload), so an unshelve anywhere else works exactly as in stock Nova.

When disabled, offload deletes the disk as stock Nova does. Disks kept before
the switch was turned off are still reused by unshelve and still reclaimed by
the periodic pass.

Related options:

* ``free_space_floor_percent``
* ``[image_cache] manager_interval``: reclaiming kept disks that no instance
  can use any more runs with the image cache pass.
"""),
    cfg.IntOpt(
        'free_space_floor_percent',
        default=10,
        min=0,
        max=100,
        help="""
Free-space floor of the instance storage, in percent of its size.

A root disk is kept at shelve-offload only while the filesystem holding
``[DEFAULT] instances_path`` has at least this percentage of its size free;
below it the offload deletes the disk as stock Nova does. The scheduler
filter ``HostAggregateGroupFilter`` uses the same floor: a host whose
storage has less free is not preferred for reusing a kept disk. The filter
reads the free share the host's driver measured on the filesystem at its
last resource update (``[DEFAULT] update_resources_interval``), and Nova's
free disk figure for a host that does not run the plugin's driver.

Set it to 0 to keep disks until the storage is full (not recommended: a full
instance storage fails every spawn on it).
"""),
    cfg.StrOpt(
        'kept_disks_subdirectory',
        default='_shelve_kept',
        # One plain name: no path separator, not '.' or '..', and not
        # hidden (work in flight inside it uses hidden names).
        regex=r'^(?!\.)[^/\x00]+$',
        help="""
Name of the directory, inside ``[DEFAULT] instances_path``, that holds kept
root disks.

Each kept disk is a subdirectory named
``<instance uuid>.<snapshot image id>`` holding the disk, its disk.info, its
config drive and a ``kept.json`` record. The directory must be on the same
filesystem as ``instances_path`` (kept disks are moved in and out by rename,
which is what makes claiming a disk atomic across hosts). Every compute host
sharing the storage must use the same name. It must be one plain name: no
``/``, not starting with a dot, and not the name of the image cache
directory (``[image_cache] subdirectory_name``).
"""),
    cfg.StrOpt(
        'snapshot_upload',
        default='at_shelve',
        choices=[
            ('at_shelve', 'Shelve converts and uploads the snapshot before '
             'the offload, as stock Nova does.'),
            ('after_offload', 'Shelve of an instance whose root disk will be '
             'kept skips the snapshot; the kept disk is uploaded into the '
             'snapshot image in the background after the offload.'),
        ],
        help="""
When the Glance snapshot of a shelved instance is taken.

With ``at_shelve`` shelve waits, as in stock Nova, for the root disk to be
converted and uploaded to Glance before the instance is offloaded.

With ``after_offload``, a shelve that offloads at once
(``[DEFAULT] shelved_offload_time = 0``) of an instance whose root disk will
be kept skips the snapshot: shelve takes about as long as ``stop``. The Glance
image that the API created stays ``queued`` until this host (or, if it
restarts or dies, another host of the storage group) uploads the kept disk
into it, with the disk format and properties Nova's libvirt snapshot gives.
Until then the kept disk is the instance's only copy: it is never reclaimed
while the instance needs it, and the instance can only be unshelved on a
host of its storage group (``HostAggregateGroupFilter`` fails the unshelve
with a clear message otherwise). Where the disk will not be kept, shelve
takes the snapshot as stock Nova does.

Uploads that start after the shelving request use the ``[service_user]``
credentials; with Keystone, that user needs permission to upload to the
project's image (the admin role with Glance's default policy).

Related options:

* ``snapshot_upload_delay``
* ``max_concurrent_snapshot_uploads``
* ``snapshot_upload_max_mib_per_second``
* ``[service_user] send_service_user_token`` and its credentials
"""),
    cfg.IntOpt(
        'snapshot_upload_delay',
        default=0,
        min=0,
        help="""
Seconds to wait, from the moment the root disk is kept (during the
offload), before uploading it (``snapshot_upload = after_offload``).
Another host of the storage group that takes the upload over waits as long
from the moment it first sees the kept disk.

An instance unshelved within this time on its storage group never uploads
anything: its queued image is deleted by Nova after the unshelve. A longer
delay saves Glance traffic for short shelves and keeps the kept disk the only
copy for longer.
"""),
    cfg.IntOpt(
        'max_concurrent_snapshot_uploads',
        default=1,
        min=1,
        help="""
How many kept disks this host converts and uploads to Glance at the same
time (``snapshot_upload = after_offload``). The others wait in line.
"""),
    cfg.IntOpt(
        'snapshot_upload_max_mib_per_second',
        default=0,
        min=0,
        deprecated_name='snapshot_upload_max_mbps',
        deprecated_group='shelve_accel',
        help="""
Upper bound, in MiB (2^20 bytes) per second, of the data each background
snapshot upload sends to Glance (``snapshot_upload = after_offload``); 0
means no bound. Use it when the uploads slow down the guests or the
unshelves on the host.

Formerly ``snapshot_upload_max_mbps``, the same unit despite its name (not
megabits); the old name still works.
"""),
    cfg.IntOpt(
        'max_kept_age',
        default=0,
        min=0,
        help="""
Age, in seconds, after which a kept root disk is evicted; 0 (the default)
keeps it until the instance is unshelved or deleted.

Checked at every image cache pass (``[image_cache] manager_interval``),
against the ``kept_at`` time the keeping host wrote (keep the hosts' clocks
in step). Only disks whose snapshot is ``active`` in Glance are evicted: the
instance's next unshelve downloads that snapshot, as stock Nova does. A disk
whose snapshot is still being uploaded (``snapshot_upload =
after_offload``) is the instance's only copy and is never evicted. The
periodic pass asks Glance with the ``[service_user]`` credentials: without
them, with Keystone, no disk is evicted.

Related options:

* ``eviction_margin_percent``
"""),
    cfg.IntOpt(
        'eviction_margin_percent',
        default=5,
        min=0,
        max=100,
        help="""
Storage pressure eviction margin, in percent of the storage's size.

When the free share of the filesystem holding ``[DEFAULT] instances_path``
falls below ``free_space_floor_percent`` plus this margin, the host evicts
the oldest kept disks whose snapshot is ``active`` in Glance, one at a time,
until the free share is above that level again or no such disk is left.
Checked at most once a minute, at the resource update
(``[DEFAULT] update_resources_interval``). Never a disk whose snapshot is
still being uploaded. Asks Glance with the ``[service_user]`` credentials,
as ``max_kept_age`` does.

Related options:

* ``free_space_floor_percent``
* ``max_kept_age``
"""),
    cfg.FloatOpt(
        'headroom_weight_multiplier',
        default=1000.0,
        help="""
Multiplier of the scheduler weigher
``nova_shelve_accel.scheduler.weights.ShelvedHeadroomWeigher``, which keeps
room in each storage group for the instances shelved there with kept disks.

For a new server (or any request but the unshelve of a kept disk in its
group), the weigher gives a host of a storage group a weight between 0 and
1: the share of the RAM and vCPUs that the group's shelved instances need
to come back that the group's hosts would still have free with this request
on this host (1 when they would have it all); a host in no storage group
weighs 1. For the unshelve of a kept disk, it spreads the instances over
the group's hosts by free RAM. The weight is multiplied by this value.

The default outweighs Nova's resource weighers (each adds at most its own
multiplier, 1.0 by default): a group's room is used only when no other
host can take the request, or another group is shorter of room. Set it
near 1.0 to make the room a mere preference, or to 0 to turn the weigher
off (it then reads nothing). Negative values fill the groups with the least
room first; do not use them.

Can be overridden per host aggregate with the aggregate metadata key
``headroom_weight_multiplier``. Only read if the weigher is listed in
``[filter_scheduler] weight_classes``.

Related options:

* ``headroom_refresh_interval``
* ``[filter_scheduler] weight_classes``
"""),
    cfg.IntOpt(
        'headroom_refresh_interval',
        default=60,
        min=0,
        help="""
Seconds for which nova-scheduler reuses its count of the RAM and vCPUs that
the instances shelved with kept disks need, per storage group, before
counting again.

The count reads every shelved-offloaded instance of every cell; a
scheduling request never does. Instances shelved or unshelved since the
last count are seen at the next one, so a short interval follows a burst of
shelves sooner and a long one reads the databases less often. If a cell
cannot be read, its instances count as needing nothing until the next
count. 0 counts at every request the weigher weighs, whose cost then grows
with the number of shelved instances: for tests only.

Related options:

* ``headroom_weight_multiplier``
"""),
]


def register_opts(conf):
    conf.register_group(shelve_accel_group)
    conf.register_opts(shelve_accel_opts, group=shelve_accel_group)


def list_opts():
    return [(shelve_accel_group, shelve_accel_opts)]


register_opts(CONF)
