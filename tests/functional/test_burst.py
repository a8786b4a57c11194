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

"""Every server of a cloud unshelved at once, each onto its kept disk.

24 servers on 6 hosts: storage groups g1 (A, B) and g2 (g2-1, g2-2), and
C and local-2 with storage of their own. All are shelved, then every
unshelve is requested before the first one ends. The groups have room for
all of them, so each must come back to the storage it was shelved on,
reuse its kept disk (exactly one claim, no image download) and leave no
kept disk behind; the filter must look the instance up once per request.
The times are tools/bench_burst.py's business, not asserted here.
"""

from tests.functional import burst


class TestUnshelveBurst(burst.BurstCloud):

    instances = 24
    layout = burst.Layout.of(groups=2, hosts_per_group=2, local_hosts=2)

    def test_every_unshelve_reuses_its_kept_disk(self):
        outcome = self.run_burst()

        strays = [(i.uuid, i.shelved_from, i.unshelved_on)
                  for i in outcome.instances if not i.in_its_storage]
        self.assertEqual([], strays)
        self.assertEqual(0, outcome.downloads)
        self.assertEqual([1] * self.instances,
                         [i.claims for i in outcome.instances])
        self.assertEqual({}, dict(self.claims.lost))
        self.assertEqual([], outcome.kept_left)
        self.assertEqual(
            sorted([i.uuid] for i in outcome.instances),
            sorted(r.instance_uuids for r in outcome.requests))
        self.assertEqual([1] * self.instances,
                         [r.lookups for r in outcome.requests])
