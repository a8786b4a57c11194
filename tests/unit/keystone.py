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

"""A Keystone that knows one password, on a loopback port, for unit tests.

It answers what keystoneauth's password plugin asks (version discovery and
``POST /v3/auth/tokens``) over real HTTP, so that the code under test runs
keystoneauth as it would against Keystone. The end-to-end lane runs the
real Keystone.
"""

import datetime
import http.server
import json
import threading

import fixtures
from keystoneauth1 import loading as ks_loading

import nova.conf

CONF = nova.conf.CONF
USER = 'nova'
PASSWORD = 'right'


class _Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args):
        pass

    def _reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = 'http://%s:%d/v3/' % self.server.server_address
        self._reply(200, {'version': {
            'id': 'v3.14', 'status': 'stable',
            'updated': '2020-04-07T00:00:00Z',
            'links': [{'rel': 'self', 'href': url}],
            'media-types': [{'base': 'application/json',
                             'type': 'application/vnd.openstack.identity-v3'
                                     '+json'}]}})

    def do_POST(self):
        body = json.loads(self.rfile.read(
            int(self.headers['Content-Length'])))
        user = body['auth']['identity']['password']['user']
        self.server.requests.append(user['name'])
        if (user['name'], user['password']) != (USER, PASSWORD):
            self._reply(401, {'error': {
                'code': 401, 'title': 'Unauthorized',
                'message': 'The request you have made requires '
                           'authentication.'}})
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        expires = now + datetime.timedelta(hours=1)
        self._reply(201, {'token': {
            'methods': ['password'],
            'issued_at': now.strftime('%Y-%m-%dT%H:%M:%S.000000Z'),
            'expires_at': expires.strftime('%Y-%m-%dT%H:%M:%S.000000Z'),
            'user': {'id': 'u1', 'name': USER,
                     'domain': {'id': 'default', 'name': 'Default'}},
            'project': {'id': 'p1', 'name': 'service',
                        'domain': {'id': 'default', 'name': 'Default'}},
            'roles': [{'id': 'r1', 'name': 'service'}],
            'catalog': []}}, headers=[('X-Subject-Token', 'a-token')])


class KeystoneFixture(fixtures.Fixture):
    """The Keystone above, at ``url``.

    ``requests``: the users that asked it for a token, in order.
    """

    def _setUp(self):
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        server.requests = []
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.url = 'http://127.0.0.1:%d' % server.server_address[1]
        self.requests = server.requests


class ServiceUserFixture(fixtures.Fixture):
    """``[service_user]`` password credentials, as nova.conf would set them.

    keystoneauth registers a plugin's options when it first loads the
    plugin; registered here, they go with the fixture (some are required:
    left registered, they would fail every later parse of the options).
    """

    def __init__(self, auth_url, password=PASSWORD, username=USER):
        super().__init__()
        self.auth_url = auth_url
        self.password = password
        self.username = username

    def _setUp(self):
        group = nova.conf.service_token.SERVICE_USER_GROUP
        opts = ks_loading.get_auth_plugin_conf_options('password')
        CONF.register_opts(opts, group=group)
        self.addCleanup(CONF.unregister_opts, opts, group=group)
        # oslo.config unregisters options of parsed arguments only.
        self.addCleanup(CONF.reset)
        values = {'auth_type': 'password', 'auth_url': self.auth_url,
                  'username': self.username, 'password': self.password,
                  'project_name': 'service', 'user_domain_name': 'Default',
                  'project_domain_name': 'Default'}
        for name, value in values.items():
            CONF.set_override(name, value, group=group)
            self.addCleanup(CONF.clear_override, name, group=group)
