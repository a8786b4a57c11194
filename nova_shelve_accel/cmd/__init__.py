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

"""What the plugin's two commands share.

``nova-shelve-accel`` and ``nova-shelve-accel-status`` read ``nova.conf``
as Nova's own commands do, and start as they do, with Nova's monkey
patching, which reads ``nova.conf`` first of all. A file that is missing
or does not parse is no answer of either command: both say so in one line
on standard error and exit with CONFIG_ERROR, never with a traceback.
"""

import sys

from oslo_config import cfg
import pbr.version

# The exit code of both commands when nova.conf cannot be read (the code
# oslo.upgradecheck gives a check that breaks: no result).
CONFIG_ERROR = 255


def monkey_patch(backend):
    """Nova's monkey patching, the first thing a command does.

    ``backend`` is the command's default concurrency ('eventlet' or
    'threading'); Nova reads ``[DEFAULT] concurrency_backend`` from the
    configuration files on the command line to override it.
    """
    from nova_shelve_accel import compat
    try:
        compat.monkey_patch(backend)
    except cfg.Error as e:
        sys.exit(config_error(e))


def config_error(error):
    """Say that the configuration cannot be read; the exit code."""
    print('Error: cannot read the configuration: %s' % error,
          file=sys.stderr)
    return CONFIG_ERROR


def version():
    """The plugin's version (not Nova's)."""
    return pbr.version.VersionInfo('nova-shelve-accel').version_string()


def printed_version(args):
    """Print the plugin's version if the arguments ask for it; whether so.

    Nova's parser would answer --version with Nova's version, and
    oslo.upgradecheck's has no --version at all.
    """
    if '--version' not in args:
        return False
    print(version())
    return True
