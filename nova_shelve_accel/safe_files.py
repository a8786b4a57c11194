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

"""Files on a storage that others write too.

Other hosts of a shared storage rename and delete the same names at the same
time, a network filesystem answers for a name another client just moved
with ESTALE or EIO, and anyone who can write the storage can plant links,
FIFOs and giant files. Everything here is written for that: no link is
followed, no FIFO waited on, and a name vanishing under us is expected.
"""

import errno
import os
import shutil
import stat

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Files we create are the service user's alone.
NEW_FILE_MODE = 0o600


def is_real_dir(path):
    """True for a directory that is not a symbolic link.

    Raises PermissionError when the storage does not let this host look.
    """
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def is_regular_file(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def vanished(error, path):
    """Whether ``error``, raised by an operation on ``path``, means it is gone.

    ENOENT says so. A network filesystem may answer ESTALE or EIO instead
    for a name that another client has just moved or deleted (GlusterFS
    does): the name is gone once lstat agrees, and anything else is a real
    error.
    """
    if error.errno == errno.ENOENT:
        return True
    if error.errno not in (errno.ESTALE, errno.EIO):
        return False
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


# GlusterFS, rarely, answers EEXIST to an exclusive create or a mkdir and
# creates nothing, when another client looks the name up at that moment.
_PHANTOM_EXIST_RETRIES = 3
# A directory removed under rmtree by another client is looked at again.
_STALE_RETRIES = 3


def create_new(path, make):
    """``make(path)``, an exclusive create, trusting EEXIST only if it is so.

    FileExistsError is raised only when the name really stands; an EEXIST
    for a name that is not there is retried a few times.
    """
    for attempt in range(_PHANTOM_EXIST_RETRIES + 1):
        try:
            return make(path)
        except FileExistsError:
            if os.path.lexists(path) or attempt == _PHANTOM_EXIST_RETRIES:
                raise
            LOG.info('The storage said %s exists, but it does not: trying '
                     'again', path)


def open_new(path):
    """A descriptor of ``path``, a new file, not following a link."""
    return create_new(path, lambda p: os.open(
        p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
        NEW_FILE_MODE))


def remove_tree(path):
    """Delete ``path`` without following links; False if it was gone.

    Another host of the storage may delete the same tree at the same time
    (an interrupted reclaim that both see as abandoned): entries vanishing
    under us are expected, any other error is raised.
    """
    def vanished_is_fine(function, failed_path, excinfo):
        error = excinfo[1]
        if not (isinstance(error, OSError) and
                vanished(error, failed_path)):
            raise error

    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return True
    except OSError as e:
        if vanished(e, path):
            return False
        raise
    for attempt in range(_STALE_RETRIES + 1):
        try:
            shutil.rmtree(path, onerror=vanished_is_fine)
            return True
        except OSError as e:
            # rmtree checks each directory it opens with fstat, outside
            # onerror: another client may have just moved or deleted it
            # (ESTALE on GlusterFS). What is left is looked at again.
            if vanished(e, path):
                return False
            if (e.errno not in (errno.ESTALE, errno.EIO) or
                    attempt == _STALE_RETRIES):
                raise


def read_small(path):
    """The text of a small file we wrote, never through a link."""
    # O_NONBLOCK: opening a planted FIFO must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError('%s is not a regular file' % path)
        return f.read(256)
