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

"""Projects, users, roles and the service catalog of the loopback cloud.

Run by ``cloud.sh up`` once ``keystone-manage bootstrap`` has made the
admin user, project and roles (admin, manager, member, reader, service)::

    identity.py KEYSTONE_URL ADMIN_PASSWORD SERVICE_PASSWORD DEMO_PASSWORD \\
        TYPE=NAME=URL...

As a deployment tool would, it makes:

* the ``service`` project, and a user per service (nova, glance, neutron,
  placement) with the ``admin`` and ``service`` roles in it: ``service``
  lets keystonemiddleware accept a user's expired token that comes with
  that user's service token (what Nova sends with ``[service_user]
  send_service_user_token``);
* the ``demo`` project and its ``demo`` user, a plain ``member``;
* each service of the catalog with its public and internal endpoint in
  RegionOne.

One process for all of it: the openstack client would start (and
authenticate) once per object.
"""

import sys

import openstack

REGION = 'RegionOne'
DOMAIN = 'default'
SERVICE_USERS = ('nova', 'glance', 'neutron', 'placement')


def main(keystone_url, admin_password, service_password, demo_password,
         *services):
    conn = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_type='password',
        auth_url=keystone_url + '/v3', username='admin',
        password=admin_password, project_name='admin',
        user_domain_id=DOMAIN, project_domain_id=DOMAIN,
        region_name=REGION)
    identity = conn.identity
    roles = {r.name: r for r in identity.roles()}
    for needed in ('admin', 'member', 'service'):
        if needed not in roles:
            sys.exit('keystone-manage bootstrap made no %r role' % needed)

    service_project = _project(identity, 'service')
    for name in SERVICE_USERS:
        user = _user(identity, name, service_password, service_project)
        for role in ('admin', 'service'):
            identity.assign_project_role_to_user(
                service_project, user, roles[role])

    demo_project = _project(identity, 'demo')
    demo = _user(identity, 'demo', demo_password, demo_project)
    identity.assign_project_role_to_user(demo_project, demo, roles['member'])

    for spec in services:
        service_type, name, url = spec.split('=', 2)
        service = identity.create_service(type=service_type, name=name)
        for interface in ('public', 'internal'):
            identity.create_endpoint(service_id=service.id,
                                     interface=interface, url=url,
                                     region_id=REGION)


def _project(identity, name):
    return identity.create_project(name=name, domain_id=DOMAIN)


def _user(identity, name, password, project):
    return identity.create_user(name=name, password=password,
                                domain_id=DOMAIN,
                                default_project_id=project.id)


if __name__ == '__main__':
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
