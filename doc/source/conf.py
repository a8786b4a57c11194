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

"""Sphinx configuration of the nova-shelve-accel documentation.

Built by ``tox -e docs`` with warnings as errors.
"""

extensions = [
    # show-options: the configuration reference, generated from the options
    # registered under the nova_shelve_accel oslo.config.opts entry point.
    'oslo_config.sphinxext',
]

master_doc = 'index'

project = 'nova-shelve-accel'
copyright = '2026, nova-shelve-accel developers'

add_function_parentheses = True
add_module_names = True
pygments_style = 'sphinx'

# Sphinx's own theme: the project is not published as part of another
# organisation's documentation.
html_theme = 'alabaster'
htmlhelp_basename = 'nova-shelve-acceldoc'
