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

"""The base of end-to-end test classes that change the cloud's mode.

tests/e2e/cloud.py is imported by tools that run with the system's Python
(tools/soak.py), which has no testtools: test classes live here.
"""

import shutil
import tempfile

import testtools

from tests.e2e import cloud


class FastShelveTestCase(testtools.TestCase):
    """Test classes that run in mode fast-shelve with an image of their own.

    setUpClass switches the cloud to fast-shelve with snapshot_upload_delay
    UPLOAD_DELAY (Keystone's tokens living TOKEN_LIFETIME seconds, when
    set) and uploads a test image as IMAGE_CLOUD's user (cls.image_id);
    tearDownClass, or a failed setUpClass, puts the cloud back in plugin
    mode with tokens of an hour and deletes the image, whatever happened.
    """

    UPLOAD_DELAY = 0
    TOKEN_LIFETIME = None
    IMAGE_CLOUD = cloud.CLOUD
    PREFIX = 'e2e'

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cloud.check_cloud_is_up()
        cls.class_workdir = tempfile.mkdtemp(prefix=cls.PREFIX + '-')
        cls.image_id = None
        try:
            if cls.TOKEN_LIFETIME:
                cloud.set_token_expiration(cls.TOKEN_LIFETIME)
            cloud.set_mode('fast-shelve', upload_delay=cls.UPLOAD_DELAY)
            cls.image_id = cloud.upload_test_image(
                cls.class_workdir, cls.PREFIX, as_cloud=cls.IMAGE_CLOUD)
        except BaseException:
            cls._restore_cloud()
            raise

    @classmethod
    def tearDownClass(cls):
        cls._restore_cloud()
        super().tearDownClass()

    @classmethod
    def _restore_cloud(cls):
        try:
            if cls.TOKEN_LIFETIME:
                cloud.set_token_expiration(cloud.DEFAULT_TOKEN_LIFETIME)
            cloud.set_mode('plugin')
        finally:
            try:
                if cls.image_id:
                    cloud.openstack('image', 'delete', cls.image_id,
                                    parse=False)
                    cls.image_id = None
            finally:
                shutil.rmtree(cls.class_workdir, ignore_errors=True)
