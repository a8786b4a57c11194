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

"""Wrong [service_user] credentials are said at once, never found late."""

import socket

import fixtures

from oslo_upgradecheck import upgradecheck

from nova import test

from nova_shelve_accel.cmd import status
from nova_shelve_accel import service_user
from nova_shelve_accel.virt.libvirt import upload
from tests.unit import keystone

FAILURE = upgradecheck.Code.FAILURE
SUCCESS = upgradecheck.Code.SUCCESS
WARNING = upgradecheck.Code.WARNING


def _closed_port_url():
    """The address of a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return 'http://127.0.0.1:%d' % s.getsockname()[1]


class TestRefusal(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.keystone = self.useFixture(keystone.KeystoneFixture())

    def test_credentials_keystone_accepts_are_not_refused(self):
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url))
        self.assertEqual((False, None), service_user.problem())
        self.assertEqual([keystone.USER], self.keystone.requests)

    def test_a_wrong_password_is_refused_naming_keystone_and_user(self):
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url,
                                                    password='wrong'))
        unset, why = service_user.problem()
        self.assertFalse(unset)
        self.assertIn('Keystone at %s refuses' % self.keystone.url, why)
        self.assertIn('(user nova)', why)
        self.assertEqual([keystone.USER], self.keystone.requests)

    def test_a_keystone_nobody_answers_at_is_named(self):
        url = _closed_port_url()
        self.useFixture(keystone.ServiceUserFixture(url))
        unset, why = service_user.problem()
        self.assertFalse(unset)
        self.assertIn('Keystone at %s gives no token' % url, why)

    def _ask_a_keystone_that_never_answers(self, timeout=None):
        # Connections are made (the kernel accepts them into the backlog)
        # but nothing reads or answers: without a timeout the question
        # would hang until the test's own timeout fails it.
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            s.listen(4)
            url = 'http://127.0.0.1:%d' % s.getsockname()[1]
            self.useFixture(keystone.ServiceUserFixture(url))
            if timeout is not None:
                self.flags(timeout=timeout, group='service_user')
            unset, why = service_user.problem()
        self.assertFalse(unset)
        self.assertIn('Keystone at %s gives no token' % url, why)

    def test_a_silent_keystone_is_given_up_after_the_configured_timeout(self):
        self._ask_a_keystone_that_never_answers(timeout=1)

    def test_a_silent_keystone_is_given_up_after_the_default_timeout(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.service_user.KEYSTONE_TIMEOUT', 1))
        self._ask_a_keystone_that_never_answers()

    def test_no_credentials_are_a_load_problem(self):
        unset, why = service_user.problem()
        self.assertTrue(unset)
        self.assertIn('auth_type is not set', why)

    def test_credentials_without_keystone_need_no_token(self):
        self.flags(auth_type='none', group='service_user')
        self.assertEqual((False, None), service_user.problem())


class TestStatusCheck(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.keystone = self.useFixture(keystone.KeystoneFixture())
        self.flags(compute_driver=status.PLUGIN_DRIVER)
        self.flags(shelved_offload_time=0)

    def check(self):
        return status.UpgradeCommands()._check_shelve_accel_options()

    def test_fast_shelve_with_refused_credentials_fails(self):
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url,
                                                    password='wrong'))
        result = self.check()
        self.assertEqual(FAILURE, result.code, result.details)
        self.assertIn('refuses the [service_user] credentials',
                      result.details)
        self.assertIn('cannot authenticate to Glance', result.details)

    def test_fast_shelve_with_accepted_credentials_succeeds(self):
        self.flags(snapshot_upload='after_offload', group='shelve_accel')
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url))
        result = self.check()
        self.assertEqual(SUCCESS, result.code, result.details)
        self.assertEqual([keystone.USER], self.keystone.requests)

    def test_eviction_with_refused_credentials_fails(self):
        self.flags(max_kept_age=3600, group='shelve_accel')
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url,
                                                    password='wrong'))
        result = self.check()
        self.assertEqual(FAILURE, result.code, result.details)
        self.assertIn('no kept disk is ever evicted', result.details)

    def test_without_eviction_keystone_is_not_asked(self):
        self.flags(eviction_margin_percent=0, max_kept_age=0,
                   group='shelve_accel')
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url,
                                                    password='wrong'))
        result = self.check()
        self.assertEqual(SUCCESS, result.code, result.details)
        self.assertEqual([], self.keystone.requests)


class TestStartUpLog(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.keystone = self.useFixture(keystone.KeystoneFixture())

    def test_refused_credentials_are_an_error_at_start(self):
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url,
                                                    password='wrong'))
        upload.check_service_user()
        self.assertIn('ERROR', self.stdlog.logger.output)
        self.assertIn('refuses the [service_user] credentials (user nova)',
                      self.stdlog.logger.output)
        self.assertIn('each kept disk stays the only copy',
                      self.stdlog.logger.output)

    def test_missing_credentials_are_a_warning_at_start(self):
        upload.check_service_user()
        self.assertIn('WARNING', self.stdlog.logger.output)
        self.assertIn('auth_type is not set', self.stdlog.logger.output)

    def test_accepted_credentials_say_nothing(self):
        self.useFixture(keystone.ServiceUserFixture(self.keystone.url))
        upload.check_service_user()
        self.assertNotIn('[service_user]', self.stdlog.logger.output)
        self.assertEqual([keystone.USER], self.keystone.requests)
