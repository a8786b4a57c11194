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

"""Drive the loopback cloud of ``tools/cloud/cloud.sh``.

Everything goes through the stock ``openstack`` client (cloud
``shelve-accel``) or through files: the instance disks on the computes'
storage, read and written with qemu-io, and Glance's access log, which
gunicorn writes with the number of body bytes it actually sent.
"""

import configparser
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STATE = os.environ.get('SHELVE_ACCEL_STATE',
                       '/var/lib/nova-shelve-accel-cloud')


def _cloud_venv():
    """The cloud's virtualenv, as 'cloud.sh up' chose and wrote it down.

    SHELVE_ACCEL_VENV overrides it; a --nova release has a virtualenv of
    its own.
    """
    if 'SHELVE_ACCEL_VENV' in os.environ:
        return os.environ['SHELVE_ACCEL_VENV']
    try:
        with open(os.path.join(STATE, 'venv')) as f:
            return f.read().strip()
    except FileNotFoundError:
        return '/opt/nova-shelve-accel/venv'


VENV = _cloud_venv()
CLOUD_SH = os.path.join(REPO, 'tools', 'cloud', 'cloud.sh')
CLOUD = 'shelve-accel'
# The demo project's member, who is no admin (cloud.sh up).
DEMO_CLOUD = 'shelve-accel-demo'
# Keystone's token lifetime when no test changes it (cloud.sh up).
DEFAULT_TOKEN_LIFETIME = 3600
KEYSTONE_URL = 'http://127.0.0.1:5000/v3'
# What clouds.yaml asks for (cloud.sh up).
COMPUTE_API_VERSION = '2.95'
FLAVOR = 'm1.shelve'
BURST_FLAVOR = 'm1.burst'
GROUP_HOSTS = ('c1', 'c2')
OUTSIDE_HOST = 'c3'
STORAGE = {
    'c1': os.path.join(STATE, 'storage', 'g1'),
    'c2': os.path.join(STATE, 'storage', 'g1'),
    'c3': os.path.join(STATE, 'storage', 'c3'),
}
KEPT_DIR = os.path.join(STORAGE['c1'], '_shelve_kept')
GLANCE_ACCESS_LOG = os.path.join(STATE, 'logs', 'glance-access.log')
COMPUTES = GROUP_HOSTS + (OUTSIDE_HOST,)
# gunicorn access log: [time] "METHOD PATH PROTO" STATUS SENT_BYTES SECONDS
_ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d+) '
    r'(?P<sent>\d+|-)')
_IMAGE_DATA = re.compile(r'^/v2/images/(?P<image>[0-9a-f-]+)/file$')

POLL_SECONDS = 0.5


class CloudError(Exception):
    pass


def check_cloud_is_up():
    """Fail, with what to do, when there is no cloud to test against."""
    if not os.path.exists(os.path.join(STATE, 'mode')):
        raise CloudError(
            'No loopback cloud in %s. Start it as root with "%s up" (the '
            'end-to-end tests need it, and do not start it themselves).'
            % (STATE, CLOUD_SH))


def openstack(*args, parse=True, as_cloud=CLOUD, token=None):
    """The openstack client's command, as the admin or as as_cloud's user.

    token: what ``openstack token issue`` said of a token, to authenticate
    with that token instead (the cloud's options do not apply then).
    """
    cmd = [os.path.join(VENV, 'bin', 'openstack')]
    if token:
        cmd += ['--os-auth-type', 'v3token', '--os-auth-url', KEYSTONE_URL,
                '--os-token', token['id'], '--os-project-id',
                token['project_id'], '--os-region-name', 'RegionOne',
                '--os-compute-api-version', COMPUTE_API_VERSION]
    else:
        cmd += ['--os-cloud', as_cloud]
    cmd += list(args)
    if parse:
        cmd += ['-f', 'json']
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CloudError('%s failed (%d): %s' % (
            ' '.join(cmd), proc.returncode, proc.stderr.strip()))
    return json.loads(proc.stdout) if parse else proc.stdout


def placement(*args):
    """The openstack client's placement commands, as the cloud's admin."""
    return openstack(*args)


def set_mode(mode, upload_delay=0, debug=False):
    """Restart the scheduler and computes in mode (see cloud.sh mode).

    upload_delay: [shelve_accel] snapshot_upload_delay of 'fast-shelve'.
    debug: their debug logs on (the phase profile reads them).
    """
    if (current_mode(), current_upload_delay(), current_debug()) == (
            mode, upload_delay, debug):
        return
    env = dict(os.environ, SHELVE_ACCEL_UPLOAD_DELAY=str(upload_delay),
               SHELVE_ACCEL_DEBUG=str(int(debug)))
    subprocess.run(['bash', CLOUD_SH, 'mode', mode], check=True,
                   capture_output=True, env=env)


def current_mode():
    with open(os.path.join(STATE, 'mode')) as f:
        return f.read().strip()


def _mode_conf():
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(os.path.join(STATE, 'etc', 'nova', 'mode.conf'))
    return conf


def current_upload_delay():
    """The snapshot_upload_delay the computes were started with."""
    return _mode_conf().getint('shelve_accel', 'snapshot_upload_delay',
                               fallback=0)


def current_debug():
    """Whether the scheduler and computes write debug logs."""
    return _mode_conf().getboolean('DEFAULT', 'debug', fallback=False)


def delete_server_if_there(server_id):
    """Delete the server and wait until it is gone; fine if it is."""
    try:
        openstack('server', 'delete', '--wait', server_id, parse=False)
    except CloudError as e:
        if 'no server' not in str(e).lower():
            raise


def server(server_id):
    return openstack('server', 'show', server_id)


def wait_for_status(server_id, status, timeout=300):
    """The server once it is in ``status`` with no task; raises if not.

    SHELVED_OFFLOADED counts once the host is cleared as well: Nova's
    manager saves that state first, then updates the host's resource
    tracker and only then clears the host (``_shelve_offload_instance``),
    so a server read in between is offloaded but still names its host.
    """
    deadline = time.monotonic() + timeout
    while True:
        srv = server(server_id)
        offloading = status == 'SHELVED_OFFLOADED' and host_of(srv)
        if (srv['status'] == status and
                not srv.get('OS-EXT-STS:task_state') and not offloading):
            return srv
        if srv['status'] == 'ERROR':
            raise CloudError('server %s went to ERROR: %s' % (
                server_id, srv.get('fault')))
        if time.monotonic() > deadline:
            raise CloudError('server %s is %s (task %s), not %s after %ds' % (
                server_id, srv['status'], srv.get('OS-EXT-STS:task_state'),
                status, timeout))
        time.sleep(POLL_SECONDS)


def host_of(srv):
    return srv['OS-EXT-SRV-ATTR:host']


def disk_path(host, server_id):
    return os.path.join(STORAGE[host], server_id, 'disk')


def kept_disks(server_id):
    """The kept-disk directories of a server on g1's storage."""
    if not os.path.isdir(KEPT_DIR):
        return []
    return sorted(os.path.join(KEPT_DIR, name)
                  for name in os.listdir(KEPT_DIR)
                  if name.startswith(server_id + '.'))


def kept_record(kept_dir):
    """The kept.json record of a kept-disk directory, as a dict."""
    with open(os.path.join(kept_dir, 'kept.json')) as f:
        return json.load(f)


# -- compute services -----------------------------------------------------

def restart_compute(host, crash_at=None, fail_at=None, stop_at=None,
                    extra_conf=None):
    """Restart nova-compute on host, with fault injection when given.

    extra_conf: the path of one more nova.conf file for this start only.
    Returns (came back, cloud.sh's output): a cut point may kill the
    service while it starts.
    """
    wanted = {'NOVA_SHELVE_ACCEL_CRASH_AT': crash_at,
              'NOVA_SHELVE_ACCEL_FAIL_AT': fail_at,
              'NOVA_SHELVE_ACCEL_STOP_AT': stop_at,
              'SHELVE_ACCEL_EXTRA_CONF': extra_conf}
    env = {k: v for k, v in os.environ.items() if k not in wanted}
    env.update((k, v) for k, v in wanted.items() if v)
    proc = subprocess.run(['bash', CLOUD_SH, 'compute-restart', host],
                          env=env, capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


def compute_stopped(host):
    """Whether host's nova-compute is stopped (SIGSTOP, state T)."""
    try:
        with open('/proc/%d/stat' % compute_pid(host)) as f:
            stat = f.read()
    except (TypeError, OSError):
        return False
    # pid (comm) state ...: comm may hold spaces and parentheses.
    return stat[stat.rindex(')') + 2] == 'T'


def storage_kind():
    """What g1's shared storage is: 'local' or 'gluster' (cloud.sh up)."""
    try:
        with open(os.path.join(STATE, 'storage-kind')) as f:
            return f.read().strip()
    except FileNotFoundError:
        return 'local'


def kill_storage_client(host):
    """Kill host's GlusterFS client (cloud.sh storage-client-kill)."""
    _cloud_sh('storage-client-kill', host)


def remount_storage(host):
    """Give host a new GlusterFS client (cloud.sh storage-remount)."""
    _cloud_sh('storage-remount', host)


def _cloud_sh(*args):
    proc = subprocess.run(['bash', CLOUD_SH] + list(args),
                          capture_output=True, text=True)
    if proc.returncode:
        raise CloudError('cloud.sh %s failed: %s' % (
            ' '.join(args), (proc.stdout + proc.stderr).strip()))


def set_token_expiration(seconds):
    """Keystone's new tokens live seconds (cloud.sh token-expiration)."""
    _cloud_sh('token-expiration', str(seconds))


def compute_log(host):
    return os.path.join(STATE, 'logs', 'nova-compute-%s.log' % host)


def compute_log_end(host):
    """The size of host's nova-compute log: where to read new lines from."""
    return os.path.getsize(compute_log(host))


def compute_log_lines(host, text, offset=0):
    """Lines with text in the log of host's nova-compute, from offset."""
    with open(compute_log(host), 'rb') as f:
        f.seek(offset)
        return [line for line in f.read().decode(errors='replace')
                .splitlines() if text in line]


def compute_pid(host):
    """The pid cloud.sh recorded for host's nova-compute, or None."""
    pidfile = os.path.join(STATE, 'run', 'nova-compute-%s.pid' % host)
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def dump_compute_stacks(host, path):
    """Write the stacks of every thread of host's nova-compute to path.

    What a service that stopped working waits on, read from outside it by
    py-spy (installed in the cloud's virtualenv), C frames included when
    py-spy can unwind them. Returns None, or why there is no dump.
    """
    pid = compute_pid(host)
    if pid is None:
        return 'no nova-compute recorded for %s' % host
    py_spy = os.path.join(VENV, 'bin', 'py-spy')
    for native in (['--native'], []):
        try:
            proc = subprocess.run(
                [py_spy, 'dump', *native, '--pid', str(pid)],
                capture_output=True, text=True)
        except OSError as e:
            return 'cannot run %s: %s' % (py_spy, e.strerror)
        if proc.returncode == 0:
            break
    with open(path, 'w') as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode:
        return (proc.stderr.strip() or 'py-spy failed').splitlines()[0]
    return None


def host_command(host, command, *args, extra_conf=None):
    """Run a command of the plugin as on host: (exit code, stdout, stderr).

    With host's nova.conf files, as its nova-compute reads them, and
    extra_conf, text of one more nova.conf file read last.
    """
    etc = os.path.join(STATE, 'etc', 'nova')
    argv = [os.path.join(VENV, 'bin', command)]
    for name in ('nova.conf', '%s.conf' % host, 'mode.conf'):
        argv += ['--config-file', os.path.join(etc, name)]
    with tempfile.NamedTemporaryFile('w', suffix='.conf') as extra:
        if extra_conf:
            extra.write(extra_conf)
            extra.flush()
            argv += ['--config-file', extra.name]
        done = subprocess.run(argv + list(args), capture_output=True,
                              text=True)
    return done.returncode, done.stdout, done.stderr


def conversion_of(server_id):
    """The pid of a qemu-img converting one of the server's disks, or None.

    Only once it has that disk open (and so, without -U, locked).
    """
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
            if b'qemu-img' not in argv or b'convert' not in argv:
                continue
            disks = [arg.decode() for arg in argv
                     if server_id.encode() in arg]
            if not any(os.readlink('/proc/%s/fd/%s' % (pid, fd)) in disks
                       for fd in os.listdir('/proc/%s/fd' % pid)):
                continue
        except OSError:
            continue
        return int(pid)
    return None


def compute_alive(host):
    return subprocess.run(['bash', CLOUD_SH, 'compute-alive', host],
                          capture_output=True).returncode == 0


def set_compute_enabled(host, enabled):
    openstack('compute', 'service', 'set',
              '--enable' if enabled else '--disable', host, 'nova-compute',
              parse=False)


def libvirt_uri(host):
    """The libvirt URI host's nova-compute was configured with."""
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(os.path.join(STATE, 'etc', 'nova', '%s.conf' % host))
    return conf['libvirt']['connection_uri']


def virsh(host, *args):
    return subprocess.run(['virsh', '-c', libvirt_uri(host)] + list(args),
                          check=True, capture_output=True, text=True).stdout


def domain_states(server_id):
    """{host: state} of every libvirt domain of the server, on any host."""
    states = {}
    for host in COMPUTES:
        if server_id in virsh(host, 'list', '--all', '--uuid').split():
            states[host] = virsh(host, 'domstate', server_id).strip()
    return states


_OFFSET_UNITS = {'': 1, 's': 1, 'm': 60, 'h': 3600, 'd': 86400}


def clock_offset(host):
    """Seconds the clock of host is off the machine's (cloud.sh --skew)."""
    path = os.path.join(STATE, 'skew-%s' % host)
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    match = re.fullmatch(r'([+-]\d+)([smhd]?)', text)
    if not match:
        raise CloudError('%s: %r is not a clock offset such as +10m'
                         % (path, text))
    return int(match.group(1)) * _OFFSET_UNITS[match.group(2)]


def image_cache_pass_starts():
    """{host: time its last image cache pass started}, on this machine's clock.

    Nova's pass first registers the host in the storage's compute_nodes
    file, with the time; debug logging is off, so the file is the sign.
    A host records its own clock's time: one whose clock is off (cloud.sh
    up --skew) is brought back to this machine's, or a host behind would
    never seem to pass and one ahead would seem to have passed already.
    """
    starts = {}
    for path in sorted(set(STORAGE.values())):
        try:
            with open(os.path.join(path, 'compute_nodes')) as f:
                starts.update(json.load(f))
        except (FileNotFoundError, ValueError):
            pass
    return {host: started - clock_offset(host)
            for host, started in starts.items()}


# -- disks ---------------------------------------------------------------

MARKER_OFFSET = 8 * 1024 * 1024


def make_image_file(path, size_mb=64, data_mb=16):
    """A qcow2 image with data_mb of random data in it, made with qemu-img.

    The data makes every copy of the disk (snapshot, download) cost
    something that Glance's access log shows.
    """
    raw = path + '.raw'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', raw,
                    '%dM' % size_mb], check=True)
    with open(raw, 'r+b') as f:
        f.write(b'nova-shelve-accel e2e image\n')
        f.write(os.urandom(data_mb * 1024 * 1024))
    subprocess.run(['qemu-img', 'convert', '-q', '-O', 'qcow2', raw, path],
                   check=True)
    os.unlink(raw)


def _write_from_file(disk, source, extents):
    """Write source's bytes at each (offset, length) of a qcow2 disk."""
    commands = []
    for offset, length in extents:
        commands += ['-c', 'write -q -s %s %d %d' % (source, offset, length)]
    subprocess.run(['qemu-io', '-f', 'qcow2'] + commands + [disk],
                   check=True, capture_output=True)


def write_marker(disk, marker, workdir):
    """Write marker into a stopped guest's disk, as the guest would."""
    source = os.path.join(workdir, 'marker')
    with open(source, 'wb') as f:
        f.write(marker.ljust(512, b'\0'))
    _write_from_file(disk, source, [(MARKER_OFFSET, 512)])


DATA_CHUNK = 64 * 1024 * 1024


def write_data(disk, size, workdir):
    """Fill size bytes of a stopped guest's disk with random data.

    The data starts past the marker; one random 64 MiB chunk is written
    again and again, which costs the same as new data to every copy the
    cloud makes (nothing here compresses or deduplicates).
    """
    source = os.path.join(workdir, 'data-chunk')
    if not os.path.exists(source):
        with open(source, 'wb') as f:
            f.write(os.urandom(DATA_CHUNK))
    start = 2 * MARKER_OFFSET
    _write_from_file(disk, source, [
        (start + offset, min(DATA_CHUNK, size - offset))
        for offset in range(0, size, DATA_CHUNK)])


def convert_to_qcow2(disk, dest):
    """Flatten a qcow2 disk into dest as Nova's cold snapshot does."""
    subprocess.run(['qemu-img', 'convert', '-q', '-f', 'qcow2', '-O',
                    'qcow2', disk, dest], check=True)


def file_digests(path):
    """(size, md5, sha512) of a file: what Glance records of image data."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha512 = hashlib.sha512()
    size = 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b''):
            md5.update(chunk)
            sha512.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha512.hexdigest()


def read_marker(disk, length):
    """Read the marker back, through any backing file, guest running."""
    out = subprocess.run(
        ['qemu-io', '-r', '-U', '-f', 'qcow2', '-c',
         'read -v %d %d' % (MARKER_OFFSET, length), disk],
        check=True, capture_output=True, text=True).stdout
    data = bytearray()
    for line in out.splitlines():
        # "00800000:  4d 41 52 ...  MAR..."
        m = re.match(r'^[0-9a-f]+:\s+((?:[0-9a-f]{2} )+)', line)
        if m:
            data += bytes(int(b, 16) for b in m.group(1).split())
    return bytes(data[:length])


# -- Glance ---------------------------------------------------------------

class GlanceDataCounter(object):
    """Image data Glance sends from now on, read from its access log."""

    def __init__(self):
        self.offset = os.path.getsize(GLANCE_ACCESS_LOG)

    def _data_requests(self, method):
        """[(image_id, status, bytes sent)] of method on image data."""
        with open(GLANCE_ACCESS_LOG) as f:
            f.seek(self.offset)
            lines = f.readlines()
        found = []
        for line in lines:
            m = _ACCESS_LINE.search(line)
            if not m or m.group('method') != method:
                continue
            image = _IMAGE_DATA.match(m.group('path'))
            if image:
                sent = m.group('sent')
                found.append((image.group('image'), int(m.group('status')),
                              0 if sent == '-' else int(sent)))
        return found

    def downloads(self):
        """[(image_id, bytes sent)] for every image data request."""
        return [(image, sent)
                for image, _status, sent in self._data_requests('GET')]

    def uploads(self):
        """[(image_id, status)] for every upload of image data."""
        return [(image, status)
                for image, status, _sent in self._data_requests('PUT')]

    def bytes_sent(self, image_id=None):
        return sum(sent for image, sent in self.downloads()
                   if image_id in (None, image))


def upload_test_image(workdir, prefix, as_cloud=CLOUD):
    """Make a qcow2 image with make_image_file, upload it; its id."""
    image_file = os.path.join(workdir, 'image.qcow2')
    make_image_file(image_file)
    try:
        return openstack(
            'image', 'create', '--disk-format', 'qcow2',
            '--container-format', 'bare', '--file', image_file,
            '%s-%s' % (prefix, uuid.uuid4().hex[:8]),
            as_cloud=as_cloud)['id']
    finally:
        os.unlink(image_file)


def image(image_id):
    return openstack('image', 'show', image_id)


def wait_for_image_status(image_id, status, timeout=300):
    """The image once it has status; CloudError if it goes elsewhere."""
    deadline = time.monotonic() + timeout
    while True:
        found = image(image_id)
        if found['status'] == status:
            return found
        if found['status'] in ('killed', 'deleted', 'deactivated'):
            raise CloudError('image %s went %s' % (image_id, found['status']))
        if time.monotonic() > deadline:
            raise CloudError('image %s is %s, not %s after %ds' % (
                image_id, found['status'], status, timeout))
        time.sleep(POLL_SECONDS)


def shelved_snapshot(server_name):
    """(id, size) of the snapshot Nova uploaded when shelving the server."""
    images = openstack('image', 'list', '--name', server_name + '-shelved')
    if len(images) != 1:
        raise CloudError('expected one snapshot %s-shelved, found %s' % (
            server_name, images))
    image = openstack('image', 'show', images[0]['ID'])
    return image['id'], image['size']
