#!/usr/bin/env bash
# Run a command as on a machine where Slurm was never installed: no Slurm tool reachable on PATH and
# no SLURM_* variable set. Every PATH directory that holds a Slurm tool (on CI that is /usr/bin, next
# to everything else) is replaced by a temporary mirror of symlinks to all of its other entries.
# Checks with `command -v` that none of the tools is found, then runs the command.
#
#   bash ci/without_slurm.sh make test PYTEST_ARGS="-m 'not slurm'"     # as .ci/run does
#
# Exit status: the command's, or 1 if a Slurm tool is still reachable.
set -Eeuo pipefail
TOOLS=(srun sinfo sbatch scontrol squeue sacct scancel salloc sacctmgr sattach sstat sprio sshare sreport)
[ "$#" -gt 0 ] || { echo "usage: ci/without_slurm.sh COMMAND [ARGS...]" >&2; exit 2; }

shadow=$(mktemp -d "${TMPDIR:-/tmp}/sf-mamba-no-slurm.XXXXXX")
trap 'rm -rf "$shadow"' EXIT
exclude=()
for tool in "${TOOLS[@]}"; do exclude+=(! -name "$tool"); done

new_path=()
mirrors=0
IFS=: read -ra dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
    [ -n "$dir" ] && [ -d "$dir" ] || continue
    holds_slurm=0
    for tool in "${TOOLS[@]}"; do
        if [ -e "$dir/$tool" ]; then holds_slurm=1; break; fi
    done
    if [ "$holds_slurm" = 0 ]; then new_path+=("$dir"); continue; fi
    mirror="$shadow/$mirrors"
    mirrors=$((mirrors + 1))
    mkdir "$mirror"
    find "$dir" -mindepth 1 -maxdepth 1 "${exclude[@]}" -exec ln -s -t "$mirror" {} +
    new_path+=("$mirror")
    echo "without_slurm.sh: PATH entry $dir replaced by a mirror without its Slurm tools" >&2
done
PATH=$(IFS=:; echo "${new_path[*]}")
export PATH
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(SLURM|SBATCH|SALLOC|SRUN)_' || true)

for tool in "${TOOLS[@]}"; do
    if found=$(command -v "$tool"); then
        echo "without_slurm.sh: $tool is still reachable at $found" >&2
        exit 1
    fi
done
echo "without_slurm.sh: no Slurm tool on PATH (command -v finds none of: ${TOOLS[*]})" >&2
export SF_MAMBA_NO_SLURM=1   # tests/test_ci_without_slurm.py checks from inside pytest
"$@"
