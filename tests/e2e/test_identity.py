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

"""Fast shelve with real identity: a user's tokens expire, services' do not.

With ``snapshot_upload = after_offload`` the kept disk is uploaded after
the shelve request has returned: with the request's user token, which may
have expired by then, and Nova's service token (``[service_user]
send_service_user_token``), or, when the upload is resumed after a
restart, with the ``[service_user]`` credentials alone. The cloud's
Keystone issues tokens that live TOKEN_LIFETIME seconds while these tests
run; a member of the demo project, no admin, owns the servers.
"""

import datetime
import time
import uuid

import fixtures

from tests.e2e import base
from tests.e2e import cloud

# Above the 120 s under which keystoneauth renews a token at every request.
TOKEN_LIFETIME = 150
# The upload starts this long after the offload (as in test_fast_shelve,
# so that the two classes share the computes' mode).
UPLOAD_DELAY = 30
UPLOAD_TIMEOUT = 300
# The shelve is sent with a token that has this long left: the upload,
# UPLOAD_DELAY later, finds it expired.
TOKEN_LEFT_AT_SHELVE = 15
UPLOAD_STARTED = 'Uploading the root disk'
# The image properties Nova gives every snapshot of a server.
SNAPSHOT_PROPERTIES = ('image_type', 'instance_uuid', 'user_id',
                       'owner_project_name', 'owner_user_name')


def _token_time(text):
    """A datetime of Keystone's token expiry ('2026-12-06T21:30:00+0000')."""
    return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%S%z')


def _log_time(line):
    """The time of a nova-compute log line (the machine's, in UTC)."""
    return datetime.datetime.strptime(
        line[:23], '%Y-%m-%d %H:%M:%S.%f').replace(
            tzinfo=datetime.timezone.utc)


class IdentityTest(base.FastShelveTestCase):

    UPLOAD_DELAY = UPLOAD_DELAY
    TOKEN_LIFETIME = TOKEN_LIFETIME
    IMAGE_CLOUD = cloud.DEMO_CLOUD
    PREFIX = 'e2e-identity'

    def setUp(self):
        super().setUp()
        self.workdir = self.useFixture(fixtures.TempDir()).path

    # -- helpers ------------------------------------------------------------

    def demo(self, *args, **kwargs):
        """The openstack client's command as the demo project's member."""
        return cloud.openstack(*args, as_cloud=cloud.DEMO_CLOUD, **kwargs)

    def _boot_stopped(self):
        """A SHUTOFF server of the demo user's on a host of g1.

        The user may not name a host: c3, outside the group, is disabled
        while the server is scheduled.
        """
        cloud.set_compute_enabled(cloud.OUTSIDE_HOST, False)
        try:
            srv = self.demo(
                'server', 'create', '--flavor', cloud.FLAVOR, '--image',
                self.image_id, '--nic', 'none', '--wait',
                'e2e-identity-%s' % uuid.uuid4().hex[:8])
        finally:
            cloud.set_compute_enabled(cloud.OUTSIDE_HOST, True)
        self.addCleanup(cloud.delete_server_if_there, srv['id'])
        srv = cloud.server(srv['id'])
        self.assertIn(cloud.host_of(srv), cloud.GROUP_HOSTS)
        self.demo('server', 'stop', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHUTOFF')
        return srv

    def _shelve_snapshot(self, srv):
        """The image of the server's shelve, as its owner sees it."""
        images = self.demo('image', 'list', '--name',
                           srv['name'] + '-shelved')
        self.assertEqual(1, len(images), images)
        self.addCleanup(self._delete_image, images[0]['ID'])
        return images[0]['ID']

    def _delete_image(self, image_id):
        try:
            cloud.openstack('image', 'delete', image_id, parse=False)
        except cloud.CloudError:
            pass        # the unshelve deleted it

    def _wait_until_token_has_left(self, token, seconds):
        expires = _token_time(token['expires'])
        wait = (expires - datetime.datetime.now(datetime.timezone.utc)
                ).total_seconds() - seconds
        if wait > 0:
            time.sleep(wait)
        return expires

    @staticmethod
    def _log_ends():
        """Where each group host's compute log ends now."""
        return {host: cloud.compute_log_end(host)
                for host in cloud.GROUP_HOSTS}

    def _upload_start(self, log_ends, snapshot_id):
        """When a host of g1 started the one upload into snapshot_id.

        log_ends: _log_ends() from before the upload could start.
        """
        lines = [line for host, offset in log_ends.items()
                 for line in cloud.compute_log_lines(
                     host, UPLOAD_STARTED, offset) if snapshot_id in line]
        self.assertEqual(1, len(lines), lines)
        return _log_time(lines[0])

    def _assert_uploaded_as_stock_would(self, srv, snapshot_id, reference):
        """The snapshot is active, owned and shown as Nova's own would be."""
        snapshot = cloud.wait_for_image_status(snapshot_id, 'active',
                                               timeout=UPLOAD_TIMEOUT)
        self.assertEqual(srv['project_id'], snapshot['owner'])
        self.assertEqual(reference['owner'], snapshot['owner'])
        self.assertEqual(reference['visibility'], snapshot['visibility'])
        self.assertFalse(snapshot['protected'])
        for name in SNAPSHOT_PROPERTIES:
            self.assertEqual(reference['properties'].get(name),
                             snapshot['properties'].get(name), name)
        self.assertEqual(srv['id'],
                         snapshot['properties'].get('instance_uuid'))
        return snapshot

    def _reference_snapshot(self, srv):
        """A snapshot of the server by Nova's own code, for its owner."""
        name = 'e2e-identity-ref-%s' % uuid.uuid4().hex[:8]
        self.demo('server', 'image', 'create', '--name', name, '--wait',
                  srv['id'])
        image = self.demo('image', 'show', name)
        self.addCleanup(self._delete_image, image['id'])
        return image

    def _unshelve_and_delete(self, srv):
        self.demo('server', 'unshelve', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'ACTIVE')
        self.demo('server', 'delete', '--wait', srv['id'], parse=False)

    # -- tests --------------------------------------------------------------

    def test_upload_after_the_users_token_expired_completes(self):
        """The user's expired token and Nova's service token upload it."""
        token = self.demo('token', 'issue')
        srv = self._boot_stopped()
        self.assertEqual(token['project_id'], srv['project_id'])
        reference = self._reference_snapshot(srv)
        log_ends = self._log_ends()
        glance = cloud.GlanceDataCounter()

        expires = self._wait_until_token_has_left(token,
                                                  TOKEN_LEFT_AT_SHELVE)
        self.demo('server', 'shelve', srv['id'], parse=False, token=token)
        cloud.wait_for_status(srv['id'], 'SHELVED_OFFLOADED')
        snapshot_id = self._shelve_snapshot(srv)
        self._assert_uploaded_as_stock_would(srv, snapshot_id, reference)

        # The upload ran with the shelving request's context, after its
        # token had expired, and Glance took it at the first try.
        self.assertGreater(self._upload_start(log_ends, snapshot_id),
                           expires)
        self.assertEqual([(snapshot_id, 204)], [
            up for up in glance.uploads() if up[0] == snapshot_id])
        self._unshelve_and_delete(srv)

    def test_upload_resumed_after_a_restart_uses_the_service_user(self):
        """No user's token at all: the [service_user] credentials."""
        srv = self._boot_stopped()
        reference = self._reference_snapshot(srv)
        host = cloud.host_of(srv)
        glance = cloud.GlanceDataCounter()

        self.demo('server', 'shelve', srv['id'], parse=False)
        cloud.wait_for_status(srv['id'], 'SHELVED_OFFLOADED')
        snapshot_id = self._shelve_snapshot(srv)
        # Within UPLOAD_DELAY: the upload this host had planned with the
        # request's context dies with the process. This host, restarted,
        # or the other host of g1 resumes it: neither has a user's token.
        log_ends = self._log_ends()
        came_back, output = cloud.restart_compute(host)
        self.assertTrue(came_back, output)
        self.assertEqual('queued', cloud.image(snapshot_id)['status'])

        self._assert_uploaded_as_stock_would(srv, snapshot_id, reference)
        self._upload_start(log_ends, snapshot_id)
        self.assertEqual([(snapshot_id, 204)], [
            up for up in glance.uploads() if up[0] == snapshot_id])
        self._unshelve_and_delete(srv)

    def test_wrong_service_credentials_are_said_at_once(self):
        """The status check and nova-compute's start-up name them."""
        wrong = '[service_user]\npassword = not-the-password\n'
        code, out, err = cloud.host_command(
            'c1', 'nova-shelve-accel-status', 'upgrade', 'check',
            extra_conf=wrong)
        self.assertEqual(2, code, out + err)
        # The result table wraps lines.
        self.assertIn('refuses the [service_user]', out)
        self.assertIn('credentials (user nova)', out)

        unset = '[service_user]\nauth_type =\n'
        code, out, err = cloud.host_command(
            'c1', 'nova-shelve-accel-status', 'upgrade', 'check',
            extra_conf=unset)
        self.assertEqual(1, code, out + err)
        self.assertIn('[service_user] has no credentials', out)

        # c3 keeps no disk of another host's: its restart costs no test.
        offset = cloud.compute_log_end(cloud.OUTSIDE_HOST)
        conf = self.workdir + '/wrong.conf'
        with open(conf, 'w') as f:
            f.write(wrong)
        try:
            came_back, output = cloud.restart_compute(
                cloud.OUTSIDE_HOST, extra_conf=conf)
            self.assertTrue(came_back, output)
            errors = cloud.compute_log_lines(
                cloud.OUTSIDE_HOST, 'refuses the [service_user] credentials',
                offset)
            self.assertEqual(1, len(errors), errors)
            self.assertIn(' ERROR ', errors[0])
        finally:
            came_back, output = cloud.restart_compute(cloud.OUTSIDE_HOST)
            self.assertTrue(came_back, output)
