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

"""Options of the ``[shelve_accel]`` group of ``nova.conf``."""

from oslo_config import cfg

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
Glance. The Glance snapshot that shelve creates is still uploaded, so an
unshelve anywhere else works exactly as in stock Nova.

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
reported free disk is below it is not preferred for reusing a kept disk.

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
]


def register_opts(conf):
    conf.register_group(shelve_accel_group)
    conf.register_opts(shelve_accel_opts, group=shelve_accel_group)


def list_opts():
    return [(shelve_accel_group, shelve_accel_opts)]
