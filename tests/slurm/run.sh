#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, then a quick-scale target through workflow/profiles/slurm.
#
#   bash tests/slurm/run.sh                 # figures/fig6.pdf and its table, every job through sbatch
#   bash tests/slurm/run.sh TARGET ...      # other quick-scale targets
#   bash tests/slurm/run.sh --smoke         # only start the cluster, run one sbatch job, stop it
#   bash tests/slurm/run.sh --preempt       # a training job requeued by SLURM, and a chain of jobs
#                                           # cut by a 1-minute time limit: both resume bit for bit
#   bash tests/slurm/run.sh --requeue       # the requeued job only (about 2.5 minutes less: the
#                                           # chain needs >= 2 one-minute jobs; `make test` runs this)
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
#
# --preempt: two Snakemake runs at once, each in its own copy, on results/quick/stability/baseline/
# final.pt with a tiny baseline (MLP 64-24-10, 48 digits, checkpoint.pt every 200 epochs) whose epochs
# are fixed (requeue) or sized from this machine's speed (chain; a 4000-epoch run first):
#   requeue  16000 epochs (5-40 s). While the job is RUNNING and has written checkpoint.pt, `scontrol
#            requeue` it (the profile submits with --requeue): SLURM runs it again under the same id
#            (or, should Snakemake see a failure, its retries submit another) and it resumes.
#   chain    ~70 s of training, --config max_job_minutes=1: every job is submitted with -t 1 and the
#            engine stops it after 54 s of training with a checkpoint and exit status 75; Snakemake's
#            retries submit the next job of the chain, which resumes. Checks: >= 2 jobs, every one
#            with TimeLimit 1:00, all but the last FAILED with exit status 75, the last COMPLETED.
#            (Done within one job, i.e. the machine got faster than measured: once more, 2x longer.)
#   Both must exit 0, record a resume in run.json, and end equal (final.pt's weights and optimizer
#   state, metrics.csv without its seconds column: tests/slurm/same_run.py) to an uninterrupted
#   `delay-stability train --spec <its spec.json>` outside SLURM. In this mode slurm.conf also sets
#   AuthInfo cred_expire=15 (how long a requeued job waits before it may start again; default 120 s),
#   SchedulerParameters=bf_interval=2,sched_interval=2 (then it starts; default: up to 60 s later),
#   KillWait=5 (default 30) and OverTimeLimit=1. The last one because the engine's 54 s count from
#   the training process's start, and a job spends 10-40 s before that here (two Snakemake
#   start-ups, imports, on a loaded machine): with a hard 1-minute limit SLURM kills every job first
#   (TIMEOUT; the chain still ends equal, from the rolling checkpoints, but exit 75 never happens).
#   Real limits (hours) leave 10% for that start-up.
# Exit status 0 on success, 1 on any failure (with the daemons' and Snakemake's log tails).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_BIN="${VENV_BIN:-$REPO/.venv/bin}"
DEFAULT_TARGETS=(figures/fig6.pdf results/theory/fig6.csv)
SNAKEMAKE_TIMEOUT="${SNAKEMAKE_TIMEOUT:-900}"   # seconds for the whole workflow run
PREEMPT_TARGET=results/quick/stability/baseline/final.pt
PREEMPT_TIMEOUT="${PREEMPT_TIMEOUT:-420}"       # --preempt: seconds for each of its Snakemake runs
REQUEUE_EPOCHS="${REQUEUE_EPOCHS:-16000}"       # --preempt: epochs of the requeued run (400-1700 a second)
T0=$SECONDS

say() { echo "slurm-test: $* [+$((SECONDS - T0)) s]"; }
die() { echo "slurm-test: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- arguments
SMOKE=0
PREEMPT=0
CHAIN=1
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        --preempt) PREEMPT=1 ;;
        --requeue) PREEMPT=1; CHAIN=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#'; exit 0 ;;
        -*) die "unknown option '$arg' (known: --smoke, --preempt, --requeue, --help)" ;;
        *) TARGETS+=("$arg") ;;
    esac
done
[ $((SMOKE + PREEMPT)) -le 1 ] || die "--smoke and --preempt exclude each other"
[ $PREEMPT -eq 0 ] || [ ${#TARGETS[@]} -eq 0 ] || die "--preempt takes no targets (it builds $PREEMPT_TARGET)"
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${DEFAULT_TARGETS[@]}")
[ $PREEMPT -eq 0 ] || TARGETS=("$PREEMPT_TARGET")

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
BG_PIDS=()     # --preempt: background runs this script started (timeout ... snakemake, the reference)
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
    local ports cpus mem auth_extra="" conf_extra=""
    read -r -a ports <<<"$(free_ports)"
    if [ $PREEMPT -eq 1 ]; then  # see --preempt above: a requeued job restarts soon, jobs may overrun
        auth_extra=",cred_expire=15"
        conf_extra="# --preempt: a requeued job may start again after 15 s (cred_expire), the schedulers
# start it within 2 s, a killed job's processes get 5 s between SIGTERM and SIGKILL, and a job's
# time limit is a soft one (killed 1 minute past it)
SchedulerParameters=bf_interval=2,sched_interval=2
KillWait=5
OverTimeLimit=1"
    fi
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
AuthInfo=socket=$WORK/munge/run/munge.socket$auth_extra
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
$conf_extra
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
    for f in "$WORK"/log/slurmctld.log "$WORK"/log/slurmd.log "$WORK"/snakemake.log "$WORK"/*.snakemake.log \
        "$WORK"/*.reference.log; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f" >&2
        tail -n 40 "$f" >&2
    done
}

kill_leftovers() {  # processes of jobs that escaped SLURM's process tracking (proctrack/linuxproc follows
    # parent pids only: a job's Snakemake whose shell was killed first is re-parented and survives
    # the job), i.e. anything still running in or on this run's work directory, by their PIDs
    local proc pid found=()
    [ -n "$WORK" ] && [ -d "$WORK" ] || return 0
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [ "$pid" = $$ ] && continue
        case "$(readlink "$proc/cwd" 2>/dev/null)" in "$WORK"|"$WORK"/*) found+=("$pid"); continue ;; esac
        tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -qF "$WORK/" && found+=("$pid")
    done
    [ ${#found[@]} -gt 0 ] || return 0
    echo "slurm-test: WARNING: processes left in $WORK after the cluster stopped: ${found[*]}; SIGKILL" >&2
    kill -KILL "${found[@]}" 2>/dev/null || true
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    stop_background
    [ $rc -ne 0 ] && [ -n "$WORK" ] && show_logs
    stop_cluster
    kill_leftovers
    if [ -n "$WORK" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
    [ -n "$WORK" ] && [ "${KEEP:-0}" = 1 ] && say "kept $WORK"
    say "$([ $rc -eq 0 ] && echo passed || echo failed) in $((SECONDS - T0)) s"
    exit $rc
}

# ---------------------------------------------------------------- the workflow through the profile
copy_workflow() {  # copy_workflow [DIR]: the repository without its virtualenv, results, data, logs or figures
    COPY="${1:-$WORK/repo}"
    mkdir -p "$COPY"
    tar -C "$REPO" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./.snakemake --exclude=./results --exclude=./data \
        --exclude=./logs --exclude=./.whl --exclude='./figures/*.pdf' --exclude='./figures/*.png' \
        --exclude=__pycache__ --exclude=.pytest_cache . | tar -C "$COPY" -xf -
    say "workflow copied to $COPY ($(du -sh "$COPY" | cut -f1))"
}

write_overlay_profile() {
    mkdir -p "$WORK/profile"
    cat >"$WORK/profile/config.yaml" <<'EOF'
# Test-only additions to workflow/profiles/slurm: poll soon, keep every SLURM log for the checks.
slurm-init-seconds-before-status-checks: 2
slurm-keep-successful-logs: true
EOF
}

run_workflow() {
    write_overlay_profile
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

# ---------------------------------------------------------------- --preempt: requeue and time-limit chain
stop_background() {  # SIGINT what --preempt left running (timeout passes it on: Snakemake scancels its jobs)
    local pid j running=()
    [ ${#BG_PIDS[@]} -gt 0 ] || return 0
    for pid in "${BG_PIDS[@]}"; do  # only children of this shell that still run (no reused pid)
        if jobs -rp | grep -qx "$pid"; then running+=("$pid"); fi
    done
    BG_PIDS=()
    [ ${#running[@]} -gt 0 ] || return 0
    for pid in "${running[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${running[@]}"; do
        for ((j = 0; j < 300; j++)); do jobs -rp | grep -qx "$pid" || break; sleep 0.1; done
        if jobs -rp | grep -qx "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

baseline_spec() {  # baseline_spec EPOCHS: the tiny baseline as a training spec (for the speed measurement)
    cat <<EOF2
{"model": "mlp", "model_args": {"hidden": [24], "activation": "tanh"}, "dataset": "digits",
 "dataset_args": {"train_size": 48}, "loss": "mse", "dtype": "float64", "epochs": $1, "batch_size": 0,
 "lr": 0.05, "eval_every": 200, "checkpoint_every": 200, "threads": 1, "device": "cpu"}
EOF2
}

measure_speed() {  # EPOCHS_PER_S: epochs a second of the tiny baseline on this machine now
    local n=4000 secs
    baseline_spec $n >"$WORK/speed.spec.json"
    timeout 120 "$VENV_BIN/delay-stability" train --spec "$WORK/speed.spec.json" --out "$WORK/speed" \
        >"$WORK/speed.log" 2>&1 || die "the speed measurement failed: $(tail -n 3 "$WORK/speed.log")"
    secs=$("$VENV_BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["seconds"])' \
        "$WORK/speed/summary.json")
    EPOCHS_PER_S=$("$VENV_BIN/python" -c "print(max(1, round($n / max($secs, 1e-3))))")
    say "tiny baseline: $n epochs in $secs s of training, $EPOCHS_PER_S epochs a second"
}

epochs_for() {  # epochs_for SECONDS: that long at EPOCHS_PER_S, a multiple of 200, at least 2000
    "$VENV_BIN/python" -c "print(max(2000, round($1 * $EPOCHS_PER_S / 200) * 200))"
}

tiny_baseline() {  # tiny_baseline DIR EPOCHS: the copy's config.yaml with a tiny baseline of EPOCHS epochs
    "$VENV_BIN/python" - "$1/config.yaml" "$2" <<'PY'
import sys
import yaml
path, epochs = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    config = yaml.safe_load(f)
config["quick"]["stability"]["baseline"].update(
    model_args={"hidden": [24], "activation": "tanh"}, dataset_args={"train_size": 48},
    epochs=epochs, eval_every=200, checkpoint_every=200)
with open(path, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
PY
}

start_snakemake() {  # start_snakemake NAME DIR [ARG ...]: in the background, log $WORK/NAME.snakemake.log
    local name=$1 dir=$2
    shift 2
    (cd "$dir" && PATH="$VENV_BIN:$PATH" exec timeout -s INT -k 30 "$PREEMPT_TIMEOUT" "$VENV_BIN/snakemake" \
        --profile workflow/profiles/slurm --profile "$WORK/profile" "$PREEMPT_TARGET" "$@") \
        >"$WORK/$name.snakemake.log" 2>&1 9>&- &
    LAST_PID=$!
    BG_PIDS+=("$LAST_PID")
    say "$name: snakemake --profile workflow/profiles/slurm $PREEMPT_TARGET $* (pid $LAST_PID)"
}

start_reference() {  # start_reference NAME DIR: in the background, once the job wrote spec.json (Snakemake
    # removes it when the job fails), the same spec outside SLURM, at a low priority (only needed at
    # the end: the SLURM jobs' timing matters)
    local spec="$2/${PREEMPT_TARGET%/*}/spec.json" copy="$WORK/$1.reference.spec.json"
    (
        for ((i = 0; i < 1500; i++)); do [ -s "$spec" ] && cp "$spec" "$copy" 2>/dev/null && break; sleep 0.2; done
        [ -s "$copy" ] || { echo "no $spec within 300 s" >&2; exit 3; }
        exec timeout -s INT -k 10 "$PREEMPT_TIMEOUT" nice -n 10 "$VENV_BIN/delay-stability" train --spec "$copy" \
            --out "$WORK/$1.reference"
    ) >"$WORK/$1.reference.log" 2>&1 9>&- &
    LAST_PID=$!
    BG_PIDS+=("$LAST_PID")
}

slurm_ids() {  # slurm_ids LOG: the SLURM job ids Snakemake submitted, in order
    sed -n 's/.*submitted with SLURM jobid \([0-9][0-9]*\).*/\1/p' "$1" | sort -n -u
}

job_field() {  # job_field ID FIELD: one field of `scontrol show job` (e.g. Restarts, RunTime)
    scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

requeue_running_job() {  # requeue_running_job NAME DIR PID: once RUNNING with a checkpoint, scontrol requeue
    local name=$1 run="$2/${PREEMPT_TARGET%/*}" pid=$3 log="$WORK/$1.snakemake.log" id="" state="" i t
    for ((i = 0; i < 900; i++)); do  # at most 180 s
        kill -0 "$pid" 2>/dev/null || die "$name: snakemake ended before its job could be requeued"
        [ -n "$id" ] || id=$(slurm_ids "$log" | head -n 1)
        if [ -n "$id" ] && [ -s "$run/checkpoint.pt" ]; then
            state=$(squeue -h -j "$id" -o %T 2>/dev/null || true)
            [ "$state" = RUNNING ] && break
        fi
        sleep 0.2
    done
    [ "$state" = RUNNING ] || die "$name: no RUNNING job with a checkpoint.pt within 180 s (job '$id', state '$state')"
    sleep 3  # a few more checkpoints: resume from the middle of the run, not from its first one
    state=$(squeue -h -j "$id" -o %T 2>/dev/null || true)
    [ "$state" = RUNNING ] || die "$name: job $id is '$state', no longer RUNNING, before the requeue"
    scontrol requeue "$id" || die "$name: scontrol requeue $id failed"
    t=$SECONDS
    say "$name: job $id RUNNING with checkpoint.pt: scontrol requeue $id"
    # Follow the job until it runs again (same id) or Snakemake has submitted another one.
    local seen="" last=""
    for ((i = 0; i < 600; i++)); do  # at most 120 s
        state=$(squeue -h -t all -j "$id" -o %T 2>/dev/null || true)
        if [ "$state" != "$last" ]; then seen="$seen${seen:+ -> }$state"; last=$state; fi
        if [ "$state" = RUNNING ] && [ "$(job_field "$id" Restarts)" != 0 ]; then break; fi
        if [ "$(slurm_ids "$log" | wc -l)" -ge 2 ]; then break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    REQUEUE_ID=$id
    say "$name: job $id after the requeue: $seen (Restarts=$(job_field "$id" Restarts), $((SECONDS - t)) s)"
}

wait_for() {  # wait_for NAME PID WHAT: the exit status of a background run
    local rc=0
    wait "$2" || rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && die "$1: $3 did not finish within $PREEMPT_TIMEOUT s"
    [ $rc -eq 0 ] || die "$1: $3 exited with status $rc (log: $WORK/$1.$3.log)"
    say "$1: $3 finished"
}

same_as_reference() {  # same_as_reference NAME DIR: equal to the uninterrupted run, resumed at least once
    local run="$2/${PREEMPT_TARGET%/*}" out
    [ -s "$2/$PREEMPT_TARGET" ] || die "$1: $PREEMPT_TARGET was not produced"
    [ ! -e "$run/checkpoint.pt" ] || die "$1: checkpoint.pt left behind in $run"
    cmp -s "$run/spec.json" "$WORK/$1.reference.spec.json" || die "$1: spec.json differs from the reference's"
    out=$("$VENV_BIN/python" "$REPO/tests/slurm/same_run.py" "$run" "$WORK/$1.reference" 2>&1) || die "$1: $out"
    grep -q '^resumed: \[{' <<<"$out" || die "$1: run.json records no resume: $out"
    say "$1: $(tr '\n' ' ' <<<"$out")"
}

check_requeue() {  # the requeued job resumed: in place (same id) or through a resubmission
    local log="$WORK/requeue.snakemake.log" ids n last
    ids=$(slurm_ids "$log")
    n=$(wc -w <<<"$ids")
    last=$(tail -n 1 <<<"$ids")
    [ "$(squeue -h -t all -j "$last" -o %T 2>/dev/null || true)" = COMPLETED ] \
        || die "requeue: last job $last is not COMPLETED"
    if [ "$n" -eq 1 ]; then
        [ "$(job_field "$REQUEUE_ID" Restarts)" = 1 ] \
            || die "requeue: job $REQUEUE_ID has Restarts=$(job_field "$REQUEUE_ID" Restarts) after one requeue"
        ! grep -q '^Error in rule' "$log" || die "requeue: Snakemake saw a failure: $(grep -m 1 -A 2 '^Error in rule' "$log")"
        say "requeue: SLURM ran job $REQUEUE_ID again under the same id (Restarts=1, RunTime $(job_field "$REQUEUE_ID" RunTime) after the requeue); Snakemake saw no failure"
    else
        say "requeue: Snakemake treated the requeue as a failure and submitted $((n - 1)) more job(s): $(echo $ids)"
    fi
}

check_chain() {  # check_chain NAME DIR: >= 2 jobs of TimeLimit 1:00; all but the last stopped with exit 75
    local name=$1 log="$WORK/$1.snakemake.log" ids id last n=0 limit state ran slurm_log summary=""
    ids=$(slurm_ids "$log")
    last=$(tail -n 1 <<<"$ids")
    for id in $ids; do
        n=$((n + 1))
        read -r state limit ran <<<"$(squeue -h -t all -j "$id" -o '%T %l %M' 2>/dev/null || true)"
        [ "$limit" = 1:00 ] || die "$name: job $id has time limit '$limit', not 1:00 (sbatch -t 1)"
        summary="$summary $id:$state/$ran"
        if [ "$id" = "$last" ]; then
            [ "$state" = COMPLETED ] || die "$name: last job $id is '$state', not COMPLETED"
            continue
        fi
        slurm_log=$(find "$2/.snakemake/slurm_logs" -name "$id.log" | head -n 1)
        [ "$state" = FAILED ] && [ -n "$slurm_log" ] && grep -q 'exit status 75' "$slurm_log" \
            || die "$name: job $id is '$state' after $ran: it should have stopped itself with exit status 75 \
after 54 s of training$(grep -qs 'DUE TO TIME LIMIT' "${slurm_log:-/dev/null}" && echo '; SLURM killed it at its time limit first')"
    done
    [ $n -ge 2 ] || die "$name: $n SLURM job(s); a run longer than max_job_minutes=1 needs >= 2"
    say "$name: $n SLURM jobs, time limit 1:00 each (state/run time):$summary; all but the last stopped with exit status 75"
}

start_chain() {  # start_chain NAME EPOCHS: a fresh copy with max_job_minutes=1, in the background
    rm -rf "${WORK:?}/$1"
    cp -a "$WORK/pristine" "$WORK/$1"
    tiny_baseline "$WORK/$1" "$2"
    start_snakemake "$1" "$WORK/$1" --config max_job_minutes=1
}

preempt_test() {
    local a="$WORK/requeue" chain=chain pid_a pid_b ref_a ref_b epochs
    measure_speed
    copy_workflow "$WORK/pristine"
    cp -a "$WORK/pristine" "$a"
    write_overlay_profile
    # requeue: a fixed length (5-40 s of training here); it only has to run for a few seconds
    tiny_baseline "$a" "$REQUEUE_EPOCHS"
    start_snakemake requeue "$a"
    pid_a=$LAST_PID
    # chain: 42 s of training at the speed measured alone, i.e. 65-85 s at the 0.5-0.65 times that
    # speed that a job got here beside the other one, longer than the 54 s that one job of 1 minute
    # trains: two jobs at 0.39-0.78 times that speed (slower: three; faster: see below)
    if [ $CHAIN -eq 1 ]; then
        epochs=$(epochs_for 42)
        start_chain $chain "$epochs"
        pid_b=$LAST_PID
    fi
    start_reference requeue "$a"
    ref_a=$LAST_PID
    if [ $CHAIN -eq 1 ]; then
        start_reference $chain "$WORK/$chain"
        ref_b=$LAST_PID
    fi
    requeue_running_job requeue "$a" "$pid_a"
    wait_for requeue "$pid_a" snakemake
    wait_for requeue "$ref_a" reference
    check_requeue
    same_as_reference requeue "$a"
    if [ $CHAIN -eq 0 ]; then
        BG_PIDS=()
        say "chain: not run (--requeue; run.sh --preempt runs it)"
        return 0
    fi
    wait_for $chain "$pid_b" snakemake
    wait_for $chain "$ref_b" reference
    if [ "$(slurm_ids "$WORK/$chain.snakemake.log" | wc -l)" -eq 1 ]; then
        # Faster than measured (the machine's load changed): once more, twice as long.
        say "$chain: done within one job of 1 minute ($epochs epochs): again with $((epochs * 2)) epochs"
        chain=chain2
        start_chain $chain $((epochs * 2))
        pid_b=$LAST_PID
        start_reference $chain "$WORK/$chain"
        ref_b=$LAST_PID
        wait_for $chain "$pid_b" snakemake
        wait_for $chain "$ref_b" reference
    fi
    BG_PIDS=()
    check_chain $chain "$WORK/$chain"
    same_as_reference $chain "$WORK/$chain"
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
elif [ $PREEMPT -eq 1 ]; then
    preempt_test
else
    copy_workflow
    run_workflow
    check_jobs
fi
