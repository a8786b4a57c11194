#!/bin/bash
# A real OpenStack cloud on loopback for nova-shelve-accel's end-to-end tests
# and benchmark: Keystone, Placement, Glance, Neutron API, Nova
# API/conductor/scheduler and three nova-compute services on real
# libvirt/QEMU (TCG). Every API authenticates its callers with Keystone
# tokens (keystonemiddleware), as in a production cloud.
#
#   cloud.sh up [--storage local|gluster] [--skew HOST=OFFSET]...
#               [--token-expiration SECONDS] [--nova VERSION]
#                            install what is missing, start everything;
#                            --nova runs an older Nova release and every
#                            service of its OpenStack series: VERSION is
#                            the nova pin of a constraints/SERIES.txt that
#                            also pins Keystone, Glance and Neutron (33.0.2,
#                            2026.1); they go into a virtualenv of their
#                            own, $SHELVE_ACCEL_VENV-SERIES. Default: Nova
#                            34.0.0 (2026.2), upper-constraints.txt;
#                            --storage says what g1's shared instances_path
#                            is (default: SHELVE_ACCEL_STORAGE, else
#                            gluster; local is quicker to set up);
#                            --skew runs HOST (c1, c2 or c3) with its clock
#                            off by OFFSET, such as +10m, -2h or -90s
#                            (default: SHELVE_ACCEL_SKEW, a
#                            space-separated list of HOST=OFFSET): HOST's
#                            nova-compute and what it runs (wall-clock.c),
#                            and its GlusterFS client (libfaketime), which
#                            stamps the times of the files HOST writes; its
#                            libvirtd and guests keep the machine's clock;
#                            --token-expiration: the lifetime of Keystone's
#                            tokens (default: SHELVE_ACCEL_TOKEN_EXPIRATION,
#                            else 3600)
#   cloud.sh token-expiration SECONDS
#                            restart Keystone with that token lifetime; the
#                            tokens it issued before keep theirs
#   cloud.sh down            stop everything and remove all state
#   cloud.sh mode plugin     computes run PartialOffloadLibvirtDriver and the
#                            scheduler runs HostAggregateGroupFilter (default)
#   cloud.sh mode fast-shelve
#                            as plugin, with [shelve_accel] snapshot_upload =
#                            after_offload: shelve skips the snapshot and the
#                            kept disk is uploaded after the offload;
#                            SHELVE_ACCEL_UPLOAD_DELAY=SECONDS in the
#                            caller's environment sets [shelve_accel]
#                            snapshot_upload_delay (default 0)
#   cloud.sh mode stock      computes run libvirt.LibvirtDriver, no filter
#   cloud.sh mode inert      computes load PartialOffloadLibvirtDriver with
#                            NOVA_SHELVE_ACCEL_INERT=1 (every hook Nova's
#                            own), no filter: the benchmark's A/B of the
#                            cost of loading the plugin
#   cloud.sh status          what runs, where the logs are
#   cloud.sh compute-restart HOST
#                            stop nova-compute on HOST (c1, c2 or c3) as
#                            'down' does (SIGTERM, then SIGKILL), start it
#                            again and wait until its service is up and its
#                            RPC queue has a consumer.
#                            SHELVE_ACCEL_EXTRA_CONF=FILE in the caller's
#                            environment adds that configuration file, last,
#                            to this start of it (a test's bad credentials,
#                            for instance); 'mode' and later restarts
#                            leave it out.
#                            NOVA_SHELVE_ACCEL_CRASH_AT,
#                            NOVA_SHELVE_ACCEL_FAIL_AT and
#                            NOVA_SHELVE_ACCEL_STOP_AT, when set in the
#                            caller's environment, go to this one
#                            nova-compute (see nova_shelve_accel/faults.py)
#                            and to no other process. Fails, naming the
#                            log, when the service does not come back (a
#                            cut point may have killed it in start-up).
#   cloud.sh compute-alive HOST
#                            exit 0 if nova-compute on HOST runs, 1 if not
#   cloud.sh storage-client-kill HOST
#                            (--storage gluster, c1 or c2) kill HOST's
#                            GlusterFS client with SIGKILL, as a crash of
#                            it would: HOST's processes get "Transport
#                            endpoint is not connected" on the shared
#                            storage until storage-remount
#   cloud.sh storage-remount HOST
#                            unmount HOST's client (lazily: a dead one
#                            cannot be unmounted otherwise) and mount the
#                            volume again with a new client, in HOST's
#                            namespace
#
# Compute hosts c1 and c2 share one instances_path and form aggregate g1
# (shelve_storage_group=g1); c3 has its own. With --storage local the
# shared instances_path is one local directory; with --storage gluster it
# is a GlusterFS volume (tools/gluster.sh) that c1 and c2 each mount with a
# client of their own, inside their own mount namespaces, where their
# nova-compute and guests run; root's namespace has a third client at the
# same path, for the tests to look through. Each compute host gets its own
# libvirtd, started in private UTS and mount namespaces: libvirt reports the
# namespace's hostname (c1, c2, c3) as the hypervisor name, and each libvirtd
# keeps its domains, sockets and state in the host's own directory, so every
# nova-compute sees and manages only its own guests.
#
# Run as root on Debian bookworm. Environment: SHELVE_ACCEL_STATE (default
# /var/lib/nova-shelve-accel-cloud), SHELVE_ACCEL_VENV (default
# /opt/nova-shelve-accel/venv). 'up' writes the virtualenv it used and its
# constraints file into the state directory (venv, constraints): the other
# commands, the e2e tests and the tools take them from there.
set -euo pipefail

# Fault injection is for the one nova-compute that compute-restart starts:
# take it out of the environment that every other process inherits.
FAULT_VARS=(NOVA_SHELVE_ACCEL_CRASH_AT NOVA_SHELVE_ACCEL_FAIL_AT
            NOVA_SHELVE_ACCEL_STOP_AT)
FAULT_ENV=()
for _var in "${FAULT_VARS[@]}"; do
    if [ -n "${!_var+set}" ]; then
        FAULT_ENV+=("$_var=${!_var}")
        unset "$_var"
    fi
done
unset _var
# Likewise SHELVE_ACCEL_EXTRA_CONF, for the nova-compute of compute-restart.
EXTRA_CONF_ARG=${SHELVE_ACCEL_EXTRA_CONF:-}
unset SHELVE_ACCEL_EXTRA_CONF
EXTRA_CONF=

TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$TOOLS/../.." && pwd)
STATE=${SHELVE_ACCEL_STATE:-/var/lib/nova-shelve-accel-cloud}
BASE_VENV=${SHELVE_ACCEL_VENV:-/opt/nova-shelve-accel/venv}
# The cloud's own, once it is up (cmd_up chooses them).
VENV=$(cat "$STATE/venv" 2>/dev/null || echo "$BASE_VENV")
CONSTRAINTS=$(cat "$STATE/constraints" 2>/dev/null ||
              echo "$REPO/upper-constraints.txt")
ETC=$STATE/etc
LOGS=$STATE/logs
RUN=$STATE/run
DB_PREFIX=sa_
DB_USER=shelve_accel
DB_PASS=shelve_accel
RABBIT_VHOST=shelve_accel
CLOUD_NAME=shelve-accel
CLOUDS_YAML=/etc/openstack/clouds.yaml
COMPUTES=(c1 c2 c3)
SHARED_INSTANCES=$STATE/storage/g1
GLUSTER=$TOOLS/../gluster.sh
GLUSTER_STATE=$STATE/gluster
WALL_CLOCK_LIB=$STATE/wall-clock.so
FLAVOR=m1.shelve
BURST_FLAVOR=m1.burst
DATABASES=(keystone nova_api nova_cell0 nova placement glance neutron)

KEYSTONE_URL=http://127.0.0.1:5000
PLACEMENT_URL=http://127.0.0.1:8778
GLANCE_URL=http://127.0.0.1:9292
NEUTRON_URL=http://127.0.0.1:9696
NOVA_URL=http://127.0.0.1:8774
# Keystone's users (tools/cloud/identity.py). A throw-away cloud on
# loopback: the passwords are no secret, clouds.yaml holds them anyway.
ADMIN_PASSWORD=shelve-accel-admin
SERVICE_PASSWORD=shelve-accel-service
DEMO_PASSWORD=shelve-accel-demo
DEMO_CLOUD_NAME=shelve-accel-demo

APT_PACKAGES=(libvirt-daemon-system libvirt-daemon-driver-qemu
              libvirt-clients qemu-system-x86
              qemu-utils libvirt-dev pkg-config python3-venv python3-dev
              gcc mariadb-server mariadb-client rabbitmq-server curl
              faketime procps)
# py-spy: the soak writes down the stacks of a nova-compute that hung.
PIP_PACKAGES=(nova keystone openstack-placement glance neutron
              python-openstackclient osc-placement gunicorn PyMySQL
              pyroute2 libvirt-python py-spy)

say() { printf '[cloud] %s\n' "$*"; }
die() { printf '[cloud] ERROR: %s\n' "$*" >&2; exit 1; }

db_url() { echo "mysql+pymysql://$DB_USER:$DB_PASS@127.0.0.1/$DB_PREFIX$1?charset=utf8"; }

# ---------------------------------------------------------------- install

install_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt: installing ${missing[*]}"
        apt-get update -q
        # No init system here: keep package scripts from starting services.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            "${missing[@]}" ||
            { rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
        rm -f /usr/sbin/policy-rc.d
    fi
}

install_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "pip: creating $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q -U pip
    fi
    # Reinstall only when the constraints changed; the project itself is
    # always reinstalled from this checkout (editable, so cheap).
    local stamp=$VENV/.shelve-accel-constraints
    if ! cmp -s "$CONSTRAINTS" "$stamp"; then
        say "pip: installing OpenStack services (several minutes)"
        "$VENV/bin/pip" install -q -c "$CONSTRAINTS" "${PIP_PACKAGES[@]}"
        cp "$CONSTRAINTS" "$stamp"
    fi
    "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e "$REPO"
    say "Nova $("$VENV/bin/python" -c \
        'import nova.version as v; print(v.version_string())')" \
        "in $VENV"
}

# nova_release VERSION: choose the constraints file that pins nova===VERSION
# and the services of its series, and a virtualenv for that series.
nova_release() {
    local version=$1 file pins=()
    for file in "$REPO"/constraints/*.txt; do
        if grep -qx "nova===$version" "$file"; then
            grep -q '^keystone===' "$file" &&
                grep -q '^glance===' "$file" &&
                grep -q '^neutron===' "$file" ||
                die "$file pins Nova $version but not Keystone, Glance" \
                    "and Neutron of its series: the cloud needs all four"
            CONSTRAINTS=$file
            VENV=$BASE_VENV-$(basename "$file" .txt)
            return
        fi
    done
    grep -qx "nova===$version" "$REPO/upper-constraints.txt" && return
    for file in "$REPO"/constraints/*.txt; do
        grep -q '^keystone===' "$file" &&
            pins+=("$(grep '^nova===' "$file" | cut -d= -f4)")
    done
    die "no constraints file pins Nova $version with its series' services;" \
        "use --nova with one of: ${pins[*]:-(none)}," \
        "or leave it out for $(grep '^nova===' "$REPO/upper-constraints.txt" |
                              cut -d= -f4)"
}

# ------------------------------------------------------ backing services

mariadb_up() { mysqladmin --protocol=tcp -h 127.0.0.1 -uroot status \
                   >/dev/null 2>&1 || mysqladmin status >/dev/null 2>&1; }

ensure_mariadb() {
    if ! mariadb_up; then
        say "MariaDB is not running: starting it"
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql \
            >/dev/null
        start-stop-daemon --start --oknodo --background \
            --exec /usr/sbin/mariadbd -- --user=mysql
        wait_for "MariaDB" /var/log/mysql/error.log mariadb_up 60
    fi
}

rabbit_up() { rabbitmqctl -q status >/dev/null 2>&1; }

ensure_rabbitmq() {
    if ! rabbit_up; then
        say "RabbitMQ is not running: starting it"
        rabbitmq-server -detached
        wait_for "RabbitMQ" /var/log/rabbitmq rabbit_up 120
    fi
}

sql() { mysql -uroot -e "$1"; }

create_databases() {
    local db
    for db in "${DATABASES[@]}"; do
        sql "DROP DATABASE IF EXISTS $DB_PREFIX$db;
             CREATE DATABASE $DB_PREFIX$db CHARACTER SET utf8mb4;"
    done
    sql "CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1'
             IDENTIFIED BY '$DB_PASS';
         CREATE USER IF NOT EXISTS '$DB_USER'@'localhost'
             IDENTIFIED BY '$DB_PASS';
         GRANT ALL ON \`${DB_PREFIX}%\`.* TO '$DB_USER'@'127.0.0.1';
         GRANT ALL ON \`${DB_PREFIX}%\`.* TO '$DB_USER'@'localhost';"
}

create_vhost() {
    rabbitmqctl -q delete_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true
    rabbitmqctl -q add_vhost "$RABBIT_VHOST" >/dev/null
    rabbitmqctl -q set_permissions -p "$RABBIT_VHOST" guest '.*' '.*' '.*' \
        >/dev/null
}

# ------------------------------------------------------------ processes

# run_logged LOG CMD...: run a setup command with its output in LOG; stop,
# naming the command and LOG, when it fails.
run_logged() {
    local log=$1; shift
    "$@" >>"$log" 2>&1 ||
        die "$(basename "$1") ${*:2} failed; its log is $log"
}

# start NAME CMD...: run CMD in its own session, log to $LOGS/NAME.log.
start() {
    local name=$1; shift
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! > "$RUN/$name.pid"
}

# alive PID: the process exists and is not a zombie (a container's init may
# never reap what it inherits).
alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

running() {
    local pidfile=$RUN/$1.pid
    [ -f "$pidfile" ] && alive "$(cat "$pidfile")"
}

# any_alive PID...: one of them still runs.
any_alive() {
    local pid
    for pid in "$@"; do
        alive "$pid" && return 0
    done
    return 1
}

# stop NAME...: SIGTERM to each, SIGKILL to what still runs 10 s later.
# Together: nova-compute of Nova 34 never ends its manager's graceful
# shutdown (its executors wait for the libvirt event thread until
# manager_shutdown_timeout, 160 s by default, 0 in this cloud).
stop() {
    local name pids=() pid i
    for name in "$@"; do
        [ -f "$RUN/$name.pid" ] || continue
        pid=$(cat "$RUN/$name.pid")
        pids+=("$pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null ||
            true
    done
    for i in $(seq 50); do
        any_alive "${pids[@]}" || break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null ||
            true
    done
    for name in "$@"; do
        rm -f "$RUN/$name.pid"
    done
}

# wait_for NAME LOG CHECK TIMEOUT [PIDNAME]: poll CHECK; fail naming the
# service and its log when it does not come up or its process died.
wait_for() {
    local name=$1 log=$2 check=$3 timeout=$4 proc=${5:-}
    local deadline=$((SECONDS + timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if $check; then return 0; fi
        if [ -n "$proc" ] && ! running "$proc"; then
            tail -n 20 "$log" >&2 || true
            die "$name exited during startup; its log is $log"
        fi
        sleep 1
    done
    tail -n 20 "$log" >&2 2>/dev/null || true
    die "$name did not come up within ${timeout}s; its log is $log"
}

http_ok() { curl -s -o /dev/null -m 5 "$1"; }

# --keep-alive 0: every response closes its connection ("Connection:
# close"), so no client reuses one. With gunicorn's default of 2 s the
# openstack client, which polls every 2 s (server delete --wait), now and
# then reused a connection the server was closing that instant ("Remote
# end closed connection without response"); with 75 s, the two workers
# nova-scheduler forks shared the Placement connection their parent had
# opened, and each read the other's responses (BadStatusLine).
gunicorn_app() {
    local name=$1 port=$2 app=$3; shift 3
    start "$name" env "$@" "$VENV/bin/gunicorn" \
        --bind "127.0.0.1:$port" --worker-class gthread --workers 1 \
        --threads 8 --timeout 3600 --keep-alive 0 \
        --pythonpath "$TOOLS" --no-control-socket \
        --access-logfile "$LOGS/$name-access.log" \
        --access-logformat '%(t)s "%(r)s" %(s)s %(B)s %(L)s' \
        "$app"
    # shellcheck disable=SC2317
    eval "_check_$name() { http_ok http://127.0.0.1:$port/; }"
    wait_for "$name" "$LOGS/$name.log" "_check_$name" 120 "$name"
}

# ---------------------------------------------------------- configuration

# password_auth SECTION USER: the options of a section that authenticates
# as USER, a service user of the service project (tools/cloud/identity.py).
password_auth() {
    cat <<EOF
[$1]
auth_type = password
auth_url = $KEYSTONE_URL
username = $2
password = $SERVICE_PASSWORD
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
EOF
}

# authtoken USER: keystonemiddleware's section of an API that validates its
# callers' tokens as USER. A caller's token that comes with a valid service
# token of a user with the service role may have expired
# (service_token_roles_required): how Nova's work that outlives a request
# reaches Glance, Neutron and Placement.
authtoken() {
    password_auth keystone_authtoken "$1"
    cat <<EOF
www_authenticate_uri = $KEYSTONE_URL
service_token_roles_required = True
EOF
}

token_expiration() {
    local seconds=$1
    [[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -ge 130 ] ||
        die "bad token expiration '$seconds': use a number of seconds," \
            "130 or more (keystoneauth renews a token that expires within" \
            "120 s at every request)"
}

write_keystone_conf() {
    local expiration=$1
    mkdir -p "$ETC/keystone"
    cat > "$ETC/keystone/keystone.conf" <<EOF
# Written by 'cloud.sh up' and 'cloud.sh token-expiration'.
[DEFAULT]
debug = False
[database]
connection = $(db_url keystone)
[identity]
# bcrypt's least work factor: every token issued checks a password, and a
# test cloud issues thousands (12 rounds take 0.3 s of CPU each here).
password_hash_rounds = 4
[token]
provider = fernet
# Seconds a token lives: 'cloud.sh up --token-expiration' and
# 'cloud.sh token-expiration'. Keep it above 120: keystoneauth fetches a
# new token for every request when the one it holds expires within 120 s.
expiration = $expiration
[fernet_tokens]
key_repository = $ETC/keystone/fernet-keys
[fernet_receipts]
key_repository = $ETC/keystone/fernet-keys
[credential]
key_repository = $ETC/keystone/credential-keys
EOF
}

start_keystone() {
    gunicorn_app keystone 5000 \
        'wsgi_apps:load("keystone.wsgi.api", "keystone")' \
        OS_KEYSTONE_CONFIG_DIR="$ETC/keystone"
}

keystone_manage() {
    run_logged "$LOGS/keystone-manage.log" "$VENV/bin/keystone-manage" \
        --config-file "$ETC/keystone/keystone.conf" "$@"
}

setup_keystone() {
    keystone_manage db_sync
    keystone_manage fernet_setup --keystone-user root --keystone-group root
    keystone_manage credential_setup --keystone-user root \
        --keystone-group root
    keystone_manage bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
        --bootstrap-admin-url "$KEYSTONE_URL/v3" \
        --bootstrap-internal-url "$KEYSTONE_URL/v3" \
        --bootstrap-public-url "$KEYSTONE_URL/v3" \
        --bootstrap-region-id RegionOne
    start_keystone
    run_logged "$LOGS/keystone-manage.log" "$VENV/bin/python" \
        "$TOOLS/identity.py" "$KEYSTONE_URL" "$ADMIN_PASSWORD" \
        "$SERVICE_PASSWORD" "$DEMO_PASSWORD" \
        "compute=nova=$NOVA_URL/v2.1" "image=glance=$GLANCE_URL" \
        "network=neutron=$NEUTRON_URL" "placement=placement=$PLACEMENT_URL"
}

write_placement_conf() {
    mkdir -p "$ETC/placement"
    cat > "$ETC/placement/placement.conf" <<EOF
[DEFAULT]
debug = False
[api]
auth_strategy = keystone
[placement_database]
connection = $(db_url placement)
$(authtoken placement)
EOF
}

write_glance_conf() {
    mkdir -p "$ETC/glance" "$STATE/glance/images" "$STATE/glance/staging" \
        "$STATE/glance/tasks"
    cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/glance/"
    # delayed_delete: Nova's unshelve deletes the snapshot before it shows
    # the server ACTIVE, and removing gigabytes from a store takes time
    # that grows with the image (here ext4 mounted with 'discard' trims
    # what it frees). Marked deleted at once, the data goes with the
    # scrubber, outside every request's path: what the admin guide
    # recommends.
    cat > "$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
enabled_backends = file:file
delayed_delete = True
scrub_time = 0
worker_self_reference_url = $GLANCE_URL
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = $STATE/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $STATE/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $STATE/glance/tasks
[database]
connection = $(db_url glance)
[paste_deploy]
flavor = keystone
config_file = $ETC/glance/glance-api-paste.ini
[oslo_concurrency]
lock_path = $STATE/glance/lock
$(authtoken glance)
EOF
    cat > "$ETC/glance/glance-scrubber.conf" <<EOF
[DEFAULT]
# Seconds between the scrubber's passes over pending deletes.
wakeup_time = 30
EOF
}

write_neutron_conf() {
    mkdir -p "$ETC/neutron"
    cp "$VENV/etc/neutron/api-paste.ini" "$ETC/neutron/"
    cat > "$ETC/neutron/neutron.conf" <<EOF
[DEFAULT]
auth_strategy = keystone
api_paste_config = $ETC/neutron/api-paste.ini
core_plugin = ml2
# The Port model gains its port_forwardings relationship only when these
# plugins load; ML2 alone fails to list ports without it.
service_plugins = router,port_forwarding
transport_url = rabbit://guest:guest@127.0.0.1:5672/$RABBIT_VHOST
[database]
connection = $(db_url neutron)
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers =
extension_drivers =
[oslo_concurrency]
lock_path = $STATE/neutron/lock
$(authtoken neutron)
# Port events for Nova (os-server-external-events needs the service role).
$(password_auth nova neutron)
EOF
}

write_nova_conf() {
    mkdir -p "$ETC/nova" "$STATE/nova"
    cp "$VENV/etc/nova/api-paste.ini" "$ETC/nova/"
    cat > "$ETC/nova/nova.conf" <<EOF
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:5672/$RABBIT_VHOST
my_ip = 127.0.0.1
state_path = $STATE/nova
# Shelve offloads at once, as 'openstack server shelve --offload' would.
shelved_offload_time = 0
# The test guests run firmware only and never answer an ACPI shutdown:
# power off at once rather than wait 60 s for them (stop and shelve alike).
shutdown_timeout = 0
# Room for the benchmark's burst of tiny guests (tools/bench_shelve.py
# --burst): 2 CPUs per host would hold 8 one-vCPU guests at Nova's
# default ratio; the guests run firmware only and are mostly idle.
cpu_allocation_ratio = 32.0
[quota]
instances = -1
cores = -1
ram = -1
[wsgi]
api_paste_config = $ETC/nova/api-paste.ini
[api_database]
connection = $(db_url nova_api)
[database]
connection = $(db_url nova)
$(authtoken nova)
$(password_auth neutron neutron)
$(password_auth placement placement)
# Nova sends its own token with every request it makes for a user, and
# the APIs accept the user's token with it even once it has expired: work
# that outlives the request still gets done, such as an upload of a kept
# disk after the offload (snapshot_upload = after_offload). The same
# credentials upload a kept disk that another host, or this one before a
# restart, left pending, and evict kept disks.
$(password_auth service_user nova)
send_service_user_token = True
[scheduler]
discover_hosts_in_cells_interval = -1
[filter_scheduler]
available_filters = nova.scheduler.filters.all_filters
available_filters = nova_shelve_accel.scheduler.filters.HostAggregateGroupFilter
[libvirt]
virt_type = qemu
images_type = qcow2
[image_cache]
# Reclaiming kept disks runs in the image cache pass: often, so that the
# end-to-end tests can watch it.
manager_interval = 20
[vnc]
enabled = False
[spice]
enabled = False
# Notifications on RabbitMQ, as a cloud with Ceilometer has them: the
# end-to-end tests consume nova-shelve-accel's events there.
[oslo_messaging_notifications]
driver = messagingv2
[oslo_concurrency]
lock_path = $STATE/nova/lock
EOF
}

write_compute_conf() {
    local host=$1 instances
    if [ "$host" = c3 ]; then
        instances=$STATE/storage/c3
    else
        instances=$SHARED_INSTANCES
    fi
    mkdir -p "$instances" "$STATE/$host/state" "$STATE/$host/lock"
    # manager_shutdown_timeout 0: the manager's part of Nova 34's graceful
    # stop never ends here (see stop()); without the wait each stop of a
    # compute (every mode switch) takes 5 s instead of 10 s.
    cat > "$ETC/nova/$host.conf" <<EOF
[DEFAULT]
host = $host
manager_shutdown_timeout = 0
instances_path = $instances
state_path = $STATE/$host/state
[libvirt]
connection_uri = $(libvirt_uri "$host")
[nova_sys_admin]
helper_command = $VENV/bin/privsep-helper $(compute_conf_args "$host")
[oslo_concurrency]
lock_path = $STATE/$host/lock
EOF
}

compute_conf_args() {
    printf -- '--config-file %s ' "$ETC/nova/nova.conf" "$ETC/nova/$1.conf" \
        "$ETC/nova/mode.conf" ${EXTRA_CONF:+"$EXTRA_CONF"}
}

write_mode_conf() {
    local mode=$1 driver filters upload=at_shelve
    # Nova's default weighers; with the plugin, its headroom weigher beside
    # them, on one line as the install guide (weigher.rst) writes it.
    local weighers=nova.scheduler.weights.all_weighers
    local delay=${SHELVE_ACCEL_UPLOAD_DELAY:-0}
    # Debug logs of the scheduler and computes: the phase profile
    # (tools/bench_phases.py) reads its timestamps from them.
    local debug=False
    [ "${SHELVE_ACCEL_DEBUG:-0}" = 1 ] && debug=True
    [[ $delay =~ ^[0-9]+$ ]] ||
        die "SHELVE_ACCEL_UPLOAD_DELAY=$delay is not a number of seconds"
    # Nova's default filters (Tempest's server group tests need the last
    # two), then the plugin's.
    filters=ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter
    filters=$filters,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter
    case $mode in
    plugin|fast-shelve)
        driver=nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver
        filters=$filters,HostAggregateGroupFilter
        weighers=$weighers,nova_shelve_accel.scheduler.weights.ShelvedHeadroomWeigher
        if [ "$mode" = fast-shelve ]; then
            upload=after_offload
        else
            delay=0
        fi;;
    stock)
        driver=libvirt.LibvirtDriver
        delay=0;;
    inert)
        # The plugin's driver loaded, every hook Nova's own (see
        # start_compute): the benchmark's A/B of loading the plugin.
        driver=nova_shelve_accel.virt.libvirt.PartialOffloadLibvirtDriver
        delay=0;;
    *) die "unknown mode '$mode': use 'plugin', 'fast-shelve', 'stock' or 'inert'";;
    esac
    cat > "$ETC/nova/mode.conf" <<EOF
# Written by 'cloud.sh mode $mode'.
[DEFAULT]
compute_driver = $driver
debug = $debug
[filter_scheduler]
enabled_filters = $filters
weight_classes = $weighers
# A burst's requests are weighed before any of them has consumed its host:
# hosts that weigh the same stay equal, and Nova would take the first of
# them every time (doc/source/weigher.rst).
shuffle_best_same_weighed_hosts = True
[shelve_accel]
snapshot_upload = $upload
snapshot_upload_delay = $delay
EOF
    echo "$mode" > "$STATE/mode"
}

# ---------------------------------------------------------------- libvirt

libvirt_up() {
    local host=$1 dir=$STATE/$1/libvirt
    mkdir -p "$dir"/{run,lib,cache,log} /run/libvirt /var/lib/libvirt \
        /var/cache/libvirt /var/log/libvirt
    if [ ! -d "$dir/etc" ]; then
        cp -a /etc/libvirt "$dir/etc"
        # No default network: guests here have no NICs.
        rm -f "$dir"/etc/qemu/networks/autostart/*
        cat >> "$dir/etc/qemu.conf" <<EOF
# nova-shelve-accel test cloud: QEMU runs as root, no confinement.
user = "root"
group = "root"
security_driver = "none"
EOF
    fi
    local storage_args=()
    if on_gluster "$host"; then
        storage_args=("$GLUSTER_STATE" "$SHARED_INSTANCES")
    fi
    # The host's GlusterFS client runs on the host's clock (gluster.sh).
    start "libvirtd-$host" env "CLIENT_SKEW=$(skew_of "$host")" \
        unshare --uts --mount --propagation private \
        bash "$TOOLS/libvirt-host.sh" "$host" "$dir" "${storage_args[@]}"
    eval "_check_libvirt_$host() { [ -S $dir/run/libvirt-sock ] &&
        virsh_host $host hostname >/dev/null 2>&1; }"
    wait_for "libvirtd for $host" "$LOGS/libvirtd-$host.log" \
        "_check_libvirt_$host" 60 "libvirtd-$host"
}

# ---------------------------------------------------------------- storage

# What g1's instances_path is: local or gluster (see cloud.sh up).
storage_kind() {
    cat "$STATE/storage-kind" 2>/dev/null || echo local
}

# on_gluster HOST: HOST sees g1's storage through a GlusterFS client of its
# own, in the mount namespace of its libvirtd.
on_gluster() {
    [ "$(storage_kind)" = gluster ] && [ "$1" != c3 ]
}

# skew_of HOST: the offset of HOST's clock (cloud.sh up --skew), or nothing.
skew_of() {
    cat "$STATE/skew-$1" 2>/dev/null || true
}

# host_clock HOST: the words that run a command on HOST's clock, one per
# line (none for a host on the machine's clock). The wall clock only
# (wall-clock.c): a host's monotonic clock owes nothing to another's, and
# nova-compute forks from threads, which libfaketime's lock does not
# survive.
host_clock() {
    local skew
    skew=$(skew_of "$1")
    [ -n "$skew" ] || return 0
    printf '%s\n' env "LD_PRELOAD=$WALL_CLOCK_LIB" "WALL_CLOCK_OFFSET=$skew"
}

# The mount namespace of HOST's libvirtd, its client's mount in it.
host_namespace() {
    echo "/proc/$(cat "$RUN/libvirtd-$1.pid")/ns/mnt"
}

gluster_down() {
    local host pidfile
    for host in "${COMPUTES[@]}" observer; do
        pidfile=$GLUSTER_STATE/client-$host.pid
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    if mountpoint -q "$SHARED_INSTANCES"; then
        umount "$SHARED_INSTANCES" 2>/dev/null ||
            umount -l "$SHARED_INSTANCES"
    fi
    if [ -d "$GLUSTER_STATE" ]; then
        bash "$GLUSTER" down "$GLUSTER_STATE"
    fi
}

# The URI of host's own libvirtd (see libvirt_up).
libvirt_uri() {
    echo "qemu+unix:///system?socket=$STATE/$1/libvirt/run/libvirt-sock"
}

virsh_host() {
    virsh -c "$(libvirt_uri "$1")" "${@:2}"
}

libvirt_down() {
    local host=$1 dom dir=$STATE/$1/libvirt
    if [ -S "$dir/run/libvirt-sock" ] && running "libvirtd-$host"; then
        for dom in $(virsh_host "$host" list --all --name 2>/dev/null); do
            virsh_host "$host" destroy "$dom" >/dev/null 2>&1 || true
            virsh_host "$host" undefine --nvram "$dom" >/dev/null 2>&1 ||
                virsh_host "$host" undefine "$dom" >/dev/null 2>&1 || true
        done
    fi
    stop "libvirtd-$host"
    if [ -f "$dir/virtlogd.pid" ]; then
        kill "$(cat "$dir/virtlogd.pid")" 2>/dev/null || true
    fi
}

# ------------------------------------------------------------------- nova

nova_manage() {
    run_logged "$LOGS/nova-manage.log" "$VENV/bin/nova-manage" \
        --config-file "$ETC/nova/nova.conf" "$@"
}

start_scheduler() {
    start nova-scheduler "$VENV/bin/nova-scheduler" \
        --config-file "$ETC/nova/nova.conf" \
        --config-file "$ETC/nova/mode.conf"
}

start_compute() {
    local host=$1 enter=() clock
    if on_gluster "$host"; then
        # Where the host's own client has the shared storage mounted.
        enter=(nsenter "--mount=$(host_namespace "$host")" --)
    fi
    mapfile -t clock < <(host_clock "$host")
    local inert=()
    if [ "$(cat "$STATE/mode" 2>/dev/null)" = inert ]; then
        inert=(env NOVA_SHELVE_ACCEL_INERT=1)
    fi
    # shellcheck disable=SC2046
    start "nova-compute-$host" "${enter[@]}" "${clock[@]}" "${inert[@]}" \
        "$VENV/bin/nova-compute" $(compute_conf_args "$host")
}

openstack_cli() {
    "$VENV/bin/openstack" --os-cloud "$CLOUD_NAME" "$@"
}

service_state() {
    # "<host> <status> <state>" for every nova-compute
    openstack_cli compute service list --service nova-compute \
        -f value -c Host -c Status -c State 2>/dev/null
}

computes_up() {
    local host states
    states=$(service_state) || return 1
    for host in "${COMPUTES[@]}"; do
        grep -qx "$host enabled up" <<<"$states" || return 1
    done
}

# The scheduler and every compute consume their RPC queues. After a restart
# the old services still look "up" to the API for a minute; a consumer on
# the queue is what says the new process is ready for requests.
rpc_consumers_ready() {
    local queues q
    queues=$(rabbitmqctl -q list_queues -p "$RABBIT_VHOST" name consumers \
        2>/dev/null) || return 1
    for q in scheduler "${COMPUTES[@]/#/compute.}"; do
        awk -v q="$q" '$1 == q && $2 > 0 {ok = 1} END {exit !ok}' \
            <<<"$queues" || return 1
    done
}

wait_for_computes() {
    local host
    for host in "${COMPUTES[@]}"; do
        running "nova-compute-$host" || {
            tail -n 20 "$LOGS/nova-compute-$host.log" >&2
            die "nova-compute on $host exited; its log is" \
                "$LOGS/nova-compute-$host.log"
        }
    done
    wait_for "nova-compute (c1, c2, c3)" "$LOGS/nova-compute-c1.log" \
        computes_up 180
    wait_for "nova-scheduler and nova-compute RPC" \
        "$LOGS/nova-compute-c1.log" rpc_consumers_ready 180
}

write_clouds_yaml() {
    mkdir -p "$(dirname "$CLOUDS_YAML")"
    "$VENV/bin/python" - "$CLOUDS_YAML" "$KEYSTONE_URL/v3" \
        "$CLOUD_NAME=admin=admin=$ADMIN_PASSWORD" \
        "$DEMO_CLOUD_NAME=demo=demo=$DEMO_PASSWORD" <<'EOF'
import os, sys, yaml
path, auth_url = sys.argv[1:3]
data = {}
if os.path.exists(path):
    with open(path) as f:
        data = yaml.safe_load(f) or {}
for cloud in sys.argv[3:]:
    name, user, project, password = cloud.split('=', 3)
    data.setdefault('clouds', {})[name] = {
        'auth': {'auth_url': auth_url, 'username': user,
                 'password': password, 'project_name': project,
                 'user_domain_name': 'Default',
                 'project_domain_name': 'Default'},
        'identity_api_version': 3,
        'compute_api_version': '2.95',
        'region_name': 'RegionOne',
    }
with open(path, 'w') as f:
    yaml.safe_dump(data, f, default_flow_style=False)
EOF
}

remove_clouds_yaml() {
    [ -f "$CLOUDS_YAML" ] && [ -x "$VENV/bin/python" ] || return 0
    "$VENV/bin/python" - "$CLOUDS_YAML" "$CLOUD_NAME" "$DEMO_CLOUD_NAME" \
        <<'EOF'
import os, sys, yaml
path, names = sys.argv[1], sys.argv[2:]
with open(path) as f:
    data = yaml.safe_load(f) or {}
for name in names:
    data.get('clouds', {}).pop(name, None)
if data.get('clouds'):
    with open(path, 'w') as f:
        yaml.safe_dump(data, f, default_flow_style=False)
else:
    os.unlink(path)
EOF
}

# --------------------------------------------------------------- commands

# skew_arg HOST=OFFSET: fail unless HOST is a compute host and OFFSET a
# signed number of seconds, minutes, hours or days (what wall-clock.c and
# libfaketime both read).
skew_arg() {
    compute_host_arg "${1%%=*}"
    [[ $1 =~ ^c[0-9]+=[+-][0-9]+[smhd]?$ ]] ||
        die "bad skew '$1': use HOST=OFFSET, such as c2=+10m or c2=-2h"
}

cmd_up() {
    local storage=${SHELVE_ACCEL_STORAGE:-gluster} skew
    local expiration=${SHELVE_ACCEL_TOKEN_EXPIRATION:-3600} nova=
    # shellcheck disable=SC2206
    local skews=(${SHELVE_ACCEL_SKEW:-})
    while [ $# -gt 0 ]; do
        case $1 in
        --storage) storage=${2:-}; shift 2 || shift;;
        --storage=*) storage=${1#--storage=}; shift;;
        --skew) skews+=("${2:-}"); shift 2 || shift;;
        --skew=*) skews+=("${1#--skew=}"); shift;;
        --token-expiration) expiration=${2:-}; shift 2 || shift;;
        --token-expiration=*) expiration=${1#--token-expiration=}; shift;;
        --nova) nova=${2:-}; shift 2 || shift;;
        --nova=*) nova=${1#--nova=}; shift;;
        *) die "unknown argument '$1' of up: use --storage local|gluster," \
            "--skew HOST=OFFSET, --token-expiration SECONDS and" \
            "--nova VERSION";;
        esac
    done
    case $storage in
    local|gluster) ;;
    *) die "unknown storage '$storage': use 'local' or 'gluster'";;
    esac
    for skew in "${skews[@]}"; do
        skew_arg "$skew"
    done
    token_expiration "$expiration"
    [ "$(id -u)" = 0 ] || die "run as root"
    if [ -f "$STATE/mode" ]; then
        die "a cloud is already set up in $STATE; run '$0 down' first"
    fi
    VENV=$BASE_VENV
    CONSTRAINTS=$REPO/upper-constraints.txt
    [ -z "$nova" ] || nova_release "$nova"
    install_packages
    install_python
    ensure_mariadb
    ensure_rabbitmq
    mkdir -p "$ETC" "$LOGS" "$RUN"
    echo "$VENV" > "$STATE/venv"
    echo "$CONSTRAINTS" > "$STATE/constraints"
    echo "$storage" > "$STATE/storage-kind"
    for skew in "${skews[@]}"; do
        echo "${skew#*=}" > "$STATE/skew-${skew%%=*}"
        say "clock of ${skew%%=*}: off by ${skew#*=}"
    done
    if [ ${#skews[@]} -gt 0 ]; then
        run_logged "$LOGS/wall-clock.log" gcc -shared -fPIC -O2 \
            -o "$WALL_CLOCK_LIB" "$TOOLS/wall-clock.c" -ldl
    fi
    if [ "$storage" = gluster ]; then
        say "GlusterFS volume for g1's storage (state in $GLUSTER_STATE)"
        bash "$GLUSTER" up "$GLUSTER_STATE"
    fi
    create_databases
    create_vhost

    say "Keystone (tokens live ${expiration}s)"
    write_keystone_conf "$expiration"
    setup_keystone
    write_clouds_yaml

    say "Placement"
    write_placement_conf
    run_logged "$LOGS/placement.log" "$VENV/bin/placement-manage" \
        --config-file "$ETC/placement/placement.conf" db sync
    gunicorn_app placement 8778 placement.wsgi.api:application \
        OS_PLACEMENT_CONFIG_DIR="$ETC/placement"

    say "Glance"
    write_glance_conf
    run_logged "$LOGS/glance.log" "$VENV/bin/glance-manage" \
        --config-file "$ETC/glance/glance-api.conf" db_sync
    gunicorn_app glance 9292 glance.wsgi.api:application \
        OS_GLANCE_CONFIG_DIR="$ETC/glance"
    start glance-scrubber "$VENV/bin/glance-scrubber" --daemon \
        --config-file "$ETC/glance/glance-api.conf" \
        --config-file "$ETC/glance/glance-scrubber.conf"

    say "Neutron"
    write_neutron_conf
    run_logged "$LOGS/neutron.log" "$VENV/bin/neutron-db-manage" \
        --config-file "$ETC/neutron/neutron.conf" upgrade heads
    gunicorn_app neutron 9696 \
        'wsgi_apps:load("neutron.wsgi.api", "neutron-api")' \
        OS_NEUTRON_CONFIG_DIR="$ETC/neutron" \
        OS_NEUTRON_CONFIG_FILES=neutron.conf

    say "Nova API, conductor, scheduler"
    write_nova_conf
    write_mode_conf plugin
    nova_manage api_db sync
    nova_manage cell_v2 map_cell0 --database_connection "$(db_url nova_cell0)"
    nova_manage cell_v2 create_cell --name cell1
    nova_manage db sync
    gunicorn_app nova-api 8774 \
        'wsgi_apps:load("nova.wsgi.osapi_compute", "nova-api")' \
        OS_NOVA_CONFIG_DIR="$ETC/nova"
    start nova-conductor "$VENV/bin/nova-conductor" \
        --config-file "$ETC/nova/nova.conf"
    start_scheduler

    say "libvirt and nova-compute on c1, c2 (shared $storage storage) and c3"
    local host
    for host in "${COMPUTES[@]}"; do
        write_compute_conf "$host"
        libvirt_up "$host"
        start_compute "$host"
    done
    if [ "$storage" = gluster ]; then
        # Made after every host's namespace, so that none of them has it.
        bash "$GLUSTER" mount "$GLUSTER_STATE" "$SHARED_INSTANCES" observer
    fi
    wait_for_computes
    nova_manage cell_v2 discover_hosts

    say "aggregate g1, flavors $FLAVOR and $BURST_FLAVOR"
    openstack_cli aggregate create g1 --property shelve_storage_group=g1 \
        >/dev/null
    openstack_cli aggregate add host g1 c1 >/dev/null
    openstack_cli aggregate add host g1 c2 >/dev/null
    openstack_cli flavor create "$FLAVOR" --vcpus 1 --ram 192 --disk 10 \
        >/dev/null
    # The benchmark's burst guests: the least RAM the firmware boots in.
    openstack_cli flavor create "$BURST_FLAVOR" --vcpus 1 --ram 64 --disk 1 \
        >/dev/null
    say "up: openstack --os-cloud $CLOUD_NAME ...; logs in $LOGS"
}

cmd_mode() {
    local mode=${1:-}
    [ -f "$STATE/mode" ] || die "no cloud in $STATE; run '$0 up' first"
    write_mode_conf "$mode"
    stop nova-scheduler
    start_scheduler
    local host
    stop "${COMPUTES[@]/#/nova-compute-}"
    for host in "${COMPUTES[@]}"; do
        start_compute "$host"
    done
    wait_for_computes
    say "mode: $mode"
}

cmd_token_expiration() {
    local seconds=${1:-}
    [ -f "$STATE/mode" ] || die "no cloud in $STATE; run '$0 up' first"
    token_expiration "$seconds"
    write_keystone_conf "$seconds"
    stop keystone
    start_keystone
    say "Keystone's new tokens live ${seconds}s"
}

cmd_down() {
    local host name
    stop "${COMPUTES[@]/#/nova-compute-}"
    stop nova-scheduler nova-conductor nova-api neutron glance-scrubber \
        glance placement keystone
    for host in "${COMPUTES[@]}"; do
        libvirt_down "$host"
    done
    # Guests whose libvirtd was already gone.
    pkill -KILL -f "qemu-system.*$STATE" 2>/dev/null || true
    pkill -KILL -f "privsep-helper.*$ETC" 2>/dev/null || true
    # Before the state goes: the volume's brick is in it, and removing the
    # state through a client would empty the volume first.
    gluster_down
    if mariadb_up; then
        for name in "${DATABASES[@]}"; do
            sql "DROP DATABASE IF EXISTS $DB_PREFIX$name;" || true
        done
    fi
    if rabbit_up; then
        rabbitmqctl -q delete_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true
    fi
    remove_clouds_yaml
    rm -rf "$STATE"
    say "down: nothing of the cloud runs, $STATE removed"
}

cmd_status() {
    [ -d "$RUN" ] || { say "no cloud in $STATE"; return 0; }
    local pidfile name host skew
    say "mode: $(cat "$STATE/mode" 2>/dev/null || echo unknown)," \
        "storage: $(storage_kind)"
    for host in "${COMPUTES[@]}"; do
        skew=$(skew_of "$host")
        [ -z "$skew" ] || say "clock of $host: off by $skew"
    done
    for pidfile in "$RUN"/*.pid; do
        name=$(basename "$pidfile" .pid)
        if running "$name"; then
            printf '  %-22s running  %s\n' "$name" "$LOGS/$name.log"
        else
            printf '  %-22s STOPPED  %s\n' "$name" "$LOGS/$name.log"
        fi
    done
}

compute_host_arg() {
    local host
    for host in "${COMPUTES[@]}"; do
        [ "$host" = "${1:-}" ] && return 0
    done
    die "unknown compute host '${1:-}': use one of ${COMPUTES[*]}"
}

# rpc_consumers QUEUE: how many consumers the queue has (0 if none); fails
# when RabbitMQ does not answer.
rpc_consumers() {
    local queues
    queues=$(rabbitmqctl -q list_queues -p "$RABBIT_VHOST" name consumers \
        2>/dev/null) || return 1
    awk -v q="$1" '$1 == q {n = $2} END {print n + 0}' <<<"$queues"
}

cmd_compute_restart() {
    local host=${1:-}
    compute_host_arg "$host"
    [ -f "$STATE/mode" ] || die "no cloud in $STATE; run '$0 up' first"
    if [ -n "$EXTRA_CONF_ARG" ]; then
        [ -f "$EXTRA_CONF_ARG" ] || die "SHELVE_ACCEL_EXTRA_CONF:" \
            "no file $EXTRA_CONF_ARG"
        EXTRA_CONF=$(realpath "$EXTRA_CONF_ARG")
    fi
    stop "nova-compute-$host"
    # The old process's consumer must be gone, or it would pass for the new
    # one below.
    RESTART_HOST=$host
    # shellcheck disable=SC2317
    _old_consumer_gone() {
        local n
        n=$(rpc_consumers "compute.$RESTART_HOST") && [ "$n" = 0 ]
    }
    wait_for "RPC consumer of the stopped nova-compute on $host" \
        "$LOGS/nova-compute-$host.log" _old_consumer_gone 60
    [ -z "$EXTRA_CONF" ] ||
        say "nova-compute on $host: also --config-file $EXTRA_CONF"
    if [ ${#FAULT_ENV[@]} -gt 0 ]; then
        say "nova-compute on $host: ${FAULT_ENV[*]}"
        (export "${FAULT_ENV[@]}"; start_compute "$host")
    else
        start_compute "$host"
    fi
    # shellcheck disable=SC2317
    _compute_ready() {
        local n
        service_state | awk -v h="$RESTART_HOST" \
            '$1 == h && $3 == "up" {ok = 1} END {exit !ok}' &&
            n=$(rpc_consumers "compute.$RESTART_HOST") && [ "$n" -gt 0 ]
    }
    wait_for "nova-compute on $host" "$LOGS/nova-compute-$host.log" \
        _compute_ready 180 "nova-compute-$host"
    say "nova-compute on $host restarted"
}

# gluster_host_arg HOST: HOST must see g1's storage through a client of its
# own.
gluster_host_arg() {
    compute_host_arg "${1:-}"
    [ -f "$STATE/mode" ] || die "no cloud in $STATE; run '$0 up' first"
    on_gluster "$1" || die "$1 has no GlusterFS client: only c1 and c2 of" \
        "a cloud started with 'up --storage gluster' have one"
}

cmd_storage_client_kill() {
    gluster_host_arg "${1:-}"
    local pidfile=$GLUSTER_STATE/client-$1.pid
    [ -f "$pidfile" ] || die "no pid file $pidfile: is $1's client mounted?"
    kill -KILL "$(cat "$pidfile")"
    say "GlusterFS client of $1 killed (pid $(cat "$pidfile"))"
}

cmd_storage_remount() {
    gluster_host_arg "${1:-}"
    local enter=(nsenter "--mount=$(host_namespace "$1")" --)
    # A dead client's mount point answers ENOTCONN to everything, even to
    # the "is it a mount point" test: lazily unmount whatever is there.
    "${enter[@]}" umount -l "$SHARED_INSTANCES" 2>/dev/null || true
    CLIENT_SKEW=$(skew_of "$1") "${enter[@]}" bash "$GLUSTER" mount \
        "$GLUSTER_STATE" "$SHARED_INSTANCES" "$1"
    say "g1's storage mounted again on $1 (pid" \
        "$(cat "$GLUSTER_STATE/client-$1.pid"))"
}

cmd_compute_alive() {
    compute_host_arg "${1:-}"
    running "nova-compute-$1"
}

# Read to its end before anything runs: editing this file while a command
# of it runs must not change what that command does.
main() {
    case ${1:-} in
    up) cmd_up "${@:2}";;
    down) cmd_down;;
    mode) cmd_mode "${2:-}";;
    token-expiration) cmd_token_expiration "${2:-}";;
    status) cmd_status;;
    compute-restart) cmd_compute_restart "${2:-}";;
    compute-alive) cmd_compute_alive "${2:-}";;
    storage-client-kill) cmd_storage_client_kill "${2:-}";;
    storage-remount) cmd_storage_remount "${2:-}";;
    *) printf 'usage: %s up [--storage local|gluster] %s\n' "$0" \
            "[--skew HOST=OFFSET]... [--token-expiration SECONDS]" >&2
        printf '       %s %s\n' "$0" "down|status" \
            "$0" "mode plugin|fast-shelve|stock|inert" \
            "$0" "token-expiration SECONDS" \
            "$0" "compute-restart HOST|compute-alive HOST" \
            "$0" "storage-client-kill HOST|storage-remount HOST" >&2
        exit 2;;
    esac
}

main "$@"; exit
