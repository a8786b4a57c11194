"""Compare Tempest's results in the cloud's modes (tools/tempest.sh).

    report.py DIR MODE...

Reads DIR/MODE.subunit for each mode (run with Tempest's virtualenv, which
has python-subunit) and prints: passed, skipped and failed tests per mode
with how many unshelves reused a kept root disk (DIR/MODE.reused), the
tests that failed in each mode, marking those that passed in stock mode (a
failure only with the plugin is a bug of the plugin), and the reasons
Tempest gave for its skips.
"""

import collections
import os
import sys

import subunit
import testtools

MODE_NAMES = {
    'stock': 'stock Nova',
    'plugin': 'plugin, snapshot_upload = at_shelve',
    'fast-shelve': 'plugin, snapshot_upload = after_offload',
}
OUTCOMES = {'success': 'passed', 'skip': 'skipped', 'fail': 'failed',
            'xfail': 'passed', 'uxsuccess': 'failed'}


def results(path):
    """{test id: (outcome, skip reason or None)} of one subunit stream."""
    found = {}

    def on_test(test):
        outcome = OUTCOMES.get(test['status'])
        if outcome is None:
            return
        reason = test['details'].get('reason')
        found[test['id']] = (outcome,
                             reason.as_text().strip() if reason else None)

    with open(path, 'rb') as stream:
        case = subunit.ByteStreamToStreamResult(stream,
                                                non_subunit_name='stdout')
        result = testtools.StreamToDict(on_test)
        result.startTestRun()
        case.run(result)
        result.stopTestRun()
    return found


def reused(out_dir, mode):
    """How many unshelves reused a kept disk in mode (tools/tempest.sh)."""
    try:
        with open(os.path.join(out_dir, mode + '.reused')) as f:
            return f.read().strip()
    except FileNotFoundError:
        return '?'


def report(out_dir, modes):
    by_mode = {mode: results(os.path.join(out_dir, mode + '.subunit'))
               for mode in modes}
    lines = ['%-14s %-42s %7s %8s %7s %7s' % (
        'mode', '', 'passed', 'skipped', 'failed', 'reused')]
    for mode in modes:
        counts = collections.Counter(o for o, _ in by_mode[mode].values())
        lines.append('%-14s %-42s %7d %8d %7d %7s' % (
            mode, MODE_NAMES[mode], counts['passed'], counts['skipped'],
            counts['failed'], reused(out_dir, mode)))
    stock = by_mode.get('stock')
    only_plugin = 0
    for mode in modes:
        failed = sorted(t for t, (o, _) in by_mode[mode].items()
                        if o == 'failed')
        if failed:
            lines.append('')
            lines.append('Failed in %s:' % mode)
        for test in failed:
            note = ''
            if mode != 'stock' and stock is not None:
                in_stock = stock.get(test, ('',))[0]
                if in_stock == 'failed':
                    note = ' (fails in stock too)'
                elif in_stock == 'passed':
                    note = ' (passes in stock: ONLY WITH THE PLUGIN)'
                    only_plugin += 1
            lines.append('  %s%s' % (test, note))
    reasons = collections.Counter()
    for mode in modes:
        for outcome, reason in by_mode[mode].values():
            if outcome == 'skipped':
                reasons[reason or '(no reason given)'] += 1
    if reasons:
        lines.append('')
        lines.append('Skipped by Tempest itself (tests, all modes): reason')
        for reason, count in sorted(reasons.items(), key=lambda r: -r[1]):
            lines.append('  %4d  %s' % (count, reason.splitlines()[0][:110]))
    if only_plugin:
        lines.append('')
        lines.append('%d failure(s) only with the plugin.' % only_plugin)
    return '\n'.join(lines)


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    print(report(argv[1], argv[2:]))


if __name__ == '__main__':
    main(sys.argv)
