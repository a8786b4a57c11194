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

"""The ``[service_user]`` credentials, for Glance work no request carries.

An upload resumed after a restart or by another host of the storage,
eviction's look at a snapshot and the operator's commands reach Glance
with Nova's own service user: no user's token is at hand, or the one that
was has long expired. Wrong credentials there leave a kept disk the only
copy of an instance until someone notices, so the status command and
nova-compute's start-up ask Keystone for a token with them and say at once
what is wrong.
"""

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

import nova.conf

from nova_shelve_accel import compat

CONF = nova.conf.CONF
GROUP = nova.conf.service_token.SERVICE_USER_GROUP
# Seconds to wait for Keystone when [service_user] timeout is not set.
KEYSTONE_TIMEOUT = 30


def credentials():
    """The ``[service_user]`` auth plugin, or None where none is set."""
    return compat.service_auth_plugin(GROUP)


def problem():
    """(unset, why): what keeps the ``[service_user]`` credentials working.

    why is None when Keystone gives them a token, or when they need none (a
    cloud without Keystone). unset is True when they are not set or do not
    load, False when Keystone refuses them or gives no answer.
    """
    try:
        auth = ks_loading.load_auth_from_conf_options(CONF, GROUP)
    except (ks_exc.ClientException, cfg.Error) as e:
        return True, '[service_user] credentials do not load (%s)' % e
    if auth is None:
        return True, ('[service_user] has no credentials (auth_type is not '
                      'set)')
    return False, _refusal(auth)


def _refusal(auth):
    """Why Keystone gives auth no token, or None."""
    session = ks_loading.load_session_from_conf_options(CONF, GROUP,
                                                        auth=auth)
    if session.timeout is None:
        session.timeout = KEYSTONE_TIMEOUT
    where = getattr(auth, 'auth_url', None) or 'the [service_user] auth_url'
    try:
        auth.get_token(session)
    except ks_exc.Unauthorized:
        return ('Keystone at %s refuses the [service_user] credentials '
                '(user %s): wrong user name, password, domain or project'
                % (where, _username()))
    except ks_exc.ClientException as e:
        return ('Keystone at %s gives no token for the [service_user] '
                'credentials: %s' % (where, e))
    return None


def _username():
    try:
        return CONF[GROUP].username
    except cfg.NoSuchOptError:     # a plugin without a user name
        return '?'
