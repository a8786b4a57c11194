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

"""Tables, CSV files and plots of tools/bench_shelve.py's measurements."""

import csv
import os
import statistics

from tools import phases

# 'inert' (the plugin's driver loaded, every hook Nova's own: cloud.sh
# mode inert) is run only when asked for, to tell the cost of loading the
# plugin from the cost of its hooks.
MODES = ('stock', 'inert', 'plugin', 'fast-shelve')
DEFAULT_MODES = ('stock', 'plugin', 'fast-shelve')
MODE_LABELS = {'stock': 'stock', 'inert': 'inert driver',
               'plugin': 'at_shelve', 'fast-shelve': 'after_offload'}
MIB = 1024 * 1024
TIMES = ('unshelve_s', 'shelve_s', 'start_s', 'stop_s', 'glance_mib',
         'snapshot_active_s', 'cycle_s', 'stop_start_s', 'unshelve_busy_s',
         'shelve_dirty_mib', 'shelve_iowait_pct', 'shelve_cores',
         'unshelve_dirty_mib', 'unshelve_iowait_pct', 'unshelve_cores')
PHASE_KEYS = tuple('ph_' + name for name in phases.PHASES) + (
    'ph_tokens_s', 'ph_filter_ms', 'ph_claim_ms', 'ph_delete_s',
    'ph_download_s', 'ph_convert_s', 'ph_rebase_s') + tuple(
    'sh_' + name for name in phases.SHELVE_PHASES + phases.SNAPSHOT_STEPS +
    ('image_s', 'tokens_s'))
# What start, the lower bound, does not do: find a host.
SCHEDULING = ('ph_conductor', 'ph_scheduler')


def median(values):
    return statistics.median(list(values))


def size_label(size):
    if size >= 1024 * MIB and size % (1024 * MIB) == 0:
        return '%d GiB' % (size // (1024 * MIB))
    return '%d MiB' % (size // MIB)


# -- progress lines --------------------------------------------------------

def print_sample(row):
    busy = ''
    if row['unshelve_busy_s'] != '':
        busy = ', unshelve during an upload %.1f s%s' % (
            row['unshelve_busy_s'],
            '' if row['busy_overlapped'] else ' (the upload had ended)')
    print('   %s %s #%d: shelve %.1f s (stop %.1f s, %.0f MiB dirty, '
          'iowait %.0f%%), snapshot active %.1f s, unshelve %.1f s on %s '
          '(start %.1f s), Glance %.0f MiB%s' % (
              row['mode'], size_label(row['data_mib'] * MIB), row['rep'],
              row['shelve_s'], row['stop_s'], row['shelve_dirty_mib'],
              row['shelve_iowait_pct'], row['snapshot_active_s'],
              row['unshelve_s'], row['unshelve_host'], row['start_s'],
              row['glance_mib'], busy), flush=True)


def print_burst(row):
    print('   %-13s %d servers x %s: all ACTIVE after a start in %.1f s; all '
          'SHELVED_OFFLOADED after %.1f s, all snapshots active after '
          '%.1f s; all ACTIVE after an unshelve in %.1f s (%.2fx the start, '
          '%d failed; median server %.1f s, %.1f unshelves/s) on %s, Glance '
          'sent %.0f MiB' % (
              MODE_LABELS[row['mode']], row['servers'],
              size_label(row['data_mib'] * MIB), row['all_started_s'],
              row['all_shelved_s'], row['all_uploaded_s'],
              row['all_active_s'], row['unshelve_vs_start'],
              row['failed_unshelves'], row['median_server_s'],
              row['unshelves_per_s'], row['on_hosts'], row['glance_mib']),
          flush=True)


# -- summary -----------------------------------------------------------------

def summarize(samples, sizes):
    summary = []
    for size in sizes:
        for mode in MODES:
            rows = [r for r in samples
                    if r['mode'] == mode and r['data_mib'] == size // MIB]
            if not rows:
                continue
            out = {'mode': mode, 'data_mib': size // MIB, 'n': len(rows)}
            for key in TIMES + PHASE_KEYS:
                values = [r[key] for r in rows
                          if r.get(key) not in ('', None)]
                if not values:
                    continue
                out[key] = median(values)
                out[key + '_min'] = min(values)
                out[key + '_max'] = max(values)
            summary.append(out)
    return summary


def _cell(row, key, digits=1):
    if key not in row:
        return '-'
    form = '%%.%df [%%.%df-%%.%df]' % (digits, digits, digits)
    return form % (row[key], row[key + '_min'], row[key + '_max'])


def _ratio(numerator, denominator):
    return '%.2fx' % (numerator / denominator) if denominator else '-'


def _print_lines(lines):
    widths = [max(len(line[i]) for line in lines)
              for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        print('  '.join(cell.ljust(w) for cell, w in zip(line, widths)))
        if n == 0:
            print('  '.join('-' * w for w in widths))


def print_times(summary):
    by_key = {(r['mode'], r['data_mib']): r for r in summary}
    print('\nMedian [min-max] seconds, request to final state, through the'
          ' API. Modes: stock Nova; the plugin with snapshot_upload ='
          ' at_shelve; with snapshot_upload = after_offload.')
    lines = [('data', 'mode', 'n', 'shelve s', 'stop s', 'shelve/stop',
              'snapshot active s', 'unshelve s', 'start s', 'Glance MiB',
              'cycle s', 'stop+start s', 'cycle/(stop+start)',
              'stock cycle/cycle')]
    for row in summary:
        stock = by_key.get(('stock', row['data_mib']))
        lines.append((
            size_label(row['data_mib'] * MIB), MODE_LABELS[row['mode']],
            str(row['n']), _cell(row, 'shelve_s'), _cell(row, 'stop_s'),
            _ratio(row['shelve_s'], row['stop_s']),
            _cell(row, 'snapshot_active_s'), _cell(row, 'unshelve_s'),
            _cell(row, 'start_s'), '%.0f' % row['glance_mib'],
            _cell(row, 'cycle_s'), _cell(row, 'stop_start_s'),
            _ratio(row['cycle_s'], row['stop_start_s']),
            _ratio(stock['cycle_s'], row['cycle_s'])
            if stock and row['mode'] != 'stock' else ''))
    _print_lines(lines)


def print_size_growth(summary, sizes):
    """Unshelve at each size against the smallest, and against start."""
    smallest = min(sizes) // MIB
    print('\nUnshelve against the smallest size, and against start plus '
          'the scheduling start does not do (conductor + scheduler phases):')
    lines = [('mode', 'data', 'unshelve s', 'vs %s' % size_label(
        smallest * MIB), 'start+scheduling s', 'unshelve/(start+sched)')]
    base = {r['mode']: r for r in summary if r['data_mib'] == smallest}
    for row in summary:
        scheduling = sum(row.get(key, 0.0) for key in SCHEDULING)
        bound = row['start_s'] + scheduling
        lines.append((MODE_LABELS[row['mode']],
                      size_label(row['data_mib'] * MIB),
                      '%.2f' % row['unshelve_s'],
                      _ratio(row['unshelve_s'],
                             base[row['mode']]['unshelve_s']),
                      '%.2f' % bound if scheduling else '-',
                      _ratio(row['unshelve_s'], bound) if scheduling
                      else '-'))
    _print_lines(lines)


def print_machine(summary):
    print('\nThe machine during the timed operations (medians): page cache '
          'to write back at the start, I/O wait share, cores the cloud\'s '
          'services used on average:')
    lines = [('data', 'mode', 'shelve dirty MiB', 'shelve iowait %',
              'shelve cores', 'unshelve dirty MiB', 'unshelve iowait %',
              'unshelve cores')]
    for row in summary:
        lines.append((size_label(row['data_mib'] * MIB),
                      MODE_LABELS[row['mode']],
                      '%.0f' % row['shelve_dirty_mib'],
                      '%.1f' % row['shelve_iowait_pct'],
                      '%.2f' % row['shelve_cores'],
                      '%.0f' % row['unshelve_dirty_mib'],
                      '%.1f' % row['unshelve_iowait_pct'],
                      '%.2f' % row['unshelve_cores']))
    _print_lines(lines)


def print_phases(summary):
    _print_phase_table(
        summary, 'ph_', phases.PHASES,
        'Phases of the unshelve, median seconds (tools/phases.py); '
        'tokens = Keystone validating tokens (within the phases); '
        'filter = HostAggregateGroupFilter, claim = the scheduler\'s '
        'Placement allocation, delete = Glance deleting the snapshot '
        '(part of finish); download, convert and rebase = Glance sending '
        'the snapshot, qemu-img convert and qemu-img rebase (parts of root '
        'disk, when the snapshot is downloaded):',
        ('tokens s', 'filter ms', 'claim ms', 'delete s', 'download s',
         'convert s', 'rebase s'),
        lambda row: (_optional(row, 'ph_tokens_s', '%.2f'),
                     _optional(row, 'ph_filter_ms', '%.1f'),
                     _optional(row, 'ph_claim_ms', '%.0f'),
                     _optional(row, 'ph_delete_s', '%.2f'),
                     _optional(row, 'ph_download_s', '%.2f'),
                     _optional(row, 'ph_convert_s', '%.2f'),
                     _optional(row, 'ph_rebase_s', '%.2f')))


def print_shelve_phases(summary):
    _print_phase_table(
        summary, 'sh_', phases.SHELVE_PHASES,
        'Phases of the shelve, median seconds (tools/phases.py); image = '
        'Glance creating the snapshot\'s record (part of api), tokens = '
        'Keystone validating tokens (within the phases); extract and '
        'upload = the two steps of Nova\'s snapshot (qemu-img convert, '
        'then the upload to Glance), part of snapshot:',
        ('shelve s', 'image s', 'tokens s', 'extract s', 'upload s'),
        lambda row: ('%.2f' % row['shelve_s'],
                     _optional(row, 'sh_image_s', '%.2f'),
                     _optional(row, 'sh_tokens_s', '%.2f'),
                     _optional(row, 'sh_extract', '%.2f'),
                     _optional(row, 'sh_upload', '%.2f')))


def _print_phase_table(summary, prefix, names, title, more_headers,
                       more_cells):
    """The rows that have a profile (the run had debug logs), if any."""
    rows = [r for r in summary if prefix + names[0] in r]
    if not rows:
        return
    print('\n' + title)
    lines = [('data', 'mode') + names + ('sum',) + more_headers]
    for row in rows:
        values = [row.get(prefix + name, 0.0) for name in names]
        lines.append((size_label(row['data_mib'] * MIB),
                      MODE_LABELS[row['mode']]) +
                     tuple('%.2f' % v for v in values) +
                     ('%.2f' % sum(values),) + more_cells(row))
    _print_lines(lines)


def _optional(row, key, form):
    return form % row[key] if key in row else '-'


def print_busy(summary):
    busy = [r for r in summary if 'unshelve_busy_s' in r]
    if not busy:
        return
    print('\nafter_offload: unshelve in the group while another server\'s '
          'upload runs on the same host, against the unshelve once the '
          'host is idle:')
    lines = [('data', 'n', 'during upload s', 'idle s', 'ratio')]
    for row in busy:
        lines.append((size_label(row['data_mib'] * MIB), str(row['n']),
                      _cell(row, 'unshelve_busy_s'),
                      _cell(row, 'unshelve_s'),
                      _ratio(row['unshelve_busy_s'], row['unshelve_s'])))
    _print_lines(lines)


def print_bursts(bursts):
    if not bursts:
        return
    print('\nBurst: the same servers started at once (the floor: nothing is '
          'copied), shelved at once (from SHUTOFF), then unshelved at once; '
          'peak cores of the busiest services while unshelving:')
    services = sorted({key[len('peak_cores_'):] for row in bursts
                       for key in row if key.startswith('peak_cores_')})
    lines = [('mode', 'servers', 'data', 'all started s', 'all offloaded s',
              'all uploaded s', 'all ACTIVE s', 'x start', 'failed',
              'median s', 'unshelves/s', 'Glance MiB', 'hosts') +
             tuple(services)]
    for row in bursts:
        lines.append((MODE_LABELS[row['mode']], str(row['servers']),
                      size_label(row['data_mib'] * MIB),
                      '%.1f' % row['all_started_s'],
                      '%.1f' % row['all_shelved_s'],
                      '%.1f' % row['all_uploaded_s'],
                      '%.1f' % row['all_active_s'],
                      '%.2f' % row['unshelve_vs_start'],
                      str(row['failed_unshelves']),
                      '%.1f' % row['median_server_s'],
                      '%.2f' % row['unshelves_per_s'],
                      '%.0f' % row['glance_mib'], row['on_hosts']) +
                     tuple('%.2f' % row.get('peak_cores_' + s, 0.0)
                           for s in services))
    _print_lines(lines)


# -- files -------------------------------------------------------------------

def write_csv(path, rows):
    if not rows:
        return
    # Rows of different modes have different columns.
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval='')
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    return pyplot


def plot_unshelve(path, summary):
    series = [('stock', 'unshelve_s', 'unshelve, stock Nova', 'o-'),
              ('plugin', 'unshelve_s', 'unshelve, at_shelve', 's-'),
              ('fast-shelve', 'unshelve_s', 'unshelve, after_offload', 'D-'),
              ('plugin', 'start_s', 'start of a stopped server (bound)',
               '^--')]
    _plot_series(path, summary, series, 'Unshelve time against disk data',
                 'seconds, request to ACTIVE (median, min-max)')


def plot_shelve(path, summary):
    series = [('stock', 'shelve_s', 'shelve, stock Nova', 'o-'),
              ('plugin', 'shelve_s', 'shelve, at_shelve', 's-'),
              ('fast-shelve', 'shelve_s', 'shelve, after_offload', 'D-'),
              ('fast-shelve', 'snapshot_active_s',
               'snapshot active, after_offload', 'D:'),
              ('stock', 'stop_s', 'stop of a running server (bound)',
               '^--')]
    _plot_series(path, summary, series, 'Shelve time against disk data',
                 'seconds from the request (median, min-max)')


def _plot_series(path, summary, series, title, ylabel):
    pyplot = _pyplot()
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for mode, key, label, style in series:
        rows = [r for r in summary if r['mode'] == mode and key in r]
        if not rows:
            continue
        xs = [r['data_mib'] / 1024 for r in rows]
        ys = [r[key] for r in rows]
        err = [[r[key] - r[key + '_min'] for r in rows],
               [r[key + '_max'] - r[key] for r in rows]]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
    ax.set_xlabel('data written to the root disk (GiB)')
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


def plot_phases(path, summary):
    """Stacked bars: the median of each phase, per mode and size."""
    rows = [r for r in summary if 'ph_api' in r]
    if not rows:
        return
    pyplot = _pyplot()
    # Stock Nova's download dwarfs the rest: its own panel and scale.
    fig, (plugin, stock, shelve) = pyplot.subplots(
        1, 3, figsize=(16, 5), gridspec_kw={'width_ratios': [2, 1, 3]})
    _stack(pyplot, plugin, [r for r in rows if r['mode'] != 'stock'], 'ph_',
           phases.PHASES, 'Unshelve with the plugin')
    _stack(pyplot, stock, [r for r in rows if r['mode'] == 'stock'], 'ph_',
           phases.PHASES, 'Unshelve, stock Nova')
    _stack(pyplot, shelve, [r for r in rows if 'sh_api' in r], 'sh_',
           phases.SHELVE_PHASES, 'Shelve')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


def _stack(pyplot, ax, rows, prefix, names, title):
    labels = ['%s\n%s' % (MODE_LABELS[r['mode']],
                          size_label(r['data_mib'] * MIB)) for r in rows]
    bottoms = [0.0] * len(rows)
    colours = pyplot.get_cmap('tab10')
    for n, name in enumerate(names):
        heights = [r.get(prefix + name, 0.0) for r in rows]
        ax.bar(labels, heights, bottom=bottoms, label=name,
               color=colours(n))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_ylabel('seconds (median of each phase)')
    ax.set_title(title)
    ax.tick_params(axis='x', labelsize=8)
    ax.legend(fontsize=7, loc='upper left', ncol=2)
    ax.grid(True, axis='y', alpha=0.3)


def plot_bursts(path, completions):
    """ACTIVE servers against time since the first unshelve request."""
    if not completions:
        return
    pyplot = _pyplot()
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for mode, times in completions.items():
        ax.step([0.0] + list(times), range(len(times) + 1), where='post',
                label=MODE_LABELS[mode])
    ax.set_xlabel('seconds since the burst of unshelve requests')
    ax.set_ylabel('servers ACTIVE')
    ax.set_title('Burst: all shelved servers unshelved at once')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


def report(out, samples, sizes, bursts, completions):
    summary = summarize(samples, sizes)
    write_csv(os.path.join(out, 'samples.csv'), samples)
    write_csv(os.path.join(out, 'summary.csv'), summary)
    write_csv(os.path.join(out, 'burst.csv'), bursts)
    write_csv(os.path.join(out, 'burst_times.csv'), [
        {'mode': mode, 'server': n, 'active_s': round(t, 2)}
        for mode, times in completions.items()
        for n, t in enumerate(times, 1)])
    plot_unshelve(os.path.join(out, 'unshelve.png'), summary)
    plot_shelve(os.path.join(out, 'shelve.png'), summary)
    plot_phases(os.path.join(out, 'phases.png'), summary)
    plot_bursts(os.path.join(out, 'burst.png'), completions)
    print_times(summary)
    print_size_growth(summary, sizes)
    print_phases(summary)
    print_shelve_phases(summary)
    print_machine(summary)
    print_busy(summary)
    print_bursts(bursts)
    print('\nCSV and plots in %s/: samples, summary, burst, burst_times '
          '(.csv); unshelve, shelve, phases, burst (.png)' % out)
