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

"""An identity for every request to the test cloud's Nova and Glance APIs.

Nova 34 has no noauth pipeline any more: its paste file only knows
keystonemiddleware's ``authtoken`` followed by ``keystonecontext``; Glance's
unauthenticated pipeline gives requests no roles, and its policies then
refuse uploads. The loopback cloud has no Keystone, so ``cloud.sh`` builds
both paste files with this filter in place of ``authtoken``. It sets the
headers ``authtoken`` would have set for an admin user, and the services'
own context middleware builds the request context from them as usual.
Never use this outside a throw-away cloud.
"""

import webob.dec

IDENTITY = {
    'HTTP_X_IDENTITY_STATUS': 'Confirmed',
    'HTTP_X_USER_ID': 'admin',
    'HTTP_X_USER_NAME': 'admin',
    'HTTP_X_PROJECT_ID': 'admin',
    'HTTP_X_PROJECT_NAME': 'admin',
    'HTTP_X_ROLES': 'admin,member,reader',
}


class NoAuthIdentity(object):

    def __init__(self, application):
        self.application = application

    @classmethod
    def factory(cls, global_config, **local_config):
        return cls

    @webob.dec.wsgify
    def __call__(self, req):
        req.environ.update(IDENTITY)
        # Nova hands the caller's token on to Glance and Neutron; both run
        # without authentication here, but the header must not be empty.
        req.environ.setdefault('HTTP_X_AUTH_TOKEN', 'noauth')
        return self.application


@webob.dec.wsgify
def identity_version(req):
    """Answer identity v3 version discovery and nothing else.

    The openstack client builds an identity proxy before commands such as
    ``flavor create`` or ``image create`` even when no project is named;
    with nothing to discover that fails. The test cloud serves this one
    document under Nova's API (``/identity/v3``).
    """
    url = req.host_url + '/identity/v3/'
    media_type = 'application/vnd.openstack.identity-v3+json'
    return webob.Response(json={'version': {
        'id': 'v3.14', 'status': 'stable', 'updated': '2020-04-07T00:00:00Z',
        'links': [{'rel': 'self', 'href': url}],
        'media-types': [{'base': 'application/json', 'type': media_type}],
    }})


def identity_version_factory(global_config, **local_config):
    return identity_version
