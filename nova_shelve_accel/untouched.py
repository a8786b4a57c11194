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

"""How long names on the shared storage have gone untouched, by this host.

Whether another host still works on something (an upload lease, a staging
or trash directory, a conversion's scratch) is judged by how long it has
gone unchanged. A timestamp cannot tell: a network filesystem may stamp a
file with the clock of the client that wrote it (GlusterFS does), so the
difference between that stamp and this host's clock is the skew between
the two hosts as much as an age, and a host whose clock is hours ahead
would take over live work. What no skew changes is *whether* a name
changed: a live holder touches or writes what it owns, and every touch
gives the name other times, whatever its clock says. So each host watches
the names it judges (inode, size, times) and counts, on its own monotonic
clock, how long they stayed the same.

The price is memory: a host that restarts counts from zero, and resolves
another host's abandoned work a full period after it starts watching it,
never sooner. Its own work it resolves at start-up, as before.
"""

import os
import threading
import time

# This host's clock for ages: monotonic, so that setting the wall clock
# (by NTP or by hand) ages nothing. Tests replace it.
clock = time.monotonic


def signature(st):
    """What a touch, a write or a replacement of a name changes."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def tree_signature(path):
    """``signature`` of ``path`` and of each entry right inside it.

    For a directory whose owner writes into the files it holds (a
    conversion's output) rather than into the directory itself.
    """
    entries = []
    with os.scandir(path) as scan:
        for entry in scan:
            try:
                entries.append((entry.name, signature(
                    entry.stat(follow_symlinks=False))))
            except FileNotFoundError:
                continue
    return (signature(os.lstat(path)), tuple(sorted(entries)))


class Watch:
    """Seconds each watched name has stayed the same, as this host saw it.

    A name is first seen with age 0; its age grows while every look finds
    the same signature and drops to 0 when one finds another. Names not
    looked at for ``forget_after`` seconds are forgotten: they are gone, or
    nobody judges them any more.
    """

    def __init__(self, forget_after):
        self._forget_after = forget_after
        self._lock = threading.Lock()
        # name -> (signature, when first seen with it, when last looked at)
        self._seen = {}

    def age(self, name, sig):
        """Seconds ``name`` has had signature ``sig`` while watched."""
        now = clock()
        with self._lock:
            self._forget_unseen(now)
            seen = self._seen.get(name)
            since = seen[1] if seen and seen[0] == sig else now
            self._seen[name] = (sig, since, now)
        return now - since

    def _forget_unseen(self, now):
        stale = [name for name, (_sig, _since, looked) in self._seen.items()
                 if now - looked > self._forget_after]
        for name in stale:
            del self._seen[name]
