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

"""Hosts with skewed clocks on one kept-disk storage: print the verdicts.

    python -m tools.skew_kept_disks [--skew +2h ...]
                                    [--dir PATH [--skewed-client PATH]]

For each skew (default: +10m, -10m, +2h, -2h), each kind of work (an
upload lease, a staging directory) and each side (the holder's clock off,
or the watcher's), a holder keeps its work alive and then dies, while a
watcher of another host looks at it (see tests/unit/skew.py). Each must
end "ok": not taken while alive, taken once dead. The skewed process runs
under libfaketime (Debian's package faketime). ``--dir`` puts the storage
on a filesystem of your choice; ``--skewed-client`` names the mount point
of the same filesystem through a client that runs under the same skew
(``FAKETIME=+2h LD_PRELOAD=<libfaketime> tools/gluster.sh mount ...``), for
a filesystem that stamps the client's time: give exactly one ``--skew``
with it. Exits non-zero if any scenario is not ok.
"""

import argparse
import sys
import tempfile
import time


from tests.unit import skew


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--skew', action='append', metavar='OFFSET',
                        help='a libfaketime offset such as +2h or -10m '
                             '(repeatable)')
    parser.add_argument('--dir', help='where to make the storage')
    parser.add_argument('--skewed-client', metavar='PATH',
                        help='the mount point of --dir through a client '
                             'running under the one --skew')
    args = parser.parse_args()
    skews = args.skew or list(skew.SKEWS)
    if args.skewed_client and (not args.dir or len(skews) != 1):
        parser.error('--skewed-client needs --dir and exactly one --skew: '
                     'its client runs under that skew')
    if not skew.libfaketime():
        parser.error('libfaketime is not installed (as root: apt-get '
                     'install faketime)')
    failed = False
    print('%-8s %-8s %-6s %-12s %7s  %s' % (
        'work', 'skewed', 'skew', 'verdict', 'seconds', 'details'))
    for offset in skews:
        for kind in skew.KINDS:
            for side in ('holder', 'watcher'):
                with tempfile.TemporaryDirectory(dir=args.dir) as path:
                    start = time.monotonic()
                    verdict, details = skew.run(kind, side, offset, path,
                                                args.skewed_client)
                    elapsed = time.monotonic() - start
                print('%-8s %-8s %-6s %-12s %7.1f  %s' % (
                    kind, side, offset, verdict, elapsed, details),
                    flush=True)
                failed = failed or verdict != 'ok'
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
