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

import os

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
OPTION_NAMES = {'partial_offload', 'free_space_floor_percent',
                'kept_disks_subdirectory', 'snapshot_upload',
                'snapshot_upload_delay', 'max_concurrent_snapshot_uploads',
                'snapshot_upload_max_mbps'}


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
