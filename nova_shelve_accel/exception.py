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

"""The plugin's exceptions.

Raised and caught inside the plugin: none reaches Nova, which sees its own
exceptions or the stock code path. The command-line tools' error, which
carries an exit code, is ``cmd.manage.CommandError``; the fault injected at
a cut point is ``faults.InjectedFault``.
"""


# -- the kept-disk directory ----------------------------------------------

class KeepRefused(Exception):
    """The instance directory cannot be kept; the caller deletes it."""


class VerificationFailed(Exception):
    """A kept disk is not safe to reuse for the instance asking for it."""


class LeaseLost(Exception):
    """Another host took over the upload, or the kept disk was claimed."""


class NotReused(Exception):
    """The kept disk cannot serve this unshelve; the message says why.

    The unshelve goes on as stock Nova's, from the snapshot.
    """


# -- the upload into the snapshot image ------------------------------------

class UploadAbandoned(Exception):
    """The kept disk was claimed or the lease lost: stop, do not retry."""


class UploadFailed(Exception):
    """The upload did not complete; it is retried later."""


class SnapshotLost(Exception):
    """The queued image is gone: retrying cannot help, an operator can."""
