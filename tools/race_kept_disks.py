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

"""Race processes for the same kept disk and print the outcome counts.

    python -m tools.race_kept_disks [--rounds 1000] [--dir PATH
                                     [--other-client PATH ...]]

Scenarios: eight claims of one disk; claim against reclaim; reclaim against
reclaim; another host emptying the trash while a reclaim deletes; eight
hosts taking over the abandoned upload lease of one disk. Each round must
end with exactly one winner (for the lease: the one whose lease file is the
only one left), nothing raised, no data lost and nothing left in flight;
the columns count the rounds that did not (``stuck``: rounds whose entries
could not be removed afterwards, which the next rounds work beside), and
the first problem of each kind is printed. ``--dir`` puts the storage on a
filesystem of your choice (an NFS mount shared by nothing else, say); the
default is a temporary directory. ``--other-client`` names the mount point
of another client of the filesystem that ``--dir`` is on
(``tools/gluster.sh mount`` makes one): the racing processes take turns
among the clients, as hosts with a mount each would. Exits non-zero if any
round went wrong.
"""

import argparse
import os
import sys
import tempfile
import time


from tests.unit import races


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=1000)
    parser.add_argument('--dir', help='where to make the storage')
    parser.add_argument('--other-client', action='append', default=[],
                        metavar='PATH',
                        help='the mount point of --dir through another '
                             'client (repeatable; needs --dir)')
    args = parser.parse_args()
    if args.other_client and not args.dir:
        parser.error('--other-client needs --dir: the mount of the same '
                     'filesystem through the first client')
    failed = False
    print('%-24s %7s %7s %7s %7s %7s %7s %7s %8s' % (
        'scenario', 'rounds', 'ok', 'raised', 'no-1', 'lost', 'left',
        'stuck', 'seconds'))
    for name, operations in races.SCENARIOS.items():
        with tempfile.TemporaryDirectory(dir=args.dir) as path:
            start = time.monotonic()
            # The same directory through every other client.
            others = [os.path.join(mount, os.path.basename(path))
                      for mount in args.other_client]
            problems = {}
            counts = races.race(path, operations, args.rounds, others,
                                problems)
            elapsed = time.monotonic() - start
        print('%-24s %7d %7d %7d %7d %7d %7d %7d %8.1f' % (
            name, args.rounds, counts['ok'], counts['raised'],
            counts['not one winner'], counts['data lost'],
            counts['left behind'], counts['not cleared'], elapsed))
        for outcome, problem in sorted(problems.items()):
            failed = True
            print('  first %s: %s' % (
                outcome, problem.strip().splitlines()[-1]))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
