#!/usr/bin/env bash
# Bring up a real one-node Slurm cluster (Debian's Slurm 22.05) on this machine, for the Slurm tests.
#
#   sudo bash ci/slurm_up.sh            # idempotent: ~20 s from nothing, ~1 s when already up
#
# munged + mariadbd + slurmdbd + slurmctld + slurmd, one node with a fake GPU (gres File=/dev/null),
# accounting (real `sacct`, which both snakemake's slurm plugin and submitit poll), account "ci".
# Needs root; no systemd, no cgroups, no /proc/sys writes. Installs the Debian packages it needs
# when they are missing. Rendered configs, spool, pid files and logs live in $SF_SLURM_STATE
# (default /tmp/sf-mamba-slurm); /etc/slurm/{slurm,gres,slurmdbd}.conf are symlinks into it so that
# every client (sinfo, sbatch, sacct, the snakemake plugin, submitit) finds the cluster without env.
# On any failure it prints the daemons' log tails and exits 1.  Knobs (environment):
#   SF_SLURM_STATE=/tmp/sf-mamba-slurm  SF_SLURM_DBD=1  SF_SLURM_FAKE_GPUS=1  SF_SLURM_CPUS=max(nproc,16)
#   SF_SLURM_MEM_MB=131072 (advertised minimum)
#   SF_SLURM_PARTITION=debug  SF_SLURM_ACCOUNT=ci  SF_SLURM_CRED_EXPIRE=10  SF_SLURM_UP_TIMEOUT=60
#   SF_SLURM_SMOKE=0 (1: also run srun + sbatch --wait + sacct before returning)
# See docs/slurm-ci.md.  Tear down with ci/slurm_down.sh.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${SF_SLURM_STATE:-/tmp/sf-mamba-slurm}
DBD=${SF_SLURM_DBD:-1}
GPUS=${SF_SLURM_FAKE_GPUS:-1}
NPROC=$(nproc)
# The node advertises at least 16 CPUs and 128 GiB (SlurmdParameters=config_overrides; nothing is
# enforced without cgroups) so the shipped profile's production-size requests (e.g. bench:
# cpus_per_task 8, mem_mb 64000) are schedulable unchanged, next to a training job.
CPUS=${SF_SLURM_CPUS:-$(( NPROC > 16 ? NPROC : 16 ))}
MEM_MIN=${SF_SLURM_MEM_MB:-131072}
PARTITION=${SF_SLURM_PARTITION:-debug}
ACCOUNT=${SF_SLURM_ACCOUNT:-ci}
CRED_EXPIRE=${SF_SLURM_CRED_EXPIRE:-10}
UP_TIMEOUT=${SF_SLURM_UP_TIMEOUT:-60}
SMOKE=${SF_SLURM_SMOKE:-0}
CLUSTER=sfmamba
DBPASS=sfmamba-ci-slurmdb
NODE=$(hostname -s)
LOCK=/run/sf-mamba-slurm.lock
T0=${EPOCHREALTIME/./}

log() { local d=$(( (${EPOCHREALTIME/./} - T0) / 100000 )); printf '[slurm_up %4d.%ds] %s\n' $((d / 10)) $((d % 10)) "$*" >&2; }

dump_logs() {
    echo "---------------- slurm_up.sh FAILED: daemon log tails ($STATE/log) ----------------" >&2
    local f
    for f in "$STATE"/log/*; do
        [ -f "$f" ] || continue
        echo "==> $f <==" >&2
        tail -n 30 "$f" >&2 || true
    done
    if command -v sinfo >/dev/null 2>&1; then
        echo "==> sinfo -N -l <==" >&2; timeout 5 sinfo -N -l >&2 2>&1 || true
        echo "==> scontrol show node <==" >&2; timeout 5 scontrol show node >&2 2>&1 || true
    fi
    echo "----------------------------------------------------------------------------------" >&2
}
die() { echo "slurm_up.sh: ERROR: $*" >&2; dump_logs; exit 1; }
trap 'rc=$?; echo "slurm_up.sh: command failed (rc=$rc) at line $LINENO: $BASH_COMMAND" >&2; dump_logs; exit 1' ERR

[ "$(id -u)" = 0 ] || { echo "slurm_up.sh: must run as root (apt, slurmd, munged)" >&2; exit 1; }

# One bring-up/teardown at a time. Daemons are started with 9>&- so none of them keeps the lock.
exec 9>"$LOCK"
flock -w 300 9 || { echo "slurm_up.sh: could not take $LOCK in 300 s" >&2; exit 1; }

# ---- helpers -------------------------------------------------------------------------------
# running PIDFILE COMM: the pid in PIDFILE is alive and is COMM (guards against stale pid files)
running() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s
wait_for() {
    local secs=$1 what=$2; shift 2
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for: $what"
        sleep 0.2
    done
}
# stop PIDFILE COMM: TERM, then KILL after 30 s
stop() {
    local pid i
    running "$1" "$2" || return 0
    pid=$(tr -dc '0-9' <"$1")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do [ -d "/proc/$pid" ] || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- 1. packages -----------------------------------------------------------------------------
# Not the slurm-wlm metapackage: with recommends it drags in 43 packages (hdf5, rocm-smi, ...).
PKGS=(slurmctld slurmd slurm-client munge)
[ "$DBD" = 1 ] && PKGS+=(slurmdbd mariadb-server mariadb-client)
MISSING=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
    log "installing: ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 update -qq >"/tmp/sf-mamba-slurm-apt.log" 2>&1 \
        || { cat /tmp/sf-mamba-slurm-apt.log >&2; die "apt-get update failed"; }
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${MISSING[@]}" \
        >>"/tmp/sf-mamba-slurm-apt.log" 2>&1 \
        || { tail -n 40 /tmp/sf-mamba-slurm-apt.log >&2; die "apt-get install failed"; }
    mkdir -p /var/lib/sf-mamba-slurm
    printf '%s\n' "${MISSING[@]}" >>/var/lib/sf-mamba-slurm/installed-packages
    log "packages installed"
fi

# ---- 2. state dirs ---------------------------------------------------------------------------
mkdir -p "$STATE"/{etc,run,log,spool/slurmctld,spool/slurmd}
chmod 755 "$STATE" "$STATE"/{etc,run,log,spool}
chown slurm:slurm "$STATE"/log "$STATE"/spool/slurmctld "$STATE"/run

# ---- 3. munge --------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force 9>&- \
        || die "munged did not start (see /var/log/munge/munged.log: $(tail -n 3 /var/log/munge/munged.log 2>/dev/null))"
    wait_for 15 "munge -n | unmunge" bash -c 'munge -n | unmunge'
fi

# ---- 4. configs ------------------------------------------------------------------------------
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
[ -n "$MEM" ] || MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 ))
[ "$MEM" -ge "$MEM_MIN" ] || MEM=$MEM_MIN
if [ "$DBD" = 1 ]; then
    ACCOUNTING="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment"
else
    ACCOUNTING="AccountingStorageType=accounting_storage/none"
fi
render() {  # render TEMPLATE > stdout
    local out
    out=$(sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@NODE@|$NODE|g" -e "s|@STATE@|$STATE|g" \
              -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
              -e "s|@GPUS@|$GPUS|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@DBPASS@|$DBPASS|g" "$1")
    printf '%s\n' "${out//@ACCOUNTING@/$ACCOUNTING}"
}
CHANGED=0 CHANGED_DBD=0
install_conf() {  # install_conf NAME MODE OWNER
    local new="$STATE/etc/$1.new" dst="$STATE/etc/$1"
    render "$HERE/slurm/$1.in" >"$new"
    if ! cmp -s "$new" "$dst"; then
        mv -f "$new" "$dst"
        if [ "$1" = slurmdbd.conf ]; then CHANGED_DBD=1; else CHANGED=1; fi
    else
        rm -f "$new"
    fi
    chmod "$2" "$dst"; chown "$3" "$dst"
    # /etc/slurm/NAME -> state dir. Never clobber a config that is not ours.
    mkdir -p /etc/slurm
    if [ -e "/etc/slurm/$1" ] && [ ! -L "/etc/slurm/$1" ]; then
        die "/etc/slurm/$1 exists and is not our symlink; refusing to overwrite a real cluster's config"
    fi
    if [ "$(readlink "/etc/slurm/$1" 2>/dev/null)" != "$dst" ]; then ln -sfn "$dst" "/etc/slurm/$1"; CHANGED=1; fi
}
install_conf slurm.conf 644 root:root
install_conf gres.conf 644 root:root
[ "$DBD" = 1 ] && install_conf slurmdbd.conf 600 slurm:slurm
cat >"$STATE/env" <<EOF
# written by ci/slurm_up.sh; read by tests/slurm_support.py
SF_SLURM_STATE=$STATE
SF_SLURM_NODE=$NODE
SF_SLURM_PARTITION=$PARTITION
SF_SLURM_ACCOUNT=$( [ "$DBD" = 1 ] && echo "$ACCOUNT" )
SF_SLURM_DBD=$DBD
SF_SLURM_FAKE_GPUS=$GPUS
SF_SLURM_CPUS=$CPUS
EOF

# ---- 5. accounting: mariadbd + slurmdbd ------------------------------------------------------
if [ "$DBD" = 1 ]; then
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising MariaDB data dir"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed: $(tail -n 20 "$STATE/log/mariadb-install.log")"
    fi
    if ! running /run/mysqld/mysqld.pid mariadbd; then
        log "starting mariadbd"
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
            --socket=/run/mysqld/mysqld.sock --log-error="$STATE/log/mariadb.err" \
            </dev/null >/dev/null 2>&1 9>&- &
        wait_for 30 "mariadbd answering on /run/mysqld/mysqld.sock" mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    fi
    mariadb --socket=/run/mysqld/mysqld.sock -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
         ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
        || die "could not create the slurm DB user"
    if [ "$CHANGED_DBD" = 1 ] && running "$STATE/run/slurmdbd.pid" slurmdbd; then
        stop "$STATE/run/slurmdbd.pid" slurmdbd
    fi
    if ! running "$STATE/run/slurmdbd.pid" slurmdbd; then
        log "starting slurmdbd"
        /usr/sbin/slurmdbd 9>&- || die "slurmdbd failed to start"
        wait_for 30 "slurmdbd listening on TCP 6819" tcp_open 6819
    fi
fi

# ---- 6. slurmctld + slurmd -------------------------------------------------------------------
if [ "$CHANGED" = 1 ]; then
    # A node whose slurm.conf differs from the controller's is rejected: restart both.
    # Running jobs survive (slurmstepd is a separate process).
    if running "$STATE/run/slurmctld.pid" slurmctld || running "$STATE/run/slurmd.pid" slurmd; then
        log "config changed: restarting slurmctld and slurmd"
    fi
    stop "$STATE/run/slurmd.pid" slurmd
    stop "$STATE/run/slurmctld.pid" slurmctld
fi
if ! running "$STATE/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld 9>&- || die "slurmctld failed to start"
fi
wait_for "$UP_TIMEOUT" "slurmctld answering (scontrol ping)" bash -c 'scontrol ping | grep -q "is UP"'
if ! running "$STATE/run/slurmd.pid" slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd 9>&- || die "slurmd failed to start"
fi

# ---- 7. the node must be schedulable ---------------------------------------------------------
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 | tr -d '*~#!%$@^-'; }
node_ok() { case "$(node_state)" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac; }
end=$(( $(date +%s) + UP_TIMEOUT )); resumed=0
until node_ok; do
    st=$(node_state)
    case "$st" in
        drained|draining|inval|invalid|down|fail|failing)
            if [ "$resumed" = 0 ] && [ "$(date +%s)" -gt $(( end - UP_TIMEOUT + 3 )) ]; then
                log "node $NODE is '$st' ($(scontrol show node "$NODE" | sed -n 's/.*Reason=//p')): resuming once"
                scontrol update nodename="$NODE" state=resume || true
                resumed=1
            fi;;
    esac
    [ "$(date +%s)" -lt "$end" ] || die "node $NODE did not become idle in ${UP_TIMEOUT}s (state: '$st')"
    sleep 0.2
done
log "node $NODE is $(node_state): $(sinfo -h -n "$NODE" -o '%c CPUs, %m MB, %G')"

# ---- 8. accounting objects -------------------------------------------------------------------
if [ "$DBD" = 1 ]; then
    wait_for "$UP_TIMEOUT" "cluster $CLUSTER registered in slurmdbd" \
        bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
    if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Description=sf-mamba-ci Organization=sf-mamba >/dev/null
    fi
    if ! sacctmgr -n -P list assoc user=root account="$ACCOUNT" format=user | grep -qx root; then
        sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
    fi
    wait_for 20 "sacct answering" sacct -n -X -S now-1hour
fi

# ---- 9. optional smoke test ------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
    out=$(cd /tmp && timeout 60 srun -N1 -t 1 hostname) || die "srun hostname failed"
    [ "$out" = "$NODE" ] || die "srun hostname printed '$out', expected '$NODE'"
    jid=$(cd /tmp && timeout 60 sbatch --parsable --wait -t 1 -o /dev/null --gres=gpu:1 \
          --wrap 'test "$CUDA_VISIBLE_DEVICES" = 0') || die "sbatch --wait with --gres=gpu:1 failed"
    if [ "$DBD" = 1 ]; then
        wait_for 20 "sacct showing job $jid COMPLETED" bash -c "sacct -n -X -P -j $jid -o State | grep -qx COMPLETED"
    fi
    log "smoke test passed (srun, sbatch --gres=gpu:1 job $jid)"
fi

touch "$STATE/up.ok"
log "cluster '$CLUSTER' up: partition $PARTITION, node $NODE, accounting=$DBD, account=${ACCOUNT}"
