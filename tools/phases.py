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

"""Where the time of one unshelve goes, read from the cloud's own logs.

The loopback cloud's services log with millisecond timestamps; with
``debug = True`` (``cloud.sh mode``, SHELVE_ACCEL_DEBUG=1) the scheduler
and the computes log the steps below. Each phase runs from one marker to
the next, so the phases add up to the time the client measured:

=================  =========================================================
api                the request until nova-api answers it
conductor          nova-api's answer until the scheduler starts (the
                   conductor reads the snapshot from Glance, the request
                   spec, casts)
scheduler          the scheduler's start until the compute starts (Placement
                   candidates, filters and weighers, the Placement claim, the
                   cast to the compute); ``filter_ms`` and ``claim_ms`` are
                   our filter's and the allocation's shares
compute claim      "Unshelving" until the resource claim succeeded
resources+network  the resource tracker's update of Placement, then the
                   network setup, until the network info is cached
root disk          the spawn until libvirt's domain XML is started: the
                   kept disk's claim (verify, rename, verify) or the
                   snapshot's download, conversion and resize
guest start        domain XML, define and QEMU start ("Guest created")
until running      until the driver saw the guest running
finish             the snapshot's deletion in Glance (``delete_s``), the
                   instance's save, until the client saw ACTIVE (it polls
                   every 0.2 s)
=================  =========================================================

Within root disk, when the unshelve downloads the snapshot (stock Nova, or
the plugin's fallback): ``download_s``, Glance's time sending the
snapshot's data (its access log), and ``convert_s`` and ``rebase_s``, the
time of the ``qemu-img convert`` (the snapshot made raw in the image
cache, ``[DEFAULT] force_raw_images``) and ``qemu-img rebase`` (the disk
moved from the snapshot back onto the original image's base) commands
the compute ran (processutils' debug lines).

Across the phases, ``tokens_s``: Keystone's time validating the tokens
that a service had not cached (its access log), which the services wait
for within their phases.
"""

import datetime
import os
import re

STATE = os.environ.get('SHELVE_ACCEL_STATE',
                       '/var/lib/nova-shelve-accel-cloud')
LOGS = os.path.join(STATE, 'logs')

PHASES = ('api', 'conductor', 'scheduler', 'compute claim',
          'resources+network', 'root disk', 'guest start', 'until running',
          'finish')
# The shelve, the same way: the request until nova-api answers; until the
# compute starts; the guest's power-off; the snapshot (taken and uploaded,
# or skipped with snapshot_upload = after_offload); the offload (guest
# undefined, disk kept or deleted, allocations removed); until the client
# saw SHELVED_OFFLOADED.
SHELVE_PHASES = ('api', 'to compute', 'power off', 'snapshot', 'offload',
                 'until seen')
# Within api, ``image_s``: Glance's time creating the snapshot's image
# record, which nova-api asks for before it answers; across the phases,
# ``tokens_s`` as for the unshelve. Nova's own snapshot,
# split: its extraction (qemu-img convert of the root
# disk into snapshots_directory) and its upload to Glance; the rest of the
# snapshot phase is Nova's and the driver's bookkeeping. Absent when the
# shelve skipped the snapshot (after_offload).
SNAPSHOT_STEPS = ('extract', 'upload')

_STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\d+) ')
_ACCESS = re.compile(r'^\[([^\]]+)\] "(\S+) (\S+) [^"]*" (\d+) \S+ ([\d.]+)$')
_FILTER = re.compile(r'Filter (\w+) returned \d+ host')
_QEMU_IMG = re.compile(r'CMD "(?:[^"]*\s)?qemu-img (\w+) [^"]*" returned: '
                       r'-?\d+ in ([\d.]+)s')


class MissingMarker(Exception):
    pass


def _lines(name, since, until):
    """(wall clock seconds, pid, text) of a service log's lines in range."""
    found = []
    with open(os.path.join(LOGS, name), errors='replace') as f:
        for line in f:
            match = _STAMP.match(line)
            if not match:
                continue
            stamp = datetime.datetime.strptime(
                match.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp()
            if since <= stamp <= until:
                found.append((stamp, match.group(2), line))
    return found


def _first(lines, *needles, after=0.0):
    """(time, pid) of the first line holding every needle, from after on."""
    for stamp, pid, text in lines:
        if stamp >= after and all(n in text for n in needles):
            return stamp, pid
    raise MissingMarker('no log line with %s in %s' % (
        ' and '.join(repr(n) for n in needles), LOGS))


def _access_seconds(name, method, path, since=None, until=None):
    """Duration of the last request to path in a gunicorn access log.

    With since and until, of the last one logged between them (the log's
    timestamps have whole seconds).
    """
    found = _access_durations(name, method, path, since, until)
    return found[-1] if found else None


def _access_durations(name, method, path, since, until):
    """Durations of the requests to path, of those logged in range if any."""
    durations = []
    with open(os.path.join(LOGS, name), errors='replace') as f:
        for line in f:
            match = _ACCESS.match(line.strip())
            if not match or match.group(2) != method or \
                    match.group(3).split('?')[0] != path:
                continue
            if since is not None:
                stamp = datetime.datetime.strptime(
                    match.group(1), '%d/%b/%Y:%H:%M:%S %z').timestamp()
                if not since <= stamp <= until:
                    continue
            durations.append(float(match.group(5)))
    return durations


def _token_seconds(started, ended):
    """Keystone's time validating tokens during an operation.

    Each service's keystonemiddleware asks Keystone to validate a token it
    has not cached (each worker caches for token_cache_time): nova-api the
    user's, Glance and Placement the tokens nova-api, the conductor and the
    compute send. The services wait for the answer, within their phases.
    """
    return round(sum(_access_durations(
        'keystone-access.log', 'GET', '/v3/auth/tokens', int(started),
        ended)), 3)


def _filter_ms(lines, pid, our_filter):
    """Our filter's time: from the line of the filter before it to its own.

    The filter handler logs one line as each filter returns, so the
    difference is the filter's own work (millisecond resolution).
    """
    previous = None
    for stamp, line_pid, text in lines:
        match = _FILTER.search(text)
        if line_pid != pid or not match and 'Starting with' not in text:
            continue
        if match and match.group(1) == our_filter and previous:
            return round((stamp - previous) * 1000, 1)
        previous = stamp
    return None


def unshelve_phases(instance, snapshot, host, started, ended):
    """The phases of one unshelve, in seconds (see the module docstring).

    started and ended are the client's wall-clock times of the request and
    of the poll that saw the server ACTIVE.
    """
    since, until = started - 1, ended + 1
    api = _lines('nova-api.log', since, until)
    scheduler = _lines('nova-scheduler.log', since, until)
    compute = _lines('nova-compute-%s.log' % host, since, until)
    tag = '[instance: %s]' % instance

    # Each marker is looked for after the one before: the same line may
    # also come from other steps (the network cache from the shelve).
    answered, _ = _first(api, '"POST /v2.1/servers/%s/action"' % instance,
                         after=started)
    scheduling, pid = _first(scheduler, 'Starting to schedule for '
                             "instances: ['%s']" % instance, after=started)
    # nova-api logs the request once it has answered: the cast it made
    # may be under way already.
    answered = min(answered, scheduling)
    unshelving, _ = _first(compute, tag, '] Unshelving', after=scheduling)
    claimed, _ = _first(compute, tag, 'Claim successful', after=unshelving)
    networked, _ = _first(compute, tag, 'Updating instance_info_cache',
                          after=claimed)
    xml, _ = _first(compute, tag, 'Start _get_guest_xml', after=networked)
    created, _ = _first(compute, tag, 'Guest created on hypervisor',
                        after=xml)
    running, _ = _first(compute, tag, 'Instance spawned successfully',
                        after=created)
    phases = _between(PHASES, (started, answered, scheduling, unshelving,
                               claimed, networked, xml, created, running,
                               ended))
    phases['tokens_s'] = _token_seconds(started, ended)
    phases['filter_ms'] = _filter_ms(
        [line for line in scheduler if line[0] >= scheduling], pid,
        'HostAggregateGroupFilter')
    claim = _access_seconds('placement-access.log', 'PUT',
                            '/allocations/%s' % instance)
    phases['claim_ms'] = claim and round(claim * 1000, 1)
    phases['delete_s'] = _access_seconds('glance-access.log', 'DELETE',
                                         '/v2/images/%s' % snapshot)
    phases['download_s'] = _access_seconds(
        'glance-access.log', 'GET', '/v2/images/%s/file' % snapshot)
    root_disk = [line for line in compute if networked <= line[0] <= xml]
    for verb in ('convert', 'rebase'):
        phases[verb + '_s'] = _qemu_img_seconds(root_disk, verb)
    return phases


def _qemu_img_seconds(lines, verb):
    """Seconds the ``qemu-img VERB`` commands of these lines took, or None."""
    seconds = [float(match.group(2)) for match in (
        _QEMU_IMG.search(text) for _stamp, _pid, text in lines)
        if match and match.group(1) == verb]
    return round(sum(seconds), 3) if seconds else None


def shelve_phases(instance, host, started, ended):
    """The phases of one shelve (SHELVE_PHASES), in seconds."""
    since, until = started - 1, ended + 1
    api = _lines('nova-api.log', since, until)
    compute = _lines('nova-compute-%s.log' % host, since, until)
    tag = '[instance: %s]' % instance

    # The request before (start, in the benchmark) may be a second old.
    answered, _ = _first(api, '"POST /v2.1/servers/%s/action"' % instance,
                         after=started)
    shelving, _ = _first(compute, tag, '] Shelving', after=started)
    answered = min(answered, shelving)
    off, _ = _first(compute, tag, 'Instance destroyed successfully',
                    after=shelving)
    offloading, _ = _first(compute, tag, 'Shelve offloading', after=off)
    released, _ = _first(compute, 'Deleted allocations for instance %s'
                         % instance, after=offloading)
    found = _between(SHELVE_PHASES, (started, answered, shelving, off,
                                     offloading, released, ended))
    # Within api: Glance creating the snapshot's image record.
    found['image_s'] = _access_seconds('glance-access.log', 'POST',
                                       '/v2/images', int(started),
                                       answered + 1)
    found['tokens_s'] = _token_seconds(started, ended)
    snapshot = [line for line in compute if off <= line[0] <= offloading]
    try:
        begun, _ = _first(snapshot, tag, 'snapshot process')
    except MissingMarker:
        return found
    extracted, _ = _first(snapshot, tag, 'Snapshot extracted')
    uploaded, _ = _first(snapshot, tag, 'Snapshot image upload complete')
    found.update(_between(SNAPSHOT_STEPS, (begun, extracted, uploaded)))
    return found


def _between(names, marks):
    """{name: seconds from its mark to the next one}."""
    return {name: round(end - start, 3)
            for name, start, end in zip(names, marks, marks[1:])}
