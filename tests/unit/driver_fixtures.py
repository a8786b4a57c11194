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

"""What the driver's unit tests share.

The driver on Nova's fake libvirt, an in-memory Glance, the cell database
and disks with data.

Used by the tests of the driver, the upload, eviction and the CLI.
"""

import copy
import os

import fixtures
from oslo_utils import units

import nova.conf
from nova import context as nova_context
from nova import exception
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import fake_instance
from nova.virt import fake

from nova_shelve_accel.virt.libvirt import driver as accel_driver
from tests.unit import disks

CONF = nova.conf.CONF
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
OLD_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000000'
NODE = 'compute-a'
# What glanceclient reads at a time from the file it uploads.
GLANCE_CHUNK = 64 * units.Ki


class FakeGlance(fixtures.Fixture):
    """Glance as ``nova.image.glance.API`` shows it, images in memory.

    ``update`` with data reads it as glanceclient does, 64 KiB at a time
    until it ends, and only then activates the image, as Glance does; an
    error raised while reading leaves the image queued and without data.
    """

    def __init__(self):
        super().__init__()
        self.images = {}
        self.data = {}
        # (image id, metadata) of every update, with data or not.
        self.updates = []
        # Called with the number of chunks read so far, after each chunk.
        self.after_chunk = None
        # Raised by update before it reads anything.
        self.error = None
        # The status Glance gives the image once the data is in.
        self.status_after_upload = 'active'
        # (image id, protected) of every update of 'protected' alone; those
        # are not in ``updates``.
        self.protections = []
        # Raised by such an update.
        self.protect_error = None

    def _setUp(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.image.glance.API.get',
            lambda api, context, image_id, *args, **kwargs: self.get(
                context, image_id)))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.image.glance.API.update',
            lambda api, context, image_id, metadata, data=None,
            purge_props=True: self.update(context, image_id, metadata,
                                          data)))

    def add(self, image_id, status='queued', name='instance-shelved'):
        self.images[image_id] = {'id': image_id, 'name': name,
                                 'status': status, 'properties': {},
                                 'protected': False}

    def get(self, context, image_id):
        if image_id not in self.images:
            raise exception.ImageNotFound(image_id=image_id)
        return copy.deepcopy(self.images[image_id])

    def update(self, context, image_id, metadata, data=None):
        if set(metadata) == {'protected'} and data is None:
            if self.protect_error is not None:
                raise self.protect_error
            if image_id not in self.images:
                raise exception.ImageNotFound(image_id=image_id)
            self.protections.append((image_id, metadata['protected']))
            self.images[image_id]['protected'] = metadata['protected']
            return copy.deepcopy(self.images[image_id])
        self.updates.append((image_id, copy.deepcopy(metadata)))
        if self.error is not None:
            raise self.error
        image = self.images[image_id]
        if data is not None:
            if image['status'] != 'queued':
                raise exception.Invalid('image %s is %s, not queued'
                                        % (image_id, image['status']))
            chunks = []
            while True:
                chunk = data.read(GLANCE_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                if self.after_chunk is not None:
                    self.after_chunk(len(chunks))
            self.data[image_id] = b''.join(chunks)
            image['status'] = self.status_after_upload
        for key, value in metadata.items():
            if key == 'properties':
                image['properties'].update(value)
            elif key != 'status':
                image[key] = value
        return copy.deepcopy(image)


class CellDatabase(fixtures.Fixture):
    """The cell database as far as the driver's background work asks it.

    ``instances`` holds the instances ``Instance.get_by_uuid`` finds;
    ``saved`` records (uuid, expected_task_state) of every save.
    """

    def _setUp(self):
        self.instances = {}
        self.saved = []

        def get_by_uuid(cls, context, instance_uuid, expected_attrs=None):
            if instance_uuid not in self.instances:
                raise exception.InstanceNotFound(instance_id=instance_uuid)
            return self.instances[instance_uuid]

        self.useFixture(fixtures.MonkeyPatch(
            'nova.objects.Instance.get_by_uuid', get_by_uuid))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.objects.Instance.save',
            lambda inst, expected_task_state=None: self.saved.append(
                (inst.uuid, expected_task_state))))


def converted(test, disk, source_format='qcow2', out_format='qcow2'):
    """What Nova's cold snapshot uploads of ``disk``.

    ``qemu-img convert`` as Nova runs it, ``snapshot_compression`` off.
    """
    out = os.path.join(test.useFixture(fixtures.TempDir()).path, 'copy')
    disks.qemu_img('convert', '-f', source_format, '-O', out_format, disk,
                   out)
    with open(out, 'rb') as f:
        return f.read()


def make_disk_with_data(instances_path, instance_uuid):
    """A qcow2 root disk whose base and overlay both hold data.

    A copy that lost either layer differs from the disk.
    """
    base = disks.make_base(instances_path)
    disks.qemu_io('raw', base, 'write -P 0x11 0 256k')
    disk = disks.make_qcow2_instance(instances_path, instance_uuid,
                                     backing=base)
    disks.qemu_io('qcow2', disk, 'write -P 0x5a 512k 64k')
    disks.age(disk)
    return disk


class DriverTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.flags(instances_path=self.instances_path)
        self.flags(images_type='qcow2', group='libvirt')
        # Tests of the floor set their own; the others must not depend on
        # how full the test machine's disk is.
        self.flags(free_space_floor_percent=0, group='shelve_accel')
        self.useFixture(nova_fixtures.LibvirtFixture())
        self.context = nova_context.get_admin_context()
        self.flags_host = CONF.host
        self.drvr = accel_driver.PartialOffloadLibvirtDriver(
            fake.FakeVirtAPI(), False)

    def instance(self, flavor=None, **updates):
        updates.setdefault('system_metadata',
                           {'shelved_image_id': SNAPSHOT})
        # The host that offloads the instance owns it.
        updates.setdefault('host', self.flags_host)
        return fake_instance.fake_instance_obj(
            self.context, flavor=flavor, expected_attrs=['system_metadata'],
            **updates)

    def keep(self, instance_uuid, snapshot_id=SNAPSHOT):
        """A real kept disk for the instance on the driver's storage."""
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        return self.drvr._kept_disks.keep(instance_uuid, snapshot_id,
                                          'qcow2')
