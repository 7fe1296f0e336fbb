#!/usr/bin/env bash
# Tear down the CI Slurm cluster started by ci/slurm_up.sh.
#
#   bash ci/slurm_down.sh            # cancel all jobs, stop slurmd, slurmctld, slurmdbd, mariadbd, munged
#   bash ci/slurm_down.sh --clean    # + delete the state dir, the /etc/slurm symlinks and the accounting DB
#   bash ci/slurm_down.sh --purge    # + --clean + purge the packages that slurm_up.sh installed
#
# Idempotent. Stops daemons by pid file after checking /proc/PID/comm (TERM, KILL after 30 s); only
# reports (never kills) stray slurm/munge/mariadb processes it did not identify. NOTE: there is one
# cluster per machine, so this cancels everybody's jobs on it.
set -Euo pipefail

STATE=${SF_SLURM_STATE:-/tmp/sf-mamba-slurm}
LOCK=/run/sf-mamba-slurm.lock
MODE=${1:-}
case "$MODE" in ""|--clean|--purge) ;; *) echo "usage: $0 [--clean|--purge]" >&2; exit 2;; esac
[ "$(id -u)" = 0 ] || { echo "slurm_down.sh: must run as root" >&2; exit 1; }

exec 9>"$LOCK"
flock -w 300 9 || { echo "slurm_down.sh: could not take $LOCK in 300 s" >&2; exit 1; }

running() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
stop() {
    local pid i
    running "$1" "$2" || return 0
    pid=$(tr -dc '0-9' <"$1")
    echo "slurm_down: stopping $2 ($pid)" >&2
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do [ -d "/proc/$pid" ] || return 0; sleep 0.2; done
    echo "slurm_down: $2 ($pid) ignored TERM for 30 s: KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
}

if command -v scancel >/dev/null 2>&1 && running "$STATE/run/slurmctld.pid" slurmctld; then
    scancel --full --quiet --user=root 2>/dev/null || true
    timeout 5 scancel --full --quiet $(squeue -h -o %A 2>/dev/null) 2>/dev/null || true
    for i in $(seq 100); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
stop "$STATE/run/slurmd.pid" slurmd
stop "$STATE/run/slurmctld.pid" slurmctld
stop "$STATE/run/slurmdbd.pid" slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged

if [ -n "$MODE" ]; then
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$STATE/etc/$f" ]; then rm -f "/etc/slurm/$f"; fi
    done
    rm -rf "$STATE"
    # The accounting DB belongs to this CI cluster: drop the whole data dir only if mariadb is ours.
    if [ -f /var/lib/sf-mamba-slurm/installed-packages ] && grep -qx mariadb-server /var/lib/sf-mamba-slurm/installed-packages; then
        rm -rf /var/lib/mysql
    fi
    echo "slurm_down: state removed ($STATE)" >&2
fi
if [ "$MODE" = --purge ] && [ -s /var/lib/sf-mamba-slurm/installed-packages ]; then
    mapfile -t PK < <(sort -u /var/lib/sf-mamba-slurm/installed-packages)
    # Refuse if apt would remove anything beyond what we installed (and their now-unused deps).
    extra=$(apt-get -s purge "${PK[@]}" 2>/dev/null | sed -n 's/^Purg \([^ ]*\).*/\1/p' | grep -vxF -f <(printf '%s\n' "${PK[@]}") || true)
    if [ -n "$extra" ]; then
        echo "slurm_down: --purge would also remove: $extra -- refusing" >&2; exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${PK[@]}" >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -qq >/dev/null
    rm -rf /var/lib/sf-mamba-slurm /var/lib/mysql
    echo "slurm_down: purged ${PK[*]}" >&2
fi

stray=$(ps -eo pid=,comm= | awk '$2 ~ /^(slurmctld|slurmd|slurmdbd|slurmstepd|munged|mariadbd)$/' || true)
[ -n "$stray" ] && echo "slurm_down: WARNING: still running (not stopped by this script):"$'\n'"$stray" >&2
echo "slurm_down: done" >&2
exit 0
