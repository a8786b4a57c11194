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

"""Makes ``compute_driver = nova_shelve_accel.virt.libvirt.…`` loadable.

Nova loads ``compute_driver`` as a path below ``nova.virt``. This package,
installed as ``nova.virt.nova_shelve_accel``, makes that path name the very
modules of ``nova_shelve_accel`` rather than second copies of them.
"""

import sys

import nova_shelve_accel.virt.libvirt

sys.modules[__name__ + '.virt'] = nova_shelve_accel.virt
sys.modules[__name__ + '.virt.libvirt'] = nova_shelve_accel.virt.libvirt
