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

"""What the loopback cloud's machine is doing, read from /proc.

For the benchmarks: the page cache still to be written back (a timed
operation that starts while gigabytes are dirty pays for someone else's
writes), the share of time the CPUs waited for I/O, and the CPU each
service of the cloud used. A service is the session its process was
started in by tools/cloud/cloud.sh (one pid file per service); QEMU
processes, which libvirtd starts in sessions of their own, count as
``qemu``; the GlusterFS server and clients of ``g1``'s volume as
``gluster``.
"""

import glob
import os
import re
import signal
import subprocess
import threading
import time

STATE = os.environ.get('SHELVE_ACCEL_STATE',
                       '/var/lib/nova-shelve-accel-cloud')
TICKS = os.sysconf('SC_CLK_TCK')
# nova-compute-c1, libvirtd-c2: one service per kind, not per host.
_HOST_SUFFIX = re.compile(r'-c\d+$')
MIB = 1024 * 1024


def _meminfo_kib():
    """{field: KiB} of /proc/meminfo."""
    fields = {}
    with open('/proc/meminfo') as f:
        for line in f:
            name, value = line.split(':', 1)
            fields[name] = int(value.split()[0])
    return fields


def dirty_mib():
    """Page cache waiting for, or under, write-back (MiB)."""
    fields = _meminfo_kib()
    return (fields['Dirty'] + fields['Writeback']) / 1024.0


def free_mib():
    """Memory the kernel can hand out without reclaiming any (MiB)."""
    return _meminfo_kib()['MemFree'] / 1024.0


def reclaimed_mib():
    """Page cache the kernel has reclaimed since boot (MiB).

    By kswapd and by processes that had to free pages before allocating
    (direct reclaim, paid inside their system calls and page faults).
    """
    pages = 0
    with open('/proc/vmstat') as f:
        for line in f:
            name, value = line.split()
            if name in ('pgsteal_kswapd', 'pgsteal_direct'):
                pages += int(value)
    return pages * os.sysconf('SC_PAGE_SIZE') / MIB


def _cpu_times():
    """(iowait, total) jiffies of all CPUs."""
    with open('/proc/stat') as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[4], sum(values)


def _service_sessions():
    """{session id: service name} from the cloud's pid files."""
    sessions = {}
    for path in glob.glob(os.path.join(STATE, 'run', '*.pid')):
        try:
            with open(path) as f:
                sessions[int(f.read().strip())] = os.path.basename(path)[:-4]
        except (OSError, ValueError):
            continue
    return sessions


def _process_cpu(reaped=False):
    """{pid: (session id, command, CPU jiffies)} of every process.

    With reaped, a process's jiffies include those of the children it has
    waited for: the qemu-img commands nova-compute runs end between two
    samples, and their time would otherwise be lost to a difference taken
    over a whole operation.
    """
    found = {}
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        # The command is in parentheses and may itself hold spaces.
        command = text[text.index('(') + 1:text.rindex(')')]
        fields = text[text.rindex(')') + 2:].split()
        jiffies = int(fields[11]) + int(fields[12])
        if reaped:
            jiffies += int(fields[13]) + int(fields[14])
        found[int(stat.split('/')[2])] = (int(fields[3]), command, jiffies)
    return found


def service_cpu_seconds(reaped=False):
    """CPU seconds used so far by each service's living processes.

    The compute hosts' nova-compute and libvirtd count as one service each.
    With reaped, the children each process has waited for count too.
    """
    sessions = _service_sessions()
    used = {}
    for session, command, jiffies in _process_cpu(reaped).values():
        if session in sessions:
            name = _HOST_SUFFIX.sub('', sessions[session])
        elif command.startswith('qemu-system'):
            name = 'qemu'
        elif command.startswith('gluster'):
            # g1's volume: glusterd, the brick's glusterfsd and each
            # host's client, started outside the services' sessions.
            name = 'gluster'
        else:
            continue
        used[name] = used.get(name, 0.0) + jiffies / TICKS
    return used


class Recorder(object):
    """Samples the machine in a thread while a timed operation runs.

    ``summary()`` gives the dirty page cache at the start and its peak,
    the free memory at the start and the page cache reclaimed meanwhile,
    the I/O wait share over the whole period, and each service's CPU: its
    mean (cores) and its peak over one sampling interval, and the CPU
    seconds it used over the whole period, its finished commands included.
    """

    def __init__(self, interval=0.5):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples = []

    def __enter__(self):
        self.dirty_at_start = dirty_mib()
        self.free_at_start = free_mib()
        self._reclaimed_start = reclaimed_mib()
        self._io_start = _cpu_times()
        self._cpu_start = service_cpu_seconds(reaped=True)
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self._started
        self.reclaimed = reclaimed_mib() - self._reclaimed_start
        used = service_cpu_seconds(reaped=True)
        self.cpu_seconds = {
            name: round(max(0.0, used[name] - self._cpu_start.get(name, 0.0)),
                        2)
            for name in used}
        iowait, total = _cpu_times()
        spent = total - self._io_start[1]
        self.iowait_share = ((iowait - self._io_start[0]) / spent
                             if spent else 0.0)

    def _run(self):
        last, last_at = service_cpu_seconds(), time.monotonic()
        while not self._stop.wait(self.interval):
            now, now_at = service_cpu_seconds(), time.monotonic()
            span = now_at - last_at
            self.samples.append({
                't': now_at - self._started, 'dirty_mib': dirty_mib(),
                'cores': {name: max(0.0, (now[name] - last.get(name, 0.0))
                                    / span) for name in now}})
            last, last_at = now, now_at

    def summary(self):
        services = sorted({name for s in self.samples for name in s['cores']})
        count = len(self.samples) or 1
        return {
            'dirty_start_mib': round(self.dirty_at_start),
            'free_start_mib': round(self.free_at_start),
            'reclaimed_mib': round(self.reclaimed),
            'dirty_peak_mib': round(max([self.dirty_at_start] + [
                s['dirty_mib'] for s in self.samples])),
            'iowait_pct': round(100 * self.iowait_share, 1),
            'mean_cores': {n: round(sum(s['cores'].get(n, 0.0)
                                        for s in self.samples) / count, 2)
                           for n in services},
            'peak_cores': {n: round(max(s['cores'].get(n, 0.0)
                                        for s in self.samples), 2)
                           for n in services},
            'cpu_seconds': dict(self.cpu_seconds),
        }


class Profile(object):
    """py-spy samples one process's Python threads while an operation runs.

    Non-blocking (the process is never paused) and at a low rate, so that
    profiling costs every mode of a benchmark alike and little. Idle
    threads are not sampled: a sample is a thread on the CPU or in a
    system call. The raw stacks go to ``path`` (py-spy's collapsed
    format, one ``frame;frame;... count`` line per stack).
    """

    RATE = 25

    def __init__(self, py_spy, pid, path):
        self.command = [py_spy, 'record', '--nonblocking', '--threads',
                        '--full-filenames',
                        '--rate', str(self.RATE), '--format', 'raw',
                        '--pid', str(pid), '--output', path]
        self.path = path
        self._proc = None

    def __enter__(self):
        self._proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        # py-spy writes its output when interrupted.
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def profile_seconds(path, mine, others):
    """(sampled seconds, those spent in code whose file path holds mine).

    Read from a Profile's raw output; seconds are samples over its rate. A
    sample belongs to the innermost frame of mine or of others on its
    stack: Nova's snapshot called through the plugin's override is Nova's
    time, the plugin's own check that calls os.stat is the plugin's.
    """
    total = owned = 0
    try:
        stacks = _raw_stacks(path)
    except FileNotFoundError:
        return 0.0, 0.0
    for frames, count in stacks:
        total += count
        for frame in reversed(frames):
            if mine in frame:
                owned += count
                break
            if any(other in frame for other in others):
                break
    return total / Profile.RATE, owned / Profile.RATE


def top_frames(path, count=10):
    """The innermost frames seen most often: [(frame, seconds)]."""
    leaves = {}
    for frames, samples in _raw_stacks(path):
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + samples
    return [(leaf, n / Profile.RATE) for leaf, n in
            sorted(leaves.items(), key=lambda item: -item[1])[:count]]


def _raw_stacks(path):
    """[(frames, outermost first; samples)] of a Profile's raw output."""
    stacks = []
    with open(path) as f:
        for line in f:
            stack, _, count = line.strip().rpartition(' ')
            if count.isdigit():
                stacks.append((stack.split(';'), int(count)))
    return stacks
