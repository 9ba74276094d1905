#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, then a quick-scale target through workflow/profiles/slurm.
#
#   bash tests/slurm/run.sh                 # figures/fig6.pdf and its table, every job through sbatch
#   bash tests/slurm/run.sh TARGET ...      # other quick-scale targets
#   bash tests/slurm/run.sh --smoke         # only start the cluster, run one sbatch job, stop it
#
# Needs root (as in CI). Installs Debian's slurm-wlm and munge with apt-get when they are missing.
# The cluster lives in one private temporary directory: its own munge key and socket, free TCP
# ports, state, spool and log directories. Only slurm.conf must sit at the default place,
# /etc/slurm/slurm.conf: Snakemake's job step runs `srun` with every SLURM_* variable removed from
# its environment (SLURM_CONF included), so srun inside a job only finds the default file. The
# script writes it there only when no other slurm.conf exists (else it fails, saying so) and removes
# it on exit. A munge or SLURM already running on the machine is left alone. On exit the script
# cancels its jobs and stops exactly the three daemons it started (by their PIDs).
#
# The workflow runs in a temporary copy of the repository (without .venv, results, data, logs)
# with `--profile workflow/profiles/slurm` plus a small overlay profile that only shortens the
# first status check and keeps the SLURM logs of successful jobs (so they can be checked).
# Checks: the targets exist, every job id that Snakemake reports as submitted has a SLURM log and
# is COMPLETED in squeue, and no job of the target ran outside SLURM except the declared local rules.
# Exit status 0 on success, 1 on any failure (with the daemons' and Snakemake's log tails).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_BIN="${VENV_BIN:-$REPO/.venv/bin}"
DEFAULT_TARGETS=(figures/fig6.pdf results/theory/fig6.csv)
SNAKEMAKE_TIMEOUT="${SNAKEMAKE_TIMEOUT:-900}"   # seconds for the whole workflow run
T0=$SECONDS

say() { echo "slurm-test: $* [+$((SECONDS - T0)) s]"; }
die() { echo "slurm-test: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- arguments
SMOKE=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#'; exit 0 ;;
        -*) die "unknown option '$arg' (known: --smoke, --help)" ;;
        *) TARGETS+=("$arg") ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${DEFAULT_TARGETS[@]}")

# ---------------------------------------------------------------- prerequisites
[ "$(id -u)" -eq 0 ] || die "must run as root (slurmctld/slurmd are started as root; CI runs as root)"
[ -x "$VENV_BIN/snakemake" ] || die "no $VENV_BIN/snakemake: run 'make setup' first"

# One test cluster at a time on this machine (a second run waits for the first). The daemons are
# started with fd 9 closed, so the lock goes with this script.
exec 9>/tmp/delay-stability-slurm-test.lock
flock -w 1200 9 || die "another tests/slurm/run.sh holds /tmp/delay-stability-slurm-test.lock"

install_slurm() {
    local missing=()
    for exe in slurmctld slurmd sbatch squeue scancel sinfo munged; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "missing ${missing[*]}: installing slurm-wlm and munge with apt-get"
    command -v apt-get >/dev/null 2>&1 \
        || die "SLURM is not installed and there is no apt-get: install slurm-wlm (slurmctld, slurmd, slurm-client) and munge"
    local t=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed (no network?)"
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
    say "installed slurm-wlm and munge in $((SECONDS - t)) s"
    for exe in slurmctld slurmd sbatch squeue munged; do
        command -v "$exe" >/dev/null 2>&1 || die "$exe still missing after apt-get install"
    done
}

# ---------------------------------------------------------------- the cluster
WORK=""
SYSTEM_CONF=/etc/slurm/slurm.conf
CONF_MARK="# One-node test cluster written by tests/slurm/run.sh"
PIDS=()        # daemons this script started: munged slurmctld slurmd
NODE="$(hostname -s)"

check_system_conf() {  # /etc/slurm/slurm.conf must be absent or left over from an earlier run of ours
    if [ -e "$SYSTEM_CONF" ] && ! head -n 1 "$SYSTEM_CONF" | grep -qF "$CONF_MARK"; then
        die "$SYSTEM_CONF exists and belongs to another SLURM set-up; this test needs that place for its own \
slurm.conf (srun inside a Snakemake job reads only the default file): run it on a machine without SLURM, e.g. CI"
    fi
}

free_ports() {  # two free TCP ports on localhost
    "$VENV_BIN/python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
}

wait_for_file() {  # wait_for_file PATH SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
    return 1
}

start_munge() {
    mkdir -p "$WORK/munge/etc" "$WORK/munge/run" "$WORK/munge/log"
    chmod 700 "$WORK/munge/etc" "$WORK/munge/log"
    chmod 711 "$WORK/munge" "$WORK/munge/run"          # munged wants its socket reachable by all
    dd if=/dev/urandom of="$WORK/munge/etc/munge.key" bs=1024 count=1 status=none
    chmod 400 "$WORK/munge/etc/munge.key"
    munged --socket="$WORK/munge/run/munge.socket" --key-file="$WORK/munge/etc/munge.key" \
        --pid-file="$WORK/munge/run/munged.pid" --log-file="$WORK/munge/log/munged.log" \
        --seed-file="$WORK/munge/etc/munged.seed" 9>&- \
        || die "munged did not start: $(tail -n 3 "$WORK/munge/log/munged.log" 2>/dev/null)"
    wait_for_file "$WORK/munge/run/munged.pid" 10 || die "munged wrote no pid file"
    PIDS+=("$(cat "$WORK/munge/run/munged.pid")")
}

write_slurm_conf() {
    local ports cpus mem
    read -r -a ports <<<"$(free_ports)"
    # This machine's CPU count and memory, as slurmd itself sees them.
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n 1)
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n 1)
    [ -n "$cpus" ] && [ -n "$mem" ] || die "could not read CPUs/RealMemory from 'slurmd -C'"
    mkdir -p "$WORK/state" "$WORK/spool" "$WORK/log" "$(dirname "$SYSTEM_CONF")"
    cat >"$WORK/slurm.conf" <<EOF
$CONF_MARK (work directory $WORK)
ClusterName=dstest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge/run/munge.socket
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# squeue must still list finished jobs when Snakemake polls (the plugin wants >= 3 x first interval)
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=dstest Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$WORK/slurm.conf" "$SYSTEM_CONF"
    export SLURM_CONF="$SYSTEM_CONF"
    say "slurm.conf: node $NODE, $cpus CPUs, $mem MB, ports ${ports[*]}"
}

start_slurm() {
    slurmctld -f "$SLURM_CONF" 9>&- || die "slurmctld did not start"
    wait_for_file "$WORK/slurmctld.pid" 10 || die "slurmctld wrote no pid file"
    PIDS+=("$(cat "$WORK/slurmctld.pid")")
    slurmd -f "$SLURM_CONF" 9>&- || die "slurmd did not start"
    wait_for_file "$WORK/slurmd.pid" 10 || die "slurmd wrote no pid file"
    PIDS+=("$(cat "$WORK/slurmd.pid")")
    say "daemon pids: ${PIDS[*]}"
    local i state=""
    for ((i = 0; i < 60; i++)); do
        state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)
        case "$state" in
            idle*|mix*|alloc*) say "node $NODE is $state"; return 0 ;;
            down*|drain*|unk*|inval*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $NODE did not become idle (state '$state')"
}

stop_pids() {  # SIGTERM, up to 10 s to exit, then SIGKILL
    local pid j
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for ((j = 0; j < 100; j++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm-test: WARNING: pid $pid ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

stop_cluster() {
    local i
    if [ -n "${SLURM_CONF:-}" ] && [ ${#PIDS[@]} -ge 2 ]; then
        # Cancel what is left of our jobs and let their job steps end before slurmd goes.
        scancel --quiet --full --user=root >/dev/null 2>&1 || true
        for ((i = 0; i < 40; i++)); do
            squeue -h -t PD,R,CG,S 2>/dev/null | grep -q . || break
            sleep 0.5
        done
    fi
    # slurmd and slurmctld together, then munged (they may still talk through it while stopping)
    [ ${#PIDS[@]} -gt 1 ] && stop_pids "${PIDS[@]:1}"
    [ ${#PIDS[@]} -gt 0 ] && stop_pids "${PIDS[0]}"
    [ ${#PIDS[@]} -gt 0 ] && say "stopped daemon pids: ${PIDS[*]}"
    PIDS=()
    # Remove our slurm.conf (only if it is still ours, i.e. names this run's work directory).
    if [ -n "$WORK" ] && [ -f "$SYSTEM_CONF" ] && head -n 1 "$SYSTEM_CONF" | grep -qF "$WORK"; then
        rm -f "$SYSTEM_CONF"
    fi
}

show_logs() {
    local f
    for f in "$WORK"/log/slurmctld.log "$WORK"/log/slurmd.log "$WORK"/snakemake.log; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f" >&2
        tail -n 40 "$f" >&2
    done
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    [ $rc -ne 0 ] && [ -n "$WORK" ] && show_logs
    stop_cluster
    if [ -n "$WORK" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
    [ -n "$WORK" ] && [ "${KEEP:-0}" = 1 ] && say "kept $WORK"
    say "$([ $rc -eq 0 ] && echo passed || echo failed) in $((SECONDS - T0)) s"
    exit $rc
}

# ---------------------------------------------------------------- the workflow through the profile
copy_workflow() {  # the repository without its virtualenv, results, data, logs or built figures
    COPY="$WORK/repo"
    mkdir -p "$COPY"
    tar -C "$REPO" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./.snakemake --exclude=./results --exclude=./data \
        --exclude=./logs --exclude=./.whl --exclude='./figures/*.pdf' --exclude='./figures/*.png' \
        --exclude=__pycache__ --exclude=.pytest_cache . | tar -C "$COPY" -xf -
    say "workflow copied to $COPY ($(du -sh "$COPY" | cut -f1))"
}

run_workflow() {
    mkdir -p "$WORK/profile"
    cat >"$WORK/profile/config.yaml" <<'EOF'
# Test-only additions to workflow/profiles/slurm: poll soon, keep every SLURM log for the checks.
slurm-init-seconds-before-status-checks: 2
slurm-keep-successful-logs: true
EOF
    say "snakemake --profile workflow/profiles/slurm ${TARGETS[*]}"
    local rc=0
    (cd "$COPY" && PATH="$VENV_BIN:$PATH" timeout "$SNAKEMAKE_TIMEOUT" "$VENV_BIN/snakemake" \
        --profile workflow/profiles/slurm --profile "$WORK/profile" "${TARGETS[@]}") \
        >"$WORK/snakemake.log" 2>&1 || rc=$?
    [ $rc -eq 124 ] && die "snakemake did not finish within $SNAKEMAKE_TIMEOUT s"
    [ $rc -eq 0 ] || die "snakemake exited with status $rc"
}

check_jobs() {
    local log="$WORK/snakemake.log" t ids id slurm_log state job rule n_local=0 n_slurm=0
    for t in "${TARGETS[@]}"; do
        [ -e "$COPY/$t" ] || die "target $t was not produced"
    done
    ! grep -q '^Error in rule' "$log" || die "a job failed (and was retried): $(grep -m 1 -A 2 '^Error in rule' "$log")"
    # "Job 3 has been submitted with SLURM jobid 12 (log: ...)" -- one line per sbatch.
    ids=$(sed -n 's/.*submitted with SLURM jobid \([0-9][0-9]*\).*/\1/p' "$log" | sort -n -u)
    [ -n "$ids" ] || die "no job was submitted to SLURM (no 'submitted with SLURM jobid' in the Snakemake log)"
    for id in $ids; do
        slurm_log=$(find "$COPY/.snakemake/slurm_logs" -name "$id.log" | head -n 1)
        [ -n "$slurm_log" ] || die "SLURM job $id has no log under .snakemake/slurm_logs"
        state=$(squeue -h -t all -j "$id" -o %T 2>/dev/null || true)
        [ "$state" = COMPLETED ] || die "SLURM job $id is '$state' in squeue, not COMPLETED"
    done
    # Every finished job ("Finished jobid: 1 (Rule: theory_figure)") went through sbatch, or its
    # rule is a declared local rule ("localrule theory_figure:").
    while read -r job rule; do
        if grep -q "^Job $job has been submitted with SLURM jobid" "$log"; then
            n_slurm=$((n_slurm + 1))
        elif grep -q "^localrule $rule:" "$log"; then
            n_local=$((n_local + 1))
        else
            die "job $job (rule $rule) finished but was neither submitted to SLURM nor a local rule"
        fi
    done < <(sed -n 's/^Finished jobid: \([0-9][0-9]*\) (Rule: \([A-Za-z0-9_]*\)).*/\1 \2/p' "$log")
    [ "$n_slurm" -ge 1 ] || die "no finished job went through SLURM"
    say "$n_slurm jobs ran under SLURM (job ids: $(echo $ids)), $n_local local rule jobs"
}

smoke_job() {
    local out="$WORK/smoke.out" id state="" i
    id=$(cd "$WORK" && sbatch --parsable -o "$out" --wrap 'echo "job $SLURM_JOB_ID on $(hostname)"') \
        || die "sbatch failed"
    for ((i = 0; i < 120; i++)); do
        state=$(squeue -h -t all -j "$id" -o %T 2>/dev/null || true)
        case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
        sleep 0.5
    done
    [ "$state" = COMPLETED ] && grep -q "job $id on" "$out" \
        || die "smoke job $id: state '$state', output '$(cat "$out" 2>/dev/null)'"
    say "smoke job $id COMPLETED"
}

# ---------------------------------------------------------------- main
trap on_exit EXIT
trap 'exit 130' INT TERM
install_slurm
check_system_conf
WORK="$(mktemp -d /tmp/ds-slurm.XXXXXX)"
chmod 711 "$WORK"
start_munge
write_slurm_conf
start_slurm
if [ $SMOKE -eq 1 ]; then
    smoke_job
else
    copy_workflow
    run_workflow
    check_jobs
fi
