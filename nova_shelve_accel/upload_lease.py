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

"""The lease on uploading a kept disk into its snapshot image.

With ``snapshot_upload = after_offload`` a kept disk waits on the shared
storage for its upload, and any host of the storage may do it: the one that
kept it, or another one after a restart or a crash. The lease says which:
its holder touches it while it uploads, and a lease this host has seen
untouched for UPLOAD_LEASE_SECONDS belongs to a dead host and may be taken
over. Its age is how long this host has watched it unchanged
(``untouched``), never a timestamp another host's clock wrote.
"""

import os
import re
import uuid

from oslo_log import log as logging

from nova_shelve_accel import exception as accel_exc
from nova_shelve_accel import safe_files

LOG = logging.getLogger(__name__)

# Held, in the kept-disk directory, by the host uploading the kept disk into
# its queued snapshot image; it moves away with the disk when it is claimed.
# The lease files are upload.lease.<generation>; taking a lease over creates
# the next generation.
UPLOAD_LEASE = 'upload.lease'
# The holder touches its lease every UPLOAD_LEASE_SECONDS / 4; a lease seen
# untouched for longer belongs to a dead host.
UPLOAD_LEASE_SECONDS = 300
_LEASE_NAME = re.compile(r'^%s(?:\.(?P<generation>[0-9]{1,9}))?$'
                         % re.escape(UPLOAD_LEASE))


class UploadLeases:
    """Upload leases of kept-disk directories, as one host takes them.

    ``host_tag`` names this host in the leases it writes
    (``storage.host_tag``); ``untouched_for(path)`` is how many seconds this
    host has seen ``path`` unchanged.
    """

    def __init__(self, host_tag, untouched_for):
        self.host_tag = host_tag
        self._untouched_for = untouched_for

    def take(self, directory, at_start=False):
        """A token for the lease on uploading the disk in ``directory``.

        None while another host holds a live lease. A lease this host saw
        untouched for UPLOAD_LEASE_SECONDS, or this host's
        own at start-up, is taken over by creating the lease file of the
        next generation: of the hosts taking over the same lease exactly
        one creates it (O_EXCL), and a holder that finds a newer generation
        knows it lost its lease. A file that stands is never renamed away,
        so a fresh lease can never be taken from its holder.
        """
        try:
            leases = lease_files(directory)
        except (FileNotFoundError, NotADirectoryError):
            return None         # claimed or reclaimed meanwhile
        generation = 1
        if leases:
            newest, path = leases[-1]
            if not self._abandoned(path, at_start):
                return None
            generation = newest + 1
        holder = '%s-%s' % (self.host_tag, uuid.uuid4().hex[:8])
        try:
            fd = safe_files.open_new(lease_file(directory, generation))
        except FileExistsError:
            return None         # another host took it over first
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, 'w') as f:
            f.write(holder)
        if leases:
            LOG.info('Took over the upload lease in %s (generation %d): '
                     'its holder left it untouched for longer than %d s, '
                     'or it was this host\'s own before a restart.',
                     directory, generation, UPLOAD_LEASE_SECONDS)
        # What stood before is a lost lease (a planted link or directory
        # too): removed without being followed.
        for _generation, old in leases:
            safe_files.remove_tree(old)
        return '%d/%s' % (generation, holder)

    def _abandoned(self, path, at_start):
        try:
            holder = safe_files.read_small(path)
            age = self._untouched_for(path)
        except (OSError, ValueError):
            # Gone, or not a file we wrote (a planted link): take it over.
            return True
        mine = holder.startswith(self.host_tag + '-')
        return (at_start and mine) or age > UPLOAD_LEASE_SECONDS

    def check(self, directory, token):
        """Raise LeaseLost unless ``token`` is the newest lease there."""
        generation, holder = token.split('/', 1)
        path = lease_file(directory, int(generation))
        try:
            if safe_files.read_small(path) != holder:
                raise accel_exc.LeaseLost('%s now names another host' % path)
            if lease_files(directory)[-1][1] != path:
                raise accel_exc.LeaseLost(
                    'another host took over the lease %s' % path)
        except (OSError, ValueError):
            raise accel_exc.LeaseLost(
                '%s is gone (the disk was claimed or the lease '
                'taken over)' % path)
        return path

    def renew(self, directory, token):
        """Touch our lease; raise LeaseLost if it is not ours any more."""
        path = self.check(directory, token)
        try:
            os.utime(path, None, follow_symlinks=False)
        except OSError:
            raise accel_exc.LeaseLost(
                '%s is gone (the disk was claimed or the lease '
                'taken over)' % path)

    def drop(self, directory, token):
        generation, holder = token.split('/', 1)
        path = lease_file(directory, int(generation))
        try:
            if safe_files.read_small(path) == holder:
                os.unlink(path)
        except (OSError, ValueError):
            pass


def lease_file(directory, generation):
    return os.path.join(directory, '%s.%d' % (UPLOAD_LEASE, generation))


def lease_files(directory):
    """[(generation, path)] of the upload leases in ``directory``.

    Oldest first; a lease written before generations existed is the 0th.
    """
    with os.scandir(directory) as entries:
        matches = [(_LEASE_NAME.match(e.name), e.path) for e in entries]
    return sorted((int(m.group('generation') or 0), path)
                  for m, path in matches if m)


def remove_all(directory):
    """Delete every lease in ``directory``: its disk is nobody's to upload.

    Raises FileNotFoundError or NotADirectoryError when ``directory`` is
    gone.
    """
    for _generation, path in lease_files(directory):
        safe_files.remove_tree(path)
