"""Run a command on GPUs of its own: ``delay-stability-gpu-slot --gpus N -- COMMAND [ARG ...]``.

On a machine with several GPUs, ``snakemake --resources gpu=4`` lets at most four GPU jobs run at
once but does not say which GPU each one gets: without help every job lands on GPU 0. This wrapper
gives each job its own. It claims N free GPUs by taking an exclusive, non-blocking ``flock`` on one
lock file per GPU (``<lock dir>/gpu-<id>.lock``), sets ``CUDA_VISIBLE_DEVICES`` to the claimed ids
and replaces itself with COMMAND (``execvp``). The locks belong to the command's process (and the
children it forks), so the kernel frees them when it exits, however it exits: a crash or
``kill -9`` leaves no stale claim. When fewer than N GPUs are free it waits, holding none, and
tries again.

The GPUs to choose from: ``--pool``, else ``CUDA_VISIBLE_DEVICES`` if set (so a user can hand the
workflow a subset), else every GPU that ``nvidia-smi`` lists, else ``torch.cuda.device_count()``.
The lock directory (``--lock-dir``, default ``$GPU_SLOT_LOCK_DIR`` or /tmp/gpu-slots) is shared
by every workflow on the machine, so two runs side by side do not share a GPU either.

It steps aside (runs COMMAND unchanged) when
  * N is 0 (quick scale: the training rules declare ``gpu=0``),
  * no GPU is found (a warning is printed; the command then decides, e.g. ``device: auto`` -> CPU),
  * it runs in a SLURM job (``SLURM_JOB_ID``) that holds exactly N GPUs: SLURM bound the job to
    them (the SLURM profile). A SLURM job that holds more GPUs than N (Snakemake with the
    local-gpu profile inside one big allocation) shares them out with locks kept per SLURM job.

Exit status: that of COMMAND; 2 for a usage error (bad flag, N larger than the pool); 127 when
COMMAND cannot be run.
"""
import argparse
import errno
import fcntl
import os
import subprocess
import sys
import time

DEFAULT_LOCK_DIR = os.environ.get("GPU_SLOT_LOCK_DIR", "/tmp/gpu-slots")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="gpu_slot.py", description="Run COMMAND with CUDA_VISIBLE_DEVICES set to free GPUs of its own."
    )
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs the command needs (0: run it unchanged)")
    p.add_argument("--pool", default=None, help="comma-separated GPU ids to choose from (default: detected)")
    p.add_argument("--lock-dir", default=DEFAULT_LOCK_DIR, help="directory of the per-GPU lock files")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between tries while every GPU is taken")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("no command given (usage: gpu_slot.py --gpus N -- COMMAND [ARG ...])")
    if args.gpus < 0:
        p.error(f"--gpus must be >= 0, got {args.gpus}")
    if args.poll <= 0:
        p.error(f"--poll must be > 0, got {args.poll}")
    return p, args


def split_ids(text):
    """'0, 1,GPU-ab' -> ['0', '1', 'GPU-ab'] (ids are kept as strings: indices or UUIDs)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def detect_pool():
    """The GPU ids this machine offers: CUDA_VISIBLE_DEVICES, nvidia-smi, or torch, in that order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return split_ids(visible)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        return split_ids(out.replace("\n", ","))
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def lock_path(lock_dir, gpu_id):
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_id)
    return os.path.join(lock_dir, f"gpu-{safe}.lock")


def open_lock_dir(lock_dir):
    """Create the shared lock directory (sticky and world-writable, like /tmp, for several users)."""
    try:
        os.makedirs(lock_dir, exist_ok=True)
        os.chmod(lock_dir, 0o1777)
    except PermissionError:
        pass  # made by another user: usable as long as we may create or open files in it


def try_lock(path):
    """An fd holding an exclusive flock on `path`, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.fchmod(fd, 0o666)  # other users of the machine lock the same file (umask would narrow it)
    except PermissionError:
        pass  # someone else's file, already shared
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def claim(pool, n, lock_dir, poll):
    """Claim n GPUs of `pool`, waiting while fewer are free. Returns [(gpu_id, fd), ...].

    All-or-nothing: a partial claim is released before waiting, so two jobs that each want two
    GPUs of a busy pool cannot hold one each and wait for each other forever.
    """
    waited = False
    while True:
        held = []
        for gpu_id in pool:
            fd = try_lock(lock_path(lock_dir, gpu_id))
            if fd is not None:
                held.append((gpu_id, fd))
                if len(held) == n:
                    return held
        for _, fd in held:
            os.close(fd)
        if not waited:
            print(f"gpu_slot: waiting for {n} free GPU(s) of {','.join(pool)}", file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll)


def run(command, env):
    """Replace this process with `command` (the held lock fds are inherited)."""
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        print(f"gpu_slot: error: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        sys.exit(127)


def main(argv=None):
    parser, args = parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    if args.gpus == 0:
        run(args.command, env)
    pool = split_ids(args.pool) if args.pool is not None else detect_pool()
    if not pool:
        print("gpu_slot: WARNING: no GPU found; running the command without CUDA_VISIBLE_DEVICES", file=sys.stderr)
        run(args.command, env)
    if args.gpus > len(pool):
        parser.exit(2, f"gpu_slot: error: --gpus {args.gpus} but only {len(pool)} GPU(s) in the pool {','.join(pool)}\n")
    lock_dir = args.lock_dir
    slurm_job = env.get("SLURM_JOB_ID")
    if slurm_job:
        if args.gpus == len(pool):
            run(args.command, env)  # SLURM gave this job exactly its GPUs
        lock_dir = os.path.join(lock_dir, f"slurm-job-{slurm_job}")  # share out this allocation's GPUs
    open_lock_dir(lock_dir)
    held = claim(pool, args.gpus, lock_dir, args.poll)
    for gpu_id, fd in held:
        os.set_inheritable(fd, True)  # the command keeps the lock for as long as it runs
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(args.command)[:200]}\n".encode())
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_id for gpu_id, _ in held)
    print(f"gpu_slot: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    run(args.command, env)


if __name__ == "__main__":
    main()
