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

from importlib import metadata
import os
import re

import fixtures
from oslo_config import cfg
from oslo_config import fixture as config_fixture
from oslo_config import generator
import testtools

from nova_shelve_accel import conf as accel_conf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATOR_CONF = os.path.join(REPO, 'etc',
                              'nova-shelve-accel-config-generator.conf')
SAMPLE = os.path.join(REPO, 'etc', 'nova-shelve-accel.conf.sample')
CONFIG_REFERENCE = os.path.join(REPO, 'doc', 'source', 'configuration.rst')
OPTION_NAMES = {'partial_offload', 'free_space_floor_percent',
                'kept_disks_subdirectory', 'snapshot_upload',
                'snapshot_upload_delay', 'max_concurrent_snapshot_uploads',
                'snapshot_upload_max_mib_per_second', 'max_kept_age',
                'eviction_margin_percent', 'headroom_weight_multiplier',
                'headroom_refresh_interval'}


class TestOptions(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = cfg.ConfigOpts()
        accel_conf.register_opts(self.conf)
        self.conf([], project='nova', default_config_files=[],
                  default_config_dirs=[])
        # Every ConfigOpts that registers the group shares its option
        # records, overrides included: take ours off when the test ends.
        self.useFixture(config_fixture.Config(self.conf))

    def test_list_opts_lists_the_group_and_every_option(self):
        [(group, opts)] = accel_conf.list_opts()
        self.assertEqual('shelve_accel', group.name)
        self.assertEqual(OPTION_NAMES, {opt.name for opt in opts})

    def test_every_option_and_the_group_have_help(self):
        [(group, opts)] = accel_conf.list_opts()
        self.assertTrue(group.help.strip())
        for opt in opts:
            self.assertTrue(opt.help and opt.help.strip(),
                            '%s has no help' % opt.name)

    def test_registered_options_have_their_defaults(self):
        group = self.conf.shelve_accel
        self.assertTrue(group.partial_offload)
        self.assertEqual(10, group.free_space_floor_percent)
        self.assertEqual('_shelve_kept', group.kept_disks_subdirectory)
        self.assertEqual(0, group.max_kept_age)
        self.assertEqual(5, group.eviction_margin_percent)

    def test_the_rate_options_old_name_still_sets_it(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'nova.conf')
        with open(path, 'w') as f:
            f.write('[shelve_accel]\nsnapshot_upload_max_mbps = 7\n')
        self.conf(['--config-file', path], project='nova',
                  default_config_files=[], default_config_dirs=[])
        self.assertEqual(
            7, self.conf.shelve_accel.snapshot_upload_max_mib_per_second)

    def test_floor_is_a_percentage(self):
        for bad in (-1, 101):
            self.assertRaises(ValueError, self.conf.set_override,
                              'free_space_floor_percent', bad,
                              group='shelve_accel')
        for good in (0, 100):
            self.conf.set_override('free_space_floor_percent', good,
                                   group='shelve_accel')
            self.assertEqual(good,
                             self.conf.shelve_accel.free_space_floor_percent)

    def test_kept_disks_subdirectory_is_one_plain_name(self):
        for bad in ('', '.', '..', '../elsewhere', 'a/b', '/var/lib',
                    '.hidden'):
            self.assertRaises(ValueError, self.conf.set_override,
                              'kept_disks_subdirectory', bad,
                              group='shelve_accel')
        self.conf.set_override('kept_disks_subdirectory', 'kept-disks',
                               group='shelve_accel')
        self.assertEqual('kept-disks',
                         self.conf.shelve_accel.kept_disks_subdirectory)


class TestSampleConfig(testtools.TestCase):

    def test_committed_sample_is_up_to_date(self):
        output = os.path.join(self.useFixture(fixtures.TempDir()).path,
                              'sample.conf')
        conf = cfg.ConfigOpts()
        generator.register_cli_opts(conf)
        conf(['--config-file', GENERATOR_CONF, '--output-file', output],
             default_config_files=[], default_config_dirs=[])
        self.assertEqual(['nova_shelve_accel'], conf.namespace)
        self.assertEqual(79, conf.wrap_width)
        generator.generate(conf)

        with open(output) as f:
            generated = f.read()
        with open(SAMPLE) as f:
            committed = f.read()
        self.assertIn('[shelve_accel]', generated)
        self.assertEqual(generated, committed,
                         '%s is stale: run tox -e genconfig' % SAMPLE)


def _directive_bodies(text, name):
    """The non-blank body lines of every ``.. <name>::`` directive in text."""
    lines = text.splitlines()
    marker = '.. %s::' % name
    for start, line in enumerate(lines):
        directive = line.lstrip()
        if not directive.startswith(marker):
            continue
        indent = len(line) - len(directive)
        body = [directive[len(marker):].strip()]
        for following in lines[start + 1:]:
            if (following.strip() and
                    len(following) - len(following.lstrip()) <= indent):
                break
            body.append(following.strip())
        yield [b for b in body if b]


def _namespaces_shown(body):
    """The namespaces a show-options directive renders, as Sphinx reads it."""
    config_files = [b.split(':', 2)[2].strip() for b in body
                    if b.startswith(':config-file:')]
    if not config_files:
        return [b for b in body if not b.startswith(':')]
    conf = cfg.ConfigOpts()
    generator.register_cli_opts(conf)
    # sphinx-build runs from the top of the repository (tox -e docs).
    conf(['--config-file', os.path.join(REPO, config_files[0])],
         default_config_files=[], default_config_dirs=[])
    return list(conf.namespace)


def _options_of_namespace(namespace):
    """(group, option) pairs that an oslo.config.opts entry point lists."""
    entry_points = metadata.entry_points(group='oslo.config.opts',
                                         name=namespace)
    if not entry_points:
        raise LookupError('No oslo.config.opts entry point is named %r: '
                          'fix the show-options directive or the entry '
                          'points of setup.cfg.' % namespace)
    options = set()
    for entry_point in entry_points:
        for group, opts in entry_point.load()():
            group_name = getattr(group, 'name', group) or 'DEFAULT'
            options |= {(group_name, opt.dest) for opt in opts}
    return options


def _options_written_out(text):
    """Options documented by hand with oslo.config's Sphinx directives."""
    options = set()
    group_name = 'DEFAULT'
    for line in text.splitlines():
        match = re.match(r'\s*\.\. oslo\.config:(group|option)::\s*(\S+)',
                         line)
        if match and match.group(1) == 'group':
            group_name = match.group(2)
        elif match:
            options.add((group_name, match.group(2)))
    return options


def documented_options(text):
    """(group, option) pairs that a page of reStructuredText documents."""
    options = _options_written_out(text)
    for body in _directive_bodies(text, 'show-options'):
        for namespace in _namespaces_shown(body):
            options |= _options_of_namespace(namespace)
    return options


def registered_options():
    return {(group.name, opt.dest)
            for group, opts in accel_conf.list_opts() for opt in opts}


class TestConfigurationReference(testtools.TestCase):

    def test_reference_documents_every_registered_option(self):
        with open(CONFIG_REFERENCE) as f:
            documented = documented_options(f.read())
        missing = registered_options() - documented
        self.assertEqual(
            set(), missing,
            'These (group, option) pairs of nova_shelve_accel.conf.'
            'list_opts() are missing from %s: keep its "show-options:: '
            'nova_shelve_accel" directive or describe them there.'
            % CONFIG_REFERENCE)

    def test_an_option_left_out_of_a_page_is_missing(self):
        page = ('.. oslo.config:group:: shelve_accel\n'
                '\n'
                '.. oslo.config:option:: partial_offload\n'
                '\n'
                '   Keep the root disk.\n')
        missing = registered_options() - documented_options(page)
        self.assertIn(('shelve_accel', 'free_space_floor_percent'), missing)
        self.assertNotIn(('shelve_accel', 'partial_offload'), missing)

    def test_a_page_without_the_directive_documents_nothing(self):
        page = 'The options are ``partial_offload`` and the others.\n'
        self.assertEqual(set(), documented_options(page))

    def test_show_options_reads_the_generator_configuration(self):
        page = ('.. show-options::\n'
                '   :config-file: etc/nova-shelve-accel-config-generator.conf'
                '\n')
        self.assertEqual(registered_options(), documented_options(page))

    def test_show_options_of_an_unknown_namespace_fails(self):
        page = '.. show-options::\n\n   nova_shelve_acel\n'
        error = self.assertRaises(LookupError, documented_options, page)
        self.assertIn("'nova_shelve_acel'", str(error))
