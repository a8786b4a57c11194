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

"""The libvirt driver with partial offload, laid out as Nova's own.

* ``driver``: ``PartialOffloadLibvirtDriver``, the hooks into Nova's
  ``LibvirtDriver`` (offload keeps the root disk, unshelve claims it);
* ``upload``: the kept disk into the snapshot image, after the offload;
* ``qemu``: the qemu-img processes an upload runs, and their limits;
* ``recovery``: the pass that resolves what a crash or a deletion left;
* ``eviction``: kept disks moved into Glance when the storage fills.
"""

from nova_shelve_accel.virt.libvirt import driver

# The path operators write in nova.conf: compute_driver =
# nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver
PartialOffloadLibvirtDriver = driver.PartialOffloadLibvirtDriver
