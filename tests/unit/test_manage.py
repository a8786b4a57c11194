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

"""The nova-shelve-accel command, run through main() as from the shell.

Real databases (Nova's API database and two cells, from nova.test), real
kept disks made by KeptDiskStore.keep on qemu-img disks in a temporary
instances_path, and a real nova.conf read by oslo.config.
"""

import datetime
import io
import json
import logging as py_logging
import os
import sys

import fixtures
from oslo_db import exception as db_exc
from oslo_log import log as oslo_log
from oslo_messaging.notify import _impl_test as test_driver
from oslo_utils import fixture as utils_fixture
from oslo_utils import uuidutils

from nova.compute import vm_states
import nova.conf
from nova import context as nova_context
from nova import objects
from nova import test

from nova_shelve_accel.cmd import manage
from nova_shelve_accel.cmd import snapshots
from nova_shelve_accel import shelved
from nova_shelve_accel import storage
from nova_shelve_accel import storage_groups
from tests import notification_samples as samples
from tests.unit import disks
from tests.unit import driver_fixtures

CONF = nova.conf.CONF
# oslo.log's own setup, before Nova's logging fixture replaces it.
OSLO_LOG_SETUP = oslo_log.setup

HOST = 'compute-a'
PROJECT = 'a9b8c7d6e5f44f3e8d2c1b0a99887766'
USER = 'c1d2e3f4a5b64c7d8e9f0a1b2c3d4e5f'
SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000001'
NEW_SNAPSHOT = 'a1b2c3d4-0000-4000-8000-000000000002'

# The documented JSON keys (doc/source/cli/nova-shelve-accel.rst).
KEPT_KEYS = {'instance', 'project', 'snapshot', 'path', 'allocated_bytes',
             'kept_at', 'age_seconds', 'kept_by', 'upload_state',
             'instance_state', 'needed', 'reason'}
DAMAGED_KEYS = {'instance', 'project', 'snapshot', 'path', 'allocated_bytes',
                'problem', 'instance_state', 'needed', 'reason'}
OTHER_KEYS = {'instance', 'project', 'snapshot', 'path', 'kind',
              'allocated_bytes', 'upload_state', 'instance_state', 'needed',
              'reason'}
USAGE_KEYS = {'host', 'instances_path', 'kept_disks_path', 'storage_groups',
              'filesystem_size_bytes', 'filesystem_free_bytes',
              'filesystem_free_percent', 'free_space_floor_percent',
              'free_space_floor_bytes', 'keeps_new_disks', 'kept_count',
              'kept_bytes', 'pending_count', 'pending_bytes',
              'damaged_count', 'damaged_bytes', 'hosts_sharing',
              'group_hosts_not_sharing', 'hosts_sharing_outside_group'}


class CommandProcess(fixtures.Fixture):
    """The process state main() sets, as a new process would have it.

    A new process has parsed no command line and set up no logging; in the
    test process Nova's fixtures did both. What main() changes is put back
    afterwards, so that the next tests find the process as Nova's fixtures
    left it.
    """

    def _setUp(self):
        # The test's database fixtures connected the databases already, and
        # a started engine cannot be configured again.
        self.useFixture(fixtures.MockPatch('nova.db.main.api.configure'))
        self.useFixture(fixtures.MockPatch('nova.db.api.api.configure'))
        self.useFixture(fixtures.MonkeyPatch('sys.excepthook',
                                             sys.excepthook))
        self.addCleanup(self._forget_command_line)
        self.addCleanup(self._restore_logging, self._logging_state())

    @staticmethod
    def _logging_state():
        manager = py_logging.Logger.manager
        loggers = [py_logging.getLogger()] + [
            logger for logger in manager.loggerDict.values()
            if isinstance(logger, py_logging.Logger)]
        return {logger: (logger.level, list(logger.handlers))
                for logger in loggers}

    @staticmethod
    def _restore_logging(state):
        for logger in CommandProcess._logging_state():
            level, handlers = state.get(logger, (py_logging.NOTSET,
                                                 logger.handlers))
            logger.setLevel(level)
            logger.handlers[:] = handlers

    @staticmethod
    def _forget_command_line():
        CONF.reset()
        CONF.unregister_opt(manage.command_opt)

    @staticmethod
    def run(argv):
        # Nothing parsed yet, as at the start of the command's process.
        CONF.clear()
        return manage.main(['nova-shelve-accel'] + argv)


class ManageTestCase(test.TestCase):
    # Instances in two cells: the command finds each in its own.
    NUMBER_OF_CELLS = 2

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.store = disks.make_store(self.instances_path, host=HOST)
        self.ctxt = nova_context.get_admin_context()
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stdout', self.stdout))
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', self.stderr))
        self.process = self.useFixture(CommandProcess())
        self.storage_log = self.useFixture(fixtures.FakeLogger(
            name='nova_shelve_accel.storage', level=py_logging.INFO))
        self.config_file = self.write_config()
        # The host keeping the disks is a compute host of this deployment.
        objects.HostMapping(self.ctxt, host=HOST,
                            cell_mapping=self.cell_mappings['cell1']).create()

    def write_config(self, **shelve_accel):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'nova.conf')
        with open(path, 'w') as f:
            f.write('[DEFAULT]\ninstances_path = %s\nhost = %s\n'
                    % (self.instances_path, HOST))
            f.write('[shelve_accel]\n')
            for name, value in shelve_accel.items():
                f.write('%s = %s\n' % (name, value))
        return path

    def run_command(self, *argv):
        return self.process.run(['--config-file', self.config_file] +
                                list(argv))

    def reset_output(self):
        for stream in (self.stdout, self.stderr):
            stream.truncate(0)
            stream.seek(0)

    def run_table(self, *argv):
        """The Property | Value rows of the table printed, as a dict."""
        self.assertEqual(manage.SUCCESS, self.run_command(*argv),
                         self.stderr.getvalue())
        rows = {}
        for line in self.stdout.getvalue().splitlines():
            cells = [c.strip() for c in line.strip('|').split('|')]
            if line.startswith('|') and len(cells) == 2:
                rows[cells[0]] = cells[1]
        return rows

    def run_json(self, *argv, expected=manage.SUCCESS):
        code = self.run_command(*(argv + ('--format', 'json')))
        self.assertEqual(expected, code, self.stderr.getvalue())
        return json.loads(self.stdout.getvalue())

    # -- instances in the databases ----------------------------------------

    def make_instance(self, cell='cell1', sysmeta=None,
                      vm_state=vm_states.SHELVED_OFFLOADED, deleted=False,
                      mapped=True):
        instance_uuid = uuidutils.generate_uuid()
        cell_mapping = self.cell_mappings[cell]
        with nova_context.target_cell(self.ctxt, cell_mapping) as cctxt:
            instance = objects.Instance(
                cctxt, uuid=instance_uuid, project_id=PROJECT, user_id=USER,
                vm_state=vm_state, task_state=None,
                system_metadata=sysmeta or {})
            instance.create()
            if deleted:
                instance.destroy()
        if mapped:
            objects.InstanceMapping(
                self.ctxt, instance_uuid=instance_uuid, project_id=PROJECT,
                user_id=USER, cell_mapping=cell_mapping).create()
        return instance_uuid

    @staticmethod
    def shelved_with(snapshot, pending=False):
        sysmeta = {'shelved_image_id': snapshot, 'shelved_host': HOST,
                   shelved.KEPT_DISK_KEY: snapshot}
        if pending:
            sysmeta[shelved.PENDING_UPLOAD_KEY] = snapshot
        return sysmeta

    # -- kept disks on the storage -----------------------------------------

    def keep(self, instance_uuid, snapshot=SNAPSHOT, pending=False,
             store=None):
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        return (store or self.store).keep(instance_uuid, snapshot, 'qcow2',
                                          snapshot_pending=pending)

    def damage(self, record):
        """Make the kept disk of ``record`` a damaged one."""
        path = self.store.kept_dir(record.instance_uuid, record.snapshot_id)
        with open(os.path.join(path, storage.RECORD_NAME), 'w') as f:
            f.write('{not json')
        return path

    @staticmethod
    def occupied(path, names=None):
        """Bytes the files of a kept-disk directory occupy."""
        names = os.listdir(path) if names is None else names
        return sum(os.lstat(os.path.join(path, n)).st_blocks
                   for n in names) * 512

    def break_cell(self, cell):
        """Make the database of ``cell`` fail every read of instances."""
        real = objects.InstanceList.get_by_filters
        broken = self.cell_mappings[cell].uuid

        def read(cctxt, filters, **kwargs):
            if cctxt.cell_uuid == broken:
                raise db_exc.DBConnectionError('%s is down' % cell)
            return real(cctxt, filters, **kwargs)

        self.useFixture(fixtures.MockPatchObject(
            objects.InstanceList, 'get_by_filters', side_effect=read))

    def kept_names(self):
        return sorted(os.listdir(self.store.path))

    def make_every_case(self):
        """One kept disk of each kind, by name: (instance, snapshot)."""
        cases = {}

        # A host of another deployment sharing the storage, unknown to
        # this API database.
        stranger = disks.make_store(self.instances_path, 'compute-x')

        def case(name, instance_uuid, snapshot=SNAPSHOT, pending=False,
                 store=None):
            record = self.keep(instance_uuid, snapshot, pending=pending,
                               store=store)
            cases[name] = record
            return record

        case('needed', self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT)))
        case('needed_in_cell2', self.make_instance(
            cell='cell2', sysmeta=self.shelved_with(SNAPSHOT)))
        case('deleted', self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT), deleted=True))
        # Shelved again with a new snapshot: the older disk is of no use.
        reshelved = self.make_instance(sysmeta=self.shelved_with(
            NEW_SNAPSHOT))
        case('reshelved_old', reshelved, SNAPSHOT)
        case('reshelved_new', reshelved, NEW_SNAPSHOT)
        case('unshelved', self.make_instance(vm_state=vm_states.ACTIVE))
        case('pending', self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True)), pending=True)
        case('pending_deleted', self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT, pending=True),
            deleted=True), pending=True)
        # In no database while the host that kept it is known: deleted
        # and archived.
        case('archived', uuidutils.generate_uuid())
        # In no database, kept by a host this database does not know.
        case('not_mapped', uuidutils.generate_uuid(), store=stranger)
        case('pending_not_mapped', uuidutils.generate_uuid(), pending=True,
             store=stranger)
        self.damage(case('damaged_needed', self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT))))
        self.damage(case('damaged_deleted', self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT), deleted=True)))
        return cases

    NEEDED = ('needed', 'needed_in_cell2', 'reshelved_new', 'pending',
              'damaged_needed')
    UNNEEDED = ('deleted', 'reshelved_old', 'unshelved', 'pending_deleted',
                'archived', 'damaged_deleted')
    # Nothing is known: never reclaimed without --reclaim-unfound.
    UNKNOWN = ('not_mapped', 'pending_not_mapped')

    def name_of(self, cases, entry):
        for name, record in cases.items():
            if (record.instance_uuid, record.snapshot_id) == (
                    entry['instance'], entry['snapshot']):
                return name
        self.fail('unexpected entry %s' % entry)


class TestKeptList(ManageTestCase):

    def test_json_says_which_disks_are_needed_and_why(self):
        cases = self.make_every_case()

        report = self.run_json('kept', 'list')

        rows = {self.name_of(cases, e): e for e in report['kept']}
        damaged = {self.name_of(cases, e): e for e in report['damaged']}
        self.assertEqual({'damaged_needed', 'damaged_deleted'},
                         set(damaged))
        self.assertEqual(set(cases) - set(damaged), set(rows))
        needed = {name: e['needed'] for name, e in
                  list(rows.items()) + list(damaged.items())}
        self.assertEqual({n: None if n in self.UNKNOWN else n in self.NEEDED
                          for n in cases}, needed)
        self.assertEqual(
            {'needed': 'shelved_offloaded',
             'needed_in_cell2': 'shelved_offloaded',
             'deleted': 'deleted',
             'reshelved_old': 'shelved_offloaded',
             'reshelved_new': 'shelved_offloaded',
             'unshelved': 'active',
             'pending': 'shelved_offloaded',
             'pending_deleted': 'deleted',
             'archived': 'not found',
             'not_mapped': 'not found',
             'pending_not_mapped': 'not found'},
            {name: e['instance_state'] for name, e in rows.items()})
        self.assertIn('deleted and archived', rows['archived']['reason'])
        self.assertIn('compute-x) is not known to this API database',
                      rows['not_mapped']['reason'])
        self.assertEqual('the instance was deleted',
                         rows['deleted']['reason'])
        self.assertEqual('the instance is no longer shelved with snapshot '
                         '%s' % SNAPSHOT, rows['reshelved_old']['reason'])
        self.assertIn('only copy', rows['pending']['reason'])
        self.assertEqual(
            {'pending': 'pending', 'pending_deleted': 'pending',
             'pending_not_mapped': 'pending'},
            {n: e['upload_state'] for n, e in rows.items()
             if e['upload_state'] != 'uploaded'})
        self.assertEqual(PROJECT, rows['needed_in_cell2']['project'])
        self.assertIsNone(rows['not_mapped']['project'])

    def test_json_keys_are_the_documented_ones(self):
        cases = self.make_every_case()

        report = self.run_json('kept', 'list')

        self.assertEqual({'host', 'kept_disks_path', 'kept', 'damaged',
                          'others'}, set(report))
        for entry in report['kept']:
            self.assertEqual(KEPT_KEYS, set(entry))
        for entry in report['damaged']:
            self.assertEqual(DAMAGED_KEYS, set(entry))
        needed = cases['needed']
        [row] = [e for e in report['kept']
                 if e['instance'] == needed.instance_uuid]
        self.assertEqual(self.store.kept_dir(needed.instance_uuid, SNAPSHOT),
                         row['path'])
        self.assertEqual(HOST, row['kept_by'])
        self.assertEqual(needed.kept_at, row['kept_at'])
        self.assertEqual(self.store.path, report['kept_disks_path'])

    def test_size_is_what_the_kept_files_occupy_and_age_is_since_kept(self):
        time = self.useFixture(utils_fixture.TimeFixture(
            datetime.datetime(2025, 3, 1, 12, 0, 0)))
        record = self.keep(self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT)))
        time.advance_time_seconds(2 * 3600 + 5 * 60 + 7)

        [row] = self.run_json('kept', 'list')['kept']

        path = self.store.kept_dir(record.instance_uuid, SNAPSHOT)
        self.assertGreater(row['allocated_bytes'], 0)
        self.assertEqual(self.occupied(path, record.files),
                         row['allocated_bytes'])
        self.assertEqual(2 * 3600 + 5 * 60 + 7, row['age_seconds'])
        self.reset_output()
        self.assertEqual('2h 5m', self.run_table(
            'kept', 'show', record.instance_uuid)['age'])

    def test_table_has_a_row_per_disk_and_the_damaged_ones_apart(self):
        cases = self.make_every_case()

        self.assertEqual(manage.SUCCESS, self.run_command('kept', 'list'))

        out = self.stdout.getvalue()
        main_table, damaged_table = out.split('Damaged kept disks')
        for name, record in cases.items():
            table = damaged_table if name.startswith('damaged') else (
                main_table)
            [line] = [line for line in table.splitlines()
                      if record.instance_uuid in line and
                      record.snapshot_id in line]
            self.assertIn('| %s ' % ('unknown' if name in self.UNKNOWN
                                     else 'yes' if name in self.NEEDED
                                     else 'no'), line)
        [line] = [line for line in main_table.splitlines()
                  if cases['not_mapped'].instance_uuid in line]
        self.assertIn('| not found ', line)
        self.assertIn('KiB', line)
        self.assertIn('unreadable', damaged_table)

    def test_an_empty_storage_lists_nothing(self):
        self.assertEqual(manage.SUCCESS, self.run_command('kept', 'list'))
        self.assertEqual('No kept disks in %s.\n' % self.store.path,
                         self.stdout.getvalue())
        self.reset_output()
        self.assertEqual({'host': HOST, 'kept_disks_path': self.store.path,
                          'kept': [], 'damaged': [], 'others': []},
                         self.run_json('kept', 'list'))

    def test_other_directories_holding_data_are_listed_loudly(self):
        # A quarantine and a claim left in an instance directory: not kept
        # disks, but each may be the only copy of an instance's data.
        quarantined = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True))
        self.keep(quarantined, pending=True)
        self.store.claim(quarantined, SNAPSHOT)
        path = self.store.quarantine(quarantined, SNAPSHOT)
        left = self.make_instance(sysmeta=self.shelved_with(SNAPSHOT))
        self.keep(left)
        self.store.claim(left, SNAPSHOT)

        report = self.run_json('kept', 'list')

        others = {e['instance']: e for e in report['others']}
        self.assertEqual(OTHER_KEYS, set(others[quarantined]))
        self.assertEqual(
            {quarantined: (path, 'quarantine', 'pending', True),
             left: (self.store.instance_dir(left), 'claim left', 'uploaded',
                    True)},
            {i: (e['path'], e['kind'], e['upload_state'], e['needed'])
             for i, e in others.items()})
        self.assertIn('Note: %s (quarantine) holds the only copy of '
                      'instance %s' % (path, quarantined),
                      self.stderr.getvalue())
        self.assertNotIn(self.store.instance_dir(left),
                         self.stderr.getvalue())

    def test_instances_are_read_with_one_query_per_cell(self):
        for cell in ('cell1', 'cell1', 'cell1', 'cell2', 'cell2'):
            self.keep(self.make_instance(
                cell=cell, sysmeta=self.shelved_with(SNAPSHOT)))
        real = objects.InstanceList.get_by_filters
        spy = self.useFixture(fixtures.MockPatchObject(
            objects.InstanceList, 'get_by_filters', side_effect=real)).mock

        report = self.run_json('kept', 'list')

        self.assertEqual([True] * 5, [e['needed'] for e in report['kept']])
        self.assertEqual(2, spy.call_count)
        self.assertEqual(
            [3, 2], sorted((len(c.args[1]['uuid'])
                            for c in spy.call_args_list), reverse=True))

    def test_a_cell_that_cannot_be_read_makes_its_rows_unknown(self):
        cases = self.make_every_case()
        self.break_cell('cell2')

        report = self.run_json('kept', 'list', expected=manage.ERROR)

        rows = {self.name_of(cases, e): e for e in report['kept']}
        self.assertIsNone(rows['needed_in_cell2']['needed'])
        self.assertEqual('unknown', rows['needed_in_cell2']['instance_state'])
        self.assertIn('cell2 is down', rows['needed_in_cell2']['reason'])
        self.assertTrue(rows['needed']['needed'])
        self.assertIn(rows['needed_in_cell2']['path'],
                      self.stderr.getvalue())


class TestKeptShow(ManageTestCase):

    def test_json_has_the_records_paths_marks_and_needs(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            NEW_SNAPSHOT, pending=True))
        old = self.keep(instance_uuid, SNAPSHOT)
        new = self.keep(instance_uuid, NEW_SNAPSHOT, pending=True)
        self.keep(self.make_instance(sysmeta=self.shelved_with(SNAPSHOT)))

        report = self.run_json('kept', 'show', instance_uuid)

        self.assertEqual(instance_uuid, report['instance'])
        self.assertEqual(PROJECT, report['project'])
        self.assertEqual('shelved_offloaded', report['instance_state'])
        self.assertIsNone(report['lookup_error'])
        self.assertEqual({shelved.KEPT_DISK_KEY: NEW_SNAPSHOT,
                          shelved.PENDING_UPLOAD_KEY: NEW_SNAPSHOT,
                          'shelved_image_id': NEW_SNAPSHOT,
                          'shelved_host': HOST}, report['system_metadata'])
        disks_shown = {e['snapshot']: e for e in report['kept']}
        self.assertEqual({SNAPSHOT, NEW_SNAPSHOT}, set(disks_shown))
        for record in (old, new):
            entry = disks_shown[record.snapshot_id]
            self.assertEqual(KEPT_KEYS | {'record'}, set(entry))
            self.assertEqual(json.loads(record.to_json()), entry['record'])
            self.assertEqual(self.store.kept_dir(instance_uuid,
                                                 record.snapshot_id),
                             entry['path'])
        self.assertFalse(disks_shown[SNAPSHOT]['needed'])
        self.assertTrue(disks_shown[NEW_SNAPSHOT]['needed'])
        self.assertEqual('pending', disks_shown[NEW_SNAPSHOT]['upload_state'])
        self.assertEqual([], report['damaged'])

    def test_table_shows_the_instance_and_each_disk(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT))
        record = self.keep(instance_uuid)

        rows = self.run_table('kept', 'show', instance_uuid)

        out = self.stdout.getvalue()
        self.assertIn('Instance %s:' % instance_uuid, out)
        self.assertIn('Kept disk %s:' % self.store.kept_dir(
            instance_uuid, SNAPSHOT), out)
        self.assertEqual(SNAPSHOT, rows['system_metadata %s'
                                        % shelved.KEPT_DISK_KEY])
        self.assertEqual('-', rows['system_metadata %s'
                                   % shelved.PENDING_UPLOAD_KEY])
        self.assertEqual('shelved_offloaded', rows['instance state'])
        self.assertEqual(record.backing_file, rows['backing_file'])
        self.assertEqual('disk, disk.info', rows['files'])
        self.assertEqual(str(record.allocated_bytes),
                         rows['allocated_bytes'])
        self.assertEqual('uploaded', rows['upload state'])
        self.assertEqual('yes', rows['needed'])
        self.assertEqual('the instance is shelved with this snapshot',
                         rows['why'])

    def test_a_damaged_disk_is_shown_with_its_problem(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT))
        path = self.damage(self.keep(instance_uuid))

        report = self.run_json('kept', 'show', instance_uuid)

        self.assertEqual([], report['kept'])
        [entry] = report['damaged']
        self.assertEqual(path, entry['path'])
        self.assertIn('unreadable', entry['problem'])
        self.assertTrue(entry['needed'])

    def test_an_instance_without_kept_disk_is_not_found(self):
        self.keep(self.make_instance(sysmeta=self.shelved_with(SNAPSHOT)))
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT))

        self.assertEqual(manage.NOT_FOUND,
                         self.run_command('kept', 'show', instance_uuid))

        error = self.stderr.getvalue()
        self.assertIn('Instance %s has no kept disk in %s' % (
            instance_uuid, self.store.path), error)
        self.assertEqual('', self.stdout.getvalue())

    def test_an_uppercase_uuid_finds_the_disk(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT))
        self.keep(instance_uuid)

        report = self.run_json('kept', 'show', instance_uuid.upper())

        self.assertEqual(instance_uuid, report['instance'])

    def test_what_is_not_a_uuid_is_invalid_input(self):
        self.assertEqual(manage.NOT_FOUND,
                         self.run_command('kept', 'show', 'vm-17'))
        self.assertIn("'vm-17' is not an instance UUID",
                      self.stderr.getvalue())


class TestKeptReclaim(ManageTestCase):

    def test_dry_run_is_the_default_and_deletes_nothing(self):
        cases = self.make_every_case()
        before = disks.tree(self.instances_path)

        for argv in (('kept', 'reclaim'), ('kept', 'reclaim', '--dry-run')):
            self.reset_output()
            report = self.run_json(*argv)

            self.assertEqual(before, disks.tree(self.instances_path))
            self.assertFalse(report['applied'])
            self.assertEqual(
                set(self.UNNEEDED),
                {self.name_of(cases, e) for e in report['reclaim']})
            self.assertEqual({'dry_run'},
                             {e['result'] for e in report['reclaim']})
            self.assertEqual(0, report['reclaimed_count'])
        self.assertNotIn('Reclaiming', self.storage_log.output)

    def test_dry_run_table_says_what_would_go_and_why(self):
        cases = self.make_every_case()

        self.assertEqual(manage.SUCCESS, self.run_command('kept', 'reclaim'))

        out = self.stdout.getvalue()
        for name in self.UNNEEDED:
            [line] = [line for line in out.splitlines()
                      if cases[name].instance_uuid in line and
                      cases[name].snapshot_id in line]
            self.assertIn('would be reclaimed', line)
        for name in self.NEEDED:
            self.assertFalse([line for line in out.splitlines()
                              if cases[name].instance_uuid in line and
                              cases[name].snapshot_id in line])
        for name in self.UNKNOWN:
            [line] = [line for line in out.splitlines()
                      if cases[name].instance_uuid in line]
            self.assertIn('kept: nothing is known of the instance', line)
        self.assertIn('Dry run: nothing was deleted', out)
        self.assertIn('--apply', out)

    def test_apply_reclaims_exactly_the_disks_no_instance_needs(self):
        cases = self.make_every_case()

        report = self.run_json('kept', 'reclaim', '--apply')

        self.assertTrue(report['applied'])
        self.assertEqual(
            sorted(storage.kept_name(cases[n].instance_uuid,
                                     cases[n].snapshot_id)
                   for n in self.NEEDED + self.UNKNOWN), self.kept_names())
        self.assertEqual({'reclaimed'},
                         {e['result'] for e in report['reclaim']})
        self.assertEqual(set(self.UNKNOWN),
                         {self.name_of(cases, e) for e in report['refused']})
        self.assertEqual(len(self.UNNEEDED), report['reclaimed_count'])
        # The periodic pass's own log lines, from its own code.
        for name in self.UNNEEDED:
            record = cases[name]
            self.assertIn('Reclaiming kept root disk %s of instance %s: ' % (
                self.store.kept_dir(record.instance_uuid,
                                    record.snapshot_id),
                record.instance_uuid), self.storage_log.output)
        self.assertIn('it was never usable (its kept.json is unreadable',
                      self.storage_log.output)

    def test_each_disk_reclaimed_is_notified_as_the_periodic_pass_does(self):
        cases = self.make_every_case()
        test_driver.reset()

        self.run_json('kept', 'reclaim', '--apply')

        sent = {samples.data_of(m)['instance_uuid']: samples.data_of(m)
                for m in samples.sent('shelve_accel.disk.reclaimed')}
        self.assertEqual(sorted(cases[n].instance_uuid
                                for n in self.UNNEEDED), sorted(sent))
        for data in sent.values():
            self.assertTrue(data['by_command'])
            self.assertTrue(data['reason'])

    def test_a_dry_run_notifies_nothing(self):
        self.make_every_case()
        test_driver.reset()
        self.run_json('kept', 'reclaim')
        self.assertEqual([], test_driver.NOTIFICATIONS)

    def test_a_pending_disk_still_needed_is_never_reclaimed(self):
        pending = self.keep(self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True)), pending=True)
        path = self.store.kept_dir(pending.instance_uuid, SNAPSHOT)
        before = disks.tree(path)

        report = self.run_json('kept', 'reclaim', '--apply')

        self.assertEqual([], report['reclaim'])
        self.assertEqual(before, disks.tree(path))

    def test_reclaimed_bytes_are_those_of_the_disks_that_went(self):
        gone = self.keep(self.make_instance(deleted=True))
        size = gone.allocated_bytes
        self.keep(self.make_instance(sysmeta=self.shelved_with(SNAPSHOT)))

        report = self.run_json('kept', 'reclaim', '--apply')

        self.assertEqual(1, report['reclaimed_count'])
        self.assertEqual(size, report['reclaimed_bytes'])

    def test_disks_of_instances_that_cannot_be_looked_up_are_refused(self):
        cases = self.make_every_case()
        in_cell2 = self.make_instance(cell='cell2', deleted=True)
        gone_in_cell2 = self.keep(in_cell2)
        self.break_cell('cell2')

        report = self.run_json('kept', 'reclaim', '--apply',
                               expected=manage.ERROR)

        self.assertEqual(
            {storage.kept_name(in_cell2, SNAPSHOT),
             storage.kept_name(cases['needed_in_cell2'].instance_uuid,
                               SNAPSHOT)} |
            {storage.kept_name(cases[n].instance_uuid, SNAPSHOT)
             for n in self.UNKNOWN},
            {storage.kept_name(e['instance'], e['snapshot'])
             for e in report['refused']})
        self.assertIn(storage.kept_name(in_cell2, SNAPSHOT),
                      self.kept_names())
        self.assertEqual(set(self.UNNEEDED),
                         {self.name_of(cases, e) for e in report['reclaim']})
        self.assertIn(self.store.kept_dir(in_cell2,
                                          gone_in_cell2.snapshot_id),
                      self.stderr.getvalue())

    def test_a_wrong_api_database_reclaims_nothing(self):
        # Pointed at another deployment's API database, every instance is
        # in no database: nothing may be reclaimed for that, pending disks
        # (their instance's only copy) least of all.
        self.make_every_case()
        objects.HostMapping.get_by_host(self.ctxt, HOST).destroy()
        self.useFixture(fixtures.MockPatchObject(
            objects.InstanceMappingList, 'get_by_instance_uuids',
            return_value=objects.InstanceMappingList(objects=[])))
        before = disks.tree(self.instances_path)

        report = self.run_json('kept', 'reclaim', '--apply')

        self.assertEqual(before, disks.tree(self.instances_path))
        self.assertEqual([], report['reclaim'])
        self.assertEqual(13, len(report['refused']))
        self.assertIn('is not known to this API database',
                      self.stderr.getvalue())

    def test_reclaim_unfound_is_the_explicit_override(self):
        cases = self.make_every_case()

        report = self.run_json('kept', 'reclaim', '--apply',
                               '--reclaim-unfound')

        self.assertEqual(set(self.UNNEEDED + self.UNKNOWN),
                         {self.name_of(cases, e) for e in report['reclaim']})
        self.assertEqual([], report['refused'])
        self.assertNotIn(storage.kept_name(
            cases['pending_not_mapped'].instance_uuid, SNAPSHOT),
            self.kept_names())

    def test_nothing_is_reclaimed_when_the_api_database_fails(self):
        self.make_every_case()
        before = disks.tree(self.instances_path)
        self.useFixture(fixtures.MockPatchObject(
            objects.InstanceMappingList, 'get_by_instance_uuids',
            side_effect=db_exc.DBConnectionError('API database is down')))

        report = self.run_json('kept', 'reclaim', '--apply',
                               expected=manage.ERROR)

        self.assertEqual(before, disks.tree(self.instances_path))
        self.assertEqual([], report['reclaim'])
        self.assertEqual(13, len(report['refused']))
        self.assertIn('[api_database] connection', self.stderr.getvalue())

    def test_apply_and_dry_run_together_are_invalid_input(self):
        gone = self.keep(self.make_instance(deleted=True))

        self.assertEqual(manage.NOT_FOUND, self.run_command(
            'kept', 'reclaim', '--apply', '--dry-run'))

        self.assertEqual([storage.kept_name(gone.instance_uuid, SNAPSHOT)],
                         self.kept_names())
        self.assertIn('not allowed with argument', self.stderr.getvalue())

    def test_nothing_to_reclaim_is_said_so(self):
        self.keep(self.make_instance(sysmeta=self.shelved_with(SNAPSHOT)))

        self.assertEqual(manage.SUCCESS,
                         self.run_command('kept', 'reclaim', '--apply'))

        self.assertIn('Nothing to reclaim in %s' % self.store.path,
                      self.stdout.getvalue())


class TestStorageUsage(ManageTestCase):

    def test_numbers_are_what_the_files_occupy(self):
        kept = self.keep(self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT)))
        pending = self.keep(self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True)), pending=True)
        damaged_path = self.damage(self.keep(self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT))))
        disks.add_files(damaged_path, 'disk.swap')

        report = self.run_json('storage', 'usage')

        self.assertEqual(USAGE_KEYS, set(report))
        files_of = {
            r: self.occupied(self.store.kept_dir(r.instance_uuid,
                                                 r.snapshot_id), r.files)
            for r in (kept, pending)}
        self.assertEqual(2, report['kept_count'])
        self.assertEqual(sum(files_of.values()), report['kept_bytes'])
        self.assertEqual(1, report['pending_count'])
        self.assertEqual(files_of[pending], report['pending_bytes'])
        self.assertEqual(1, report['damaged_count'])
        self.assertEqual(self.occupied(damaged_path),
                         report['damaged_bytes'])

    def test_filesystem_figures_and_floor(self):
        self.config_file = self.write_config(free_space_floor_percent=37)

        report = self.run_json('storage', 'usage')

        fs = os.statvfs(self.instances_path)
        size = fs.f_blocks * fs.f_frsize
        self.assertEqual(size, report['filesystem_size_bytes'])
        # Other tests write to the same filesystem meanwhile.
        self.assertAlmostEqual(fs.f_bavail * fs.f_frsize,
                               report['filesystem_free_bytes'],
                               delta=size / 100)
        self.assertAlmostEqual(100.0 * fs.f_bavail / fs.f_blocks,
                               report['filesystem_free_percent'], delta=1)
        self.assertEqual(37, report['free_space_floor_percent'])
        self.assertEqual(size * 37 // 100, report['free_space_floor_bytes'])
        self.assertEqual(report['filesystem_free_percent'] >= 37,
                         report['keeps_new_disks'])
        self.assertEqual(self.instances_path, report['instances_path'])
        self.assertEqual(self.store.path, report['kept_disks_path'])
        self.assertEqual(HOST, report['host'])

    def make_aggregate(self, name, metadata, hosts):
        aggregate = objects.Aggregate(self.ctxt, name=name,
                                      metadata=metadata)
        aggregate.create()
        for host in hosts:
            aggregate.add_host(host)

    def test_group_is_read_from_the_aggregates_of_this_host(self):
        self.make_aggregate('storage-a',
                            {storage_groups.GROUP_KEY: ' group-a '},
                            [HOST, 'compute-b'])
        self.make_aggregate('storage-b', {storage_groups.GROUP_KEY: 'group-b'},
                            ['compute-c'])
        self.make_aggregate('fast', {'ssd': 'true'}, [HOST])

        self.assertEqual(['group-a'],
                         self.run_json('storage', 'usage')['storage_groups'])
        self.reset_output()
        self.assertEqual('group-a',
                         self.run_table('storage', 'usage')['storage group'])

    def test_a_host_in_no_group_says_none(self):
        self.make_aggregate('storage-b', {storage_groups.GROUP_KEY: 'group-b'},
                            ['compute-c'])

        self.assertEqual([],
                         self.run_json('storage', 'usage')['storage_groups'])
        self.reset_output()
        self.assertEqual('none',
                         self.run_table('storage', 'usage')['storage group'])

    def test_hosts_sharing_the_storage_against_the_group(self):
        self.make_aggregate('storage-a', {storage_groups.GROUP_KEY: 'group-a'},
                            [HOST, 'compute-b', 'compute-c'])
        for host in (HOST, 'compute-b', 'compute-x'):
            disks.make_store(self.instances_path, host=host).leave_probe()

        report = self.run_json('storage', 'usage')

        self.assertEqual(sorted([HOST, 'compute-b', 'compute-x']),
                         report['hosts_sharing'])
        self.assertEqual(['compute-c'], report['group_hosts_not_sharing'])
        self.assertEqual(['compute-x'],
                         report['hosts_sharing_outside_group'])
        self.reset_output()
        rows = self.run_table('storage', 'usage')
        self.assertEqual('compute-c', rows['group hosts not sharing'])
        self.assertEqual('compute-x', rows['sharing, not in group'])

    def test_kept_disks_count_in_the_table(self):
        kept = self.keep(self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT)))

        rows = self.run_table('storage', 'usage')

        self.assertEqual('1 (%s)' % manage.human_size(kept.allocated_bytes),
                         rows['kept disks'])
        self.assertEqual('0 (0 B)', rows['pending upload'])
        self.assertEqual('0 (0 B)', rows['damaged'])
        self.assertEqual(self.store.path, rows['kept disks path'])


class TestConfiguration(ManageTestCase):

    def test_options_are_read_from_the_config_file(self):
        self.config_file = self.write_config(
            kept_disks_subdirectory='kept-here',
            free_space_floor_percent=3)
        store = storage.KeptDiskStore(self.instances_path, 'kept-here',
                                      disks.BASE_SUBDIR, HOST)
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT))
        disks.make_qcow2_instance(self.instances_path, instance_uuid)
        store.keep(instance_uuid, SNAPSHOT, 'qcow2')

        report = self.run_json('storage', 'usage')

        self.assertEqual(os.path.join(self.instances_path, 'kept-here'),
                         report['kept_disks_path'])
        self.assertEqual(1, report['kept_count'])
        self.assertEqual(3, report['free_space_floor_percent'])

    def test_kept_disks_in_the_image_cache_directory_are_refused(self):
        self.config_file = self.write_config(
            kept_disks_subdirectory=disks.BASE_SUBDIR)

        self.assertEqual(manage.NOT_FOUND, self.run_command('kept', 'list'))

        self.assertIn('kept_disks_subdirectory', self.stderr.getvalue())

    def test_a_missing_config_file_is_no_answer(self):
        self.config_file = os.path.join(self.instances_path, 'nope.conf')

        self.assertEqual(255, self.run_command('kept', 'list'))

        self.assertIn('Error: cannot read the configuration: Failed to find '
                      'some config files: %s' % self.config_file,
                      self.stderr.getvalue())

    def test_an_unknown_command_is_invalid_input(self):
        self.assertEqual(manage.NOT_FOUND, self.run_command('kept', 'purge'))
        self.assertIn("invalid choice: 'purge'", self.stderr.getvalue())

    def test_help_exits_zero(self):
        self.assertEqual(manage.SUCCESS,
                         self.run_command('kept', 'reclaim', '--help'))
        self.assertIn('--apply', self.stdout.getvalue())

    def test_logs_go_to_stderr_and_leave_stdout_to_the_report(self):
        # Nova's logging fixture makes oslo.log's setup a no-op; how the
        # command sets its logging up is what this test is about.
        self.useFixture(fixtures.MonkeyPatch('oslo_log.log.setup',
                                             OSLO_LOG_SETUP))
        gone = self.keep(self.make_instance(deleted=True))

        report = self.run_json('kept', 'reclaim', '--apply')

        self.assertEqual(1, report['reclaimed_count'])
        self.assertIn('Reclaiming kept root disk %s' % self.store.kept_dir(
            gone.instance_uuid, SNAPSHOT), self.stderr.getvalue())


class SnapshotsTestCase(ManageTestCase):
    """kept drain and kept restore: Glance faked, all else real."""

    def setUp(self):
        super().setUp()
        self.glance = self.useFixture(driver_fixtures.FakeGlance())
        self.glance.deleted = []
        self.glance.created = []

        def create(api, context, image_meta, data=None):
            image_id = uuidutils.generate_uuid()
            self.glance.add(image_id, name=image_meta['name'])
            self.glance.created.append((image_id, image_meta))
            return self.glance.get(context, image_id)

        self.stub_out('nova.image.glance.API.create', create)
        self.snapshots_dir = os.path.join(self.instances_path, 'snapshots')
        self.flags(snapshots_directory=self.snapshots_dir, group='libvirt')

    def write_config(self, **shelve_accel):
        path = super().write_config(**shelve_accel)
        with open(path, 'a') as f:
            f.write('[libvirt]\nsnapshots_directory = %s\n'
                    % os.path.join(self.instances_path, 'snapshots'))
        return path

    def keep_with_data(self, instance_uuid, snapshot=SNAPSHOT,
                       pending=False):
        driver_fixtures.make_disk_with_data(self.instances_path, instance_uuid)
        return self.store.keep(instance_uuid, snapshot,
                               snapshot_pending=pending)

    def kept_disk(self, instance_uuid, snapshot=SNAPSHOT):
        return os.path.join(self.store.kept_dir(instance_uuid, snapshot),
                            'disk')

    def instance(self, instance_uuid):
        return manage.look_up_owners(self.ctxt, {instance_uuid})[
            instance_uuid].instance


class TestKeptDrain(SnapshotsTestCase):

    def test_every_pending_disk_is_uploaded_now(self):
        pending = [self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True)) for _ in range(2)]
        snapshots = {}
        for instance_uuid in pending:
            snapshot = uuidutils.generate_uuid()
            instance = self.instance(instance_uuid)
            instance.system_metadata.update(
                {'shelved_image_id': snapshot,
                 shelved.PENDING_UPLOAD_KEY: snapshot,
                 shelved.KEPT_DISK_KEY: snapshot})
            instance.save()
            self.glance.add(snapshot)
            self.keep_with_data(instance_uuid, snapshot, pending=True)
            snapshots[instance_uuid] = snapshot
        done = self.keep(self.make_instance(sysmeta=self.shelved_with(
            NEW_SNAPSHOT)), NEW_SNAPSHOT)

        report = self.run_json('kept', 'drain')

        self.assertEqual(0, report['pending_left'])
        self.assertEqual(sorted(pending),
                         [e['instance'] for e in report['uploads']])
        for instance_uuid, snapshot in snapshots.items():
            self.assertEqual(driver_fixtures.converted(
                self, self.kept_disk(instance_uuid, snapshot)),
                self.glance.data[snapshot])
            self.assertEqual('active', self.glance.images[snapshot]['status'])
            self.assertFalse(self.store.find(instance_uuid,
                                             snapshot).snapshot_pending)
            self.assertNotIn(shelved.PENDING_UPLOAD_KEY,
                             self.instance(instance_uuid).system_metadata)
        self.assertNotIn(NEW_SNAPSHOT, self.glance.data)
        self.assertIsNotNone(self.store.find(done.instance_uuid,
                                             NEW_SNAPSHOT))

    def test_nothing_pending_says_so(self):
        self.assertEqual(manage.SUCCESS, self.run_command('kept', 'drain'))
        self.assertIn('No disk in %s waits for its upload' % self.store.path,
                      self.stdout.getvalue())

    def test_an_upload_another_host_runs_is_waited_for(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True))
        self.glance.add(SNAPSHOT)
        self.keep_with_data(instance_uuid, pending=True)
        other = disks.make_store(self.instances_path, 'compute-b')
        token = other.leases.take(self.store.kept_dir(instance_uuid,
                                                      SNAPSHOT))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.cmd.snapshots.DRAIN_POLL_SECONDS', 0))
        real_drain_one = snapshots.drain_one

        def other_host_finishes(*args):
            entry = real_drain_one(*args)
            # compute-b's upload ends: the disk is uploaded, lease gone.
            record = self.store.find(instance_uuid, SNAPSHOT)
            self.store.mark_uploaded(record)
            other.leases.drop(self.store.kept_dir(instance_uuid,
                                                  SNAPSHOT), token)
            return entry

        self.useFixture(fixtures.MonkeyPatch(
            'nova_shelve_accel.cmd.snapshots.drain_one',
            other_host_finishes))
        report = self.run_json('kept', 'drain')

        self.assertEqual([snapshots.BY_ANOTHER_HOST],
                         [e['result'] for e in report['uploads']])
        self.assertNotIn(SNAPSHOT, self.glance.data)

    def test_a_lost_snapshot_is_reported_with_the_remedy(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True))
        self.keep_with_data(instance_uuid, pending=True)

        report = self.run_json('kept', 'drain', expected=manage.ERROR)

        [entry] = report['uploads']
        self.assertEqual('snapshot lost', entry['result'])
        self.assertIn('kept restore %s' % instance_uuid, entry['error'])
        self.assertTrue(self.store.find(instance_uuid,
                                        SNAPSHOT).snapshot_pending)

    def test_evict_then_leaves_no_kept_disk_whose_snapshot_is_active(self):
        # The last step before the hosts of the storage go back to Nova's
        # own driver: nothing is kept, nothing is pending.
        pending = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True))
        self.glance.add(SNAPSHOT)
        self.keep_with_data(pending, pending=True)
        uploaded = self.make_instance(sysmeta=self.shelved_with(
            NEW_SNAPSHOT))
        self.glance.add(NEW_SNAPSHOT, status='active')
        self.keep(uploaded, NEW_SNAPSHOT)

        report = self.run_json('kept', 'drain', '--evict')

        self.assertEqual(sorted([pending, uploaded]),
                         sorted(e['instance'] for e in report['evicted']))
        self.assertEqual([], self.store.list_kept())
        for instance_uuid in (pending, uploaded):
            self.assertNotIn(shelved.KEPT_DISK_KEY,
                             self.instance(instance_uuid).system_metadata)


class TestKeptRestore(SnapshotsTestCase):

    def lost_snapshot(self, vm_state=vm_states.SHELVED_OFFLOADED):
        """A shelved instance whose user deleted its (active) snapshot."""
        instance_uuid = self.make_instance(
            sysmeta=self.shelved_with(SNAPSHOT), vm_state=vm_state)
        record = self.keep_with_data(instance_uuid)
        return instance_uuid, record

    def test_a_new_snapshot_is_made_from_the_kept_disk(self):
        # Unshelving it now fails in Nova's conductor, before any driver:
        # the instance is ERROR, its task still unshelving.
        instance_uuid, record = self.lost_snapshot(vm_state=vm_states.ERROR)
        instance = self.instance(instance_uuid)
        instance.task_state = 'unshelving'
        instance.save()
        expected = driver_fixtures.converted(self,
                                             self.kept_disk(instance_uuid))

        report = self.run_json('kept', 'restore', instance_uuid)

        new = report['new_snapshot']
        [(image_id, meta)] = self.glance.created
        self.assertEqual(new, image_id)
        self.assertEqual('snapshot', meta['properties']['image_type'])
        self.assertEqual(expected, self.glance.data[new])
        self.assertEqual('active', self.glance.images[new]['status'])
        instance = self.instance(instance_uuid)
        self.assertEqual(vm_states.SHELVED_OFFLOADED, instance.vm_state)
        self.assertIsNone(instance.task_state)
        self.assertEqual(new, instance.system_metadata['shelved_image_id'])
        self.assertEqual(new, shelved.kept_snapshot_id(instance))
        kept = self.store.find(instance_uuid, new)
        self.assertEqual(record.disk_size, kept.disk_size)
        self.assertEqual(self.store.kept_dir(instance_uuid, new),
                         report['kept_disk'])
        self.assertIsNone(self.store.find(instance_uuid, SNAPSHOT))

    def test_an_active_snapshot_needs_no_restore(self):
        instance_uuid, _record = self.lost_snapshot()
        self.glance.add(SNAPSHOT, status='active')
        self.assertEqual(manage.NOT_FOUND,
                         self.run_command('kept', 'restore', instance_uuid))
        self.assertIn('nothing to restore', self.stderr.getvalue())
        self.assertEqual([], self.glance.created)

    def test_a_queued_snapshot_is_filled_from_the_disk(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT, pending=True))
        self.glance.add(SNAPSHOT)
        self.keep_with_data(instance_uuid, pending=True)

        report = self.run_json('kept', 'restore', instance_uuid)

        self.assertIsNone(report['new_snapshot'])
        self.assertEqual('active', self.glance.images[SNAPSHOT]['status'])
        self.assertEqual([], self.glance.created)

    def test_a_disk_that_does_not_verify_is_not_uploaded(self):
        instance_uuid, _record = self.lost_snapshot()
        disks.qemu_io('qcow2', self.kept_disk(instance_uuid),
                      'write -P 0x66 0 4k')
        self.assertEqual(manage.ERROR,
                         self.run_command('kept', 'restore', instance_uuid))
        self.assertIn('changed after it was kept', self.stderr.getvalue())
        self.assertEqual([], self.glance.created)

    def test_an_instance_without_a_kept_disk_here_is_refused(self):
        instance_uuid = self.make_instance(sysmeta=self.shelved_with(
            SNAPSHOT))
        self.assertEqual(manage.NOT_FOUND,
                         self.run_command('kept', 'restore', instance_uuid))
        self.assertIn('has no kept disk of its snapshot %s in %s' % (
            SNAPSHOT, self.store.path), self.stderr.getvalue())

    def test_a_running_instance_is_refused(self):
        instance_uuid, _record = self.lost_snapshot(
            vm_state=vm_states.ACTIVE)
        self.assertEqual(manage.NOT_FOUND,
                         self.run_command('kept', 'restore', instance_uuid))
        self.assertIn('is active', self.stderr.getvalue())
        self.assertEqual([], self.glance.created)
