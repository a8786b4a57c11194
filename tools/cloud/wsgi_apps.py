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

"""Load an OpenStack WSGI application under gunicorn.

``keystone.wsgi.api``, ``nova.wsgi.osapi_compute`` and ``neutron.wsgi.api``
parse ``sys.argv`` as their own command line when imported, and under
gunicorn it holds gunicorn's options, which they reject. gunicorn calls
``load(...)`` from its command line (``'wsgi_apps:load("neutron.wsgi.api",
"neutron-api")'``); the services then find their configuration files
through their ``OS_*_CONFIG_*`` environment variables.
"""

import importlib
import sys

from sqlalchemy import orm


def load(module, prog):
    sys.argv = [prog]
    application = importlib.import_module(module).application
    # Relationships declared as backrefs (Neutron's Port.port_forwardings)
    # exist only once the ORM mappers are configured, which happens at the
    # first query. neutron-server's own workers query at startup; a WSGI
    # worker's first query may be a request that names such a relationship
    # and fails. Configure them now.
    orm.configure_mappers()
    return application
