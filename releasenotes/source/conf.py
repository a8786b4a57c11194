# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#   http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Sphinx configuration of the nova-shelve-accel release notes.

Built by ``tox -e releasenotes`` with warnings as errors. The notes are the
YAML files of ``releasenotes/notes`` (``reno new <slug>`` adds one); reno
reads them from the git history and sorts them by the release that added
them, so this file names no version.
"""

extensions = [
    'reno.sphinxext',
]

master_doc = 'index'

project = 'nova-shelve-accel release notes'
copyright = '2026, nova-shelve-accel developers'

version = ''
release = ''

pygments_style = 'sphinx'

# Sphinx's own theme, as the documentation uses.
html_theme = 'alabaster'
htmlhelp_basename = 'nova-shelve-accel-releasenotes'
