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

"""Where the Nova releases the plugin runs on differ: 31.x (2025.1), 32.x
(2025.2), 33.x (2026.1) and 34.x (2026.2).

Decided by what the installed Nova has, never by its version number
(``nova_release`` reads it only to tell an operator); no other module of
the plugin knows about releases. Nothing of Nova is
imported at module level: ``monkey_patch`` must come first in a command.

What differs, and is decided here:

* monkey patching: ``nova.monkey_patch.patch(backend=...)`` from 33,
  ``patch()`` in 32, the import itself in 31;
* the concurrency mode: ``nova.utils.concurrency_mode_threading`` from 32;
  31 runs on eventlet only;
* service credentials: ``nova.service_auth.get_service_auth_plugin`` from
  33; 31 and 32 load them from the option group here;
* the function every thread Nova starts goes through (test machinery):
  ``nova.thread_pool_factory.spawn_on`` in 34, ``nova.utils.spawn_on`` in
  32 and 33, ``nova.utils.pass_context`` in 31.

What the plugin depends on and is the same in all four (compared function
by function on 2026-12-07; the testing guide's "Older Nova releases" says
what runs on each), with the hook of the spec
doc/source/specs/keep-root-disk-across-offload.rst that would replace it.
Keep this list and the spec's table in step:

* ``LibvirtDriver.destroy`` overridden, recognising an offload by its
  task_state, and the chain ``destroy -> cleanup -> _cleanup ->
  delete_instance_files`` (``delete_instance_files`` overridden):
  ``keep_root_disk``;
* ``_is_booted_from_volume`` and ``_host.get_guest`` (called):
  ``keep_root_disk``'s arguments, the driver's own code;
* ``_create_and_inject_local_root`` (overridden: no image fetch for a
  reused root disk) and the chain ``spawn -> _create_image ->
  _create_and_inject_local_root``: ``adopt_root_disk``;
* ``_destroy`` and ``_undefine_domain`` (called: removing the guest of a
  failed spawn, disks kept): ``release_root_disk`` after the manager's
  ``destroy(..., destroy_disks=False)``;
* ``_create_snapshot_metadata`` (called: a later upload's image
  properties): a public helper in ``nova.virt.libvirt.utils``;
* the cell database's ``instances`` and ``instance_system_metadata``
  tables (read by the scheduler filter): ``RequestSpec.shelved_root_disk``.
"""

import inspect

# The Nova releases the plugin supports, by major version, with their
# OpenStack series; requirements.txt states the same range for pip.
SUPPORTED_SERIES = {31: '2025.1', 32: '2025.2', 33: '2026.1', 34: '2026.2'}


def nova_release():
    """The installed Nova's version and its series, or None if unsupported.

    The one place that reads a version number: what it is for is telling
    an operator (``nova-shelve-accel-status``), not choosing code paths.
    """
    from nova import version
    found = version.version_string()
    try:
        major = int(found.split('.')[0])
    except ValueError:
        return found, None
    return found, SUPPORTED_SERIES.get(major)


def supported_releases():
    """The supported range as an operator reads it: '31.x (2025.1) ...'."""
    first, last = min(SUPPORTED_SERIES), max(SUPPORTED_SERIES)
    return '%d.x (%s) to %d.x (%s)' % (
        first, SUPPORTED_SERIES[first], last, SUPPORTED_SERIES[last])


def monkey_patch(backend):
    """Nova's monkey patching, as Nova's own commands do it here.

    ``backend`` ('eventlet' or 'threading') is the command's default, which
    Nova 33 and later take (34 lets ``[DEFAULT] concurrency_backend``
    override it); 32 patches unless OS_NOVA_DISABLE_EVENTLET_PATCHING says
    not to, and 31 patches when the module is imported.
    """
    from nova import monkey_patch as nova_monkey_patch
    patch = getattr(nova_monkey_patch, 'patch', None)
    if patch is None:
        return
    if 'backend' in inspect.signature(patch).parameters:
        patch(backend=backend)
    else:
        patch()


def threading_mode():
    """Whether Nova runs on native threads rather than eventlet."""
    from nova import utils
    probe = getattr(utils, 'concurrency_mode_threading', None)
    if probe is not None:
        return probe()
    # Nova 31: eventlet, unless the patching was turned off.
    import eventlet.patcher
    return not eventlet.patcher.is_monkey_patched('thread')


def service_auth_plugin(group):
    """The auth plugin of the option group ``group``, or None if unset.

    Nova 33 and later load it once and keep it (its token with it); on 31
    and 32 it is loaded at each call, which costs a token per upload.
    """
    from nova import service_auth
    get = getattr(service_auth, 'get_service_auth_plugin', None)
    if get is not None:
        return get(group)
    from keystoneauth1 import loading as ks_loading
    import nova.conf
    return ks_loading.load_auth_from_conf_options(nova.conf.CONF, group)


def thread_start_hook():
    """The dotted path of the function every thread Nova starts goes through.

    Each takes (an executor or runner, func, \\*args, \\*\\*kwargs), so one
    wrapper of ``func`` fits all three.
    """
    try:
        import nova.thread_pool_factory  # noqa: F401
        return 'nova.thread_pool_factory.spawn_on'
    except ImportError:
        pass
    from nova import utils
    if hasattr(utils, 'spawn_on'):
        return 'nova.utils.spawn_on'
    return 'nova.utils.pass_context'
