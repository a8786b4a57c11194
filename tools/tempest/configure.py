"""Write tempest.conf for the loopback cloud (tools/tempest.sh).

Run with the cloud's virtualenv (openstacksdk), as root, once the cloud is
up. Makes what Tempest needs and the cloud does not have (two small public
images, two flavors), then writes tempest.conf: Keystone's admin
credentials, the compute microversions Nova offers, and the features this
cloud has (see FEATURES for why each one is off).

    configure.py CLOUD_NAME WORKDIR OUTPUT NOVA_CONF...
"""

import configparser
import os
import struct
import subprocess
import sys

import openstack
import requests

IMAGES = ('tempest-guest', 'tempest-guest-alt')
SIZE = 64 * 1024 * 1024  # the images' disk, bytes
# (name, RAM MiB, disk GiB): the least RAM the firmware boots in, and an
# alternative flavor that differs for the resize tests.
FLAVORS = (('tempest.small', 64, 1), ('tempest.alt', 96, 1))

# [compute-feature-enabled] options that differ from Tempest's defaults,
# with the reason.
FEATURES = {
    # Off by default in Tempest; the cloud resizes servers.
    'resize': 'true',
    # Live migration needs libvirtd to libvirtd connections, which the
    # per-host libvirtd daemons of this cloud do not offer.
    'live_migration': 'false',
    # No genisoimage on the hosts, no metadata API, no guest agent.
    'config_drive': 'false',
    'metadata_service': 'false',
    'change_password': 'false',
    # No Cinder.
    'attach_encrypted_volume': 'false',
    # Guests have no NICs: Neutron runs without an L2 agent, so no port
    # can be bound.
    'interface_attach': 'false',
    # No console proxies.
    'vnc_console': 'false',
    'spice_console': 'false',
    'serial_console': 'false',
}


# The guests' disk: a boot sector that writes GUEST_LINES to the first
# serial port, which Nova logs as the console output, and halts. x86 real
# mode, loaded at 0x7c00:
#     cli; xor ax, ax; mov ds, ax; cld; mov si, 0x7c17; mov dx, 0x3f8
#   next: lodsb; test al, al; jz halt; out dx, al; jmp next
#   halt: hlt; jmp halt
#     (0x7c17: GUEST_LINES, then a zero byte)
BOOT_CODE = bytes.fromhex('fa31c08ed8fcbe177cbaf803ac84c07403eeebf8f4ebfd')
GUEST_LINES = b''.join(b'nova-shelve-accel tempest guest: line %d\r\n' % n
                       for n in range(1, 11))


def image_file(workdir):
    """A 64 MiB qcow2 disk that boots, prints to the console and halts.

    No OS: Tempest here checks no guest over SSH, and a halted guest costs
    the emulator no CPU.
    """
    path = os.path.join(workdir, 'tempest-guest.qcow2')
    if os.path.exists(path):
        return path
    code = BOOT_CODE + GUEST_LINES + b'\0'
    assert len(BOOT_CODE) == 0x17 and len(code) <= 446
    # One partition (bootable, Linux, from sector 2048 to the end): Nova's
    # safety check of a base image (oslo.utils' format inspector) refuses
    # a boot sector whose partition table is empty.
    partition = struct.pack('<B3BB3BII', 0x80, 0, 0, 0, 0x83, 0, 0, 0,
                            2048, SIZE // 512 - 2048)
    sector = code.ljust(446, b'\0') + partition.ljust(64, b'\0') + b'\x55\xaa'
    raw = path + '.raw'
    with open(raw, 'wb') as f:
        f.write(sector)
        f.truncate(SIZE)
    subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2',
                    raw, path], check=True)
    os.unlink(raw)
    return path


def ensure_image(conn, name, path):
    for image in conn.image.images(name=name):
        if image.status == 'active':
            return image.id
    image = conn.image.create_image(
        name=name, filename=path, disk_format='qcow2',
        container_format='bare', visibility='public', wait=True)
    return image.id


def ensure_flavor(conn, name, ram, disk):
    flavor = conn.compute.find_flavor(name, ignore_missing=True)
    if flavor is None:
        flavor = conn.compute.create_flavor(name=name, ram=ram, vcpus=1,
                                            disk=disk)
    return flavor.id


def nova_max_microversion(conn):
    url = conn.compute.get_endpoint()
    return requests.get(url, timeout=30).json()['version']['version']


def enabled_filters(nova_conf_paths):
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(nova_conf_paths)
    return conf.get('filter_scheduler', 'enabled_filters', fallback='')


def tempest_conf(conn, filters, workdir):
    auth = conn.config.config['auth']
    path = image_file(workdir)
    images = [ensure_image(conn, name, path) for name in IMAGES]
    flavors = [ensure_flavor(conn, *flavor) for flavor in FLAVORS]
    conf = configparser.ConfigParser(interpolation=None)
    conf['DEFAULT'] = {'log_dir': os.path.join(workdir, 'logs'),
                       'log_file': 'tempest.log'}
    conf['oslo_concurrency'] = {'lock_path': os.path.join(workdir, 'lock')}
    conf['auth'] = {
        'admin_username': auth['username'],
        'admin_password': auth['password'],
        'admin_project_name': auth['project_name'],
        'admin_domain_name': 'Default',
        'use_dynamic_credentials': 'true',
        # Each test's project would get a network whose ports cannot be
        # bound (no L2 agent): servers are created without NICs instead.
        'create_isolated_networks': 'false',
    }
    conf['identity'] = {
        'uri_v3': auth['auth_url'],
        'auth_version': 'v3',
        'region': conn.config.get_region_name(),
    }
    conf['identity-feature-enabled'] = {'api_v2': 'false'}
    conf['compute'] = {
        'image_ref': images[0],
        'image_ref_alt': images[1],
        'flavor_ref': flavors[0],
        'flavor_ref_alt': flavors[1],
        'min_compute_nodes': '3',
        'max_microversion': nova_max_microversion(conn),
        'build_timeout': '300',
    }
    features = dict(FEATURES)
    features['scheduler_enabled_filters'] = filters
    conf['compute-feature-enabled'] = features
    # The extensions Neutron has, rather than Tempest's default "all": tests
    # of the others (auto-allocated networks, for one) skip, saying why.
    conf['network-feature-enabled'] = {
        'api_extensions': ','.join(
            sorted(ext.alias for ext in conn.network.extensions())),
    }
    conf['validation'] = {'run_validation': 'false'}
    conf['service_available'] = {
        'nova': 'true', 'glance': 'true', 'neutron': 'true',
        'cinder': 'false', 'swift': 'false', 'horizon': 'false',
    }
    return conf


def main(argv):
    cloud, workdir, output = argv[1:4]
    conn = openstack.connect(cloud=cloud)
    conf = tempest_conf(conn, enabled_filters(argv[4:]), workdir)
    with open(output, 'w') as f:
        conf.write(f)
    print('tempest.conf: %s (compute up to %s)' % (
        output, conf['compute']['max_microversion']))


if __name__ == '__main__':
    main(sys.argv)
