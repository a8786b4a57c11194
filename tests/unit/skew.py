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

"""Two hosts whose clocks disagree, working on one kept-disk storage.

A *holder* process keeps work alive for a while (it renews an upload lease,
or moves files into a staging directory), then dies with the work left in
place. A *watcher* process, another host, looks at that work all along:
it must not take the live lease over nor find the live staging abandoned,
and must do so once the holder is dead. One of the two runs with its clock
shifted by libfaketime: its time calls return the shifted time, and so do
the timestamps it sets, as a host with a wrong clock stamps files on a
network filesystem that takes the client's time (GlusterFS; give the
skewed process a mount of its own whose client runs under the same skew
and the filesystem's own stamps are shifted too).

The lifetimes are cut to seconds (a lease of LEASE_SECONDS, work stale
after STALE_SECONDS) so that a scenario takes a few seconds, and a skew of
hours dwarfs them.

Run a role by hand with ``python -m tests.unit.skew ROLE KIND DIR HOST
SECONDS`` (how ``run`` starts them).
"""

import glob
import json
import os
import subprocess
import sys
import time

from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import safe_files
from nova_shelve_accel import storage
from nova_shelve_accel import upload_lease
from tests.unit import races

LEASE_SECONDS = 2
STALE_SECONDS = 2
# How long the holder keeps its work alive, and how often each side acts.
LIVE_SECONDS = 5
HOLDER_BEAT = 0.3
WATCHER_LOOK = 0.2
# Once the holder is dead, the watcher must resolve its work within the
# lifetime and this margin (slow looks, a loaded machine).
MARGIN_SECONDS = 4
KINDS = ('lease', 'staging')
SKEWS = ('+10m', '-10m', '+2h', '-2h')


def libfaketime():
    """The path of libfaketime (Debian's package faketime), or None."""
    found = sorted(glob.glob('/usr/lib/*/faketime/libfaketime.so.1'))
    return found[0] if found else None


def _shortened():
    upload_lease.UPLOAD_LEASE_SECONDS = LEASE_SECONDS
    storage.STALE_SECONDS = STALE_SECONDS


def _store(instances_path, host):
    return storage.KeptDiskStore(instances_path, races.SUBDIR, '_base', host)


def _kept_dir(instances_path):
    [name] = [n for n in os.listdir(os.path.join(instances_path,
                                                 races.SUBDIR))
              if storage._KEPT_NAME.match(n)]
    return os.path.join(instances_path, races.SUBDIR, name)


def hold(kind, instances_path, host, seconds):
    """Keep ``kind`` work alive for ``seconds``, then die leaving it.

    Says when it found its work taken, if it did.
    """
    store = _store(instances_path, host)
    kept_dir = _kept_dir(instances_path)
    if kind == 'lease':
        token = store.leases.take(kept_dir)
        assert token, 'no lease to hold in %s' % kept_dir

        def beat(n):
            store.leases.renew(kept_dir, token)
    else:
        instance, snapshot = os.path.basename(kept_dir).split('.')
        staging = store._in_flight_path(storage.STAGING, instance, snapshot)
        os.mkdir(staging)

        def beat(n):
            with open(os.path.join(staging, 'part-%d' % n), 'w'):
                pass
    print('ready', flush=True)
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        try:
            beat(n)
        except (accel_exc.LeaseLost, FileNotFoundError):
            print(json.dumps({'beats': n,
                              'lost_after': time.monotonic() - start}))
            return
        n += 1
        time.sleep(HOLDER_BEAT)
    print(json.dumps({'beats': n, 'lost_after': None}))


def watch(kind, instances_path, host, seconds):
    """Look at the holder's work for ``seconds``, and take it once it may.

    A lease is taken over; a staging directory found abandoned is removed
    (a real host would finish or undo it): either way its holder, if it
    still lives, finds out.
    """
    store = _store(instances_path, host)
    kept_dir = _kept_dir(instances_path)
    start = time.monotonic()
    taken = None
    while time.monotonic() - start < seconds and taken is None:
        if kind == 'lease':
            if store.leases.take(kept_dir):
                taken = time.monotonic() - start
        else:
            _kept, _damaged, in_flight = store.inventory()
            for item in store.abandoned(in_flight, at_start=False):
                safe_files.remove_tree(item.path)
                taken = time.monotonic() - start
        time.sleep(WATCHER_LOOK)
    print(json.dumps({'taken_after': taken}))


def _environment(skew):
    # Plain threads: these processes only touch files.
    env = dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING='True')
    if skew:
        # Every clock is shifted by the same offset: durations stay true.
        env.update(LD_PRELOAD=libfaketime(), FAKETIME=skew)
    return env


def _start(role, kind, instances_path, host, seconds, skew):
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    return subprocess.Popen(
        [sys.executable, '-m', 'tests.unit.skew', role, kind,
         instances_path, host, str(seconds)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, env=_environment(skew))


def run(kind, skewed, skew, instances_path, skewed_path=None):
    """One scenario; returns (verdict, details).

    ``skewed`` is 'holder' or 'watcher': which side's clock is off by
    ``skew`` (a libfaketime offset such as '+2h'). ``skewed_path`` is the
    same storage as ``instances_path`` through the skewed host's own
    client of a network filesystem; by default both use
    ``instances_path``. The verdict is 'ok', 'taken live' (the watcher
    took the work while its holder kept it alive), 'never taken' (not
    within the lifetime and MARGIN_SECONDS after the holder died) or
    'failed' (a process broke).
    """
    races.lay_out_kept_disk(instances_path)
    paths = {'holder': instances_path, 'watcher': instances_path}
    if skewed_path:
        paths[skewed] = os.path.join(skewed_path,
                                     os.path.basename(instances_path))
    lifetime = LEASE_SECONDS if kind == 'lease' else STALE_SECONDS
    skews = {skewed: skew}
    holder = _start('hold', kind, paths['holder'], 'holder-host',
                    LIVE_SECONDS, skews.get('holder'))
    # The watcher starts once the holder has its lease or its directory.
    if holder.stdout.readline().strip() != 'ready':
        holder.kill()
        return 'failed', 'holder: %s' % holder.stderr.read().strip()[-300:]
    watcher = _start('watch', kind, paths['watcher'], 'watcher-host',
                     LIVE_SECONDS + lifetime + MARGIN_SECONDS,
                     skews.get('watcher'))
    outputs = {}
    for role, process in (('holder', holder), ('watcher', watcher)):
        out, err = process.communicate(timeout=120)
        if process.returncode:
            return 'failed', '%s exited %d: %s' % (
                role, process.returncode, err.strip()[-300:])
        outputs[role] = json.loads(out.strip().splitlines()[-1])
    lost = outputs['holder']['lost_after']
    taken = outputs['watcher']['taken_after']
    if lost is not None:
        return 'taken live', 'its holder lost it %.1f s into its %d s ' \
            'of life' % (lost, LIVE_SECONDS)
    if taken is None:
        return 'never taken', 'not taken within %d s of its holder\'s ' \
            'death' % (lifetime + MARGIN_SECONDS)
    return 'ok', 'taken %.1f s after the watcher started' % taken


if __name__ == '__main__':
    role, kind, path, host, seconds = sys.argv[1:]
    _shortened()
    {'hold': hold, 'watch': watch}[role](kind, path, host, float(seconds))
