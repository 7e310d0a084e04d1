#!/usr/bin/env python3
"""The Slurm holder and a task's first exec, without Slurm.

Starts `SIFRUN slurm-hold` as the calling user (as the plugin does for a
step without an ECL), hands it a request, and times, per run:
  ready   from the holder's start to its ready report;
  cold    a task joining right after (nsenter into the holder's user and
          mount namespaces, as task_init does) and running TASK: its
          binary comes cold through the fresh FUSE mount;
  pre-read, warm  the same after WARM (files of the image, read in full
          through the holder's root first: the time that takes, then the
          task's);
  second  a second task in the same container (everything cached).
The three kinds alternate, one holder each. Medians are printed.

Usage (as an ordinary user with /dev/fuse, e.g. runuser -u sifrun-test --):
  bench/holder-bench.py [--runs N] [--task 'CMD ARGS'] [--warm 'PATH ...']
                        [--command NAME] [--gap MS] SIFRUN IMAGE
--command sends the step's command (argv[0]) as the plugin does, so that
the holder decompresses it ahead.
"""
import argparse
import json
import statistics
import subprocess
import time


def release():
    """The workspace's release, which the holder must match."""
    import pathlib, re
    cargo = pathlib.Path(__file__).resolve().parent.parent / "Cargo.toml"
    return re.search(r'^version = "([^"]+)"', cargo.read_text(), re.M).group(1)


def request(image, command):
    # slurm_conf::protocol::Request, version 2 (every field it requires).
    r = {
        "version": 2, "release": release(), "step": "1.0", "image": image, "ecl_config": None,
        "binds": [], "env": [], "pwd": None, "writable_tmpfs": False,
        "no_home": True, "gpu": "none", "netfs": False, "netfs_types": [],
        "fabric_libraries": False, "allow_umad": False, "slurm_client": False,
        "slurm_conf": "/etc/slurm/slurm.conf", "verbosity": 0,
        "job_env": [["PATH", "/usr/bin:/bin"], ["HOME", "/tmp"]],
    }
    if command:
        r["command"] = command
    return (json.dumps(r) + "\n").encode()


def one(args, kind):
    t0 = time.perf_counter()
    holder = subprocess.Popen(
        [args.sifrun, "slurm-hold", "--slurm-step=1.0", args.image],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd="/tmp", env={"PATH": "/usr/bin:/bin"})
    holder.stdin.write(request(args.image, args.command))
    holder.stdin.close()
    line = holder.stdout.readline()
    ready = time.perf_counter()
    try:
        if b'"ready"' not in line:
            raise SystemExit(f"holder-bench: no ready report: {line!r}")
        # The container process is the holder's only child.
        with open(f"/proc/{holder.pid}/task/{holder.pid}/children") as f:
            pid = f.read().split()[0]
        task = ["nsenter", "-t", pid, "-U", "-m", "--preserve-credentials"] + args.task.split()
        out = {"ready": (ready - t0) * 1e3}
        if args.gap:
            time.sleep(args.gap / 1e3)
        start = time.perf_counter()
        if kind == "warm":
            for w in args.warm.split():
                with open(f"/proc/{pid}/root{w}", "rb") as f:
                    while f.read(1 << 20):
                        pass
            t = time.perf_counter()
            out["pre-read"] = (t - start) * 1e3
            start = t
        subprocess.run(task, check=True, stdout=subprocess.DEVNULL)
        t = time.perf_counter()
        if kind == "second":
            subprocess.run(task, check=True, stdout=subprocess.DEVNULL)
            start, t = t, time.perf_counter()
        out[kind] = (t - start) * 1e3
        return out
    finally:
        holder.terminate()
        holder.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--task", default="/bin/true")
    p.add_argument("--warm", default="", help="image paths to read before the task")
    p.add_argument("--command", default="",
                   help="the step's command in the request (its blocks are decompressed ahead)")
    p.add_argument("--gap", type=float, default=0,
                   help="ms between the ready report and the task (slurmstepd forks "
                        "the tasks about 7 ms after it on the 2-CPU test machine)")
    p.add_argument("sifrun")
    p.add_argument("image")
    args = p.parse_args()
    kinds = ["cold", "second"] + (["warm"] if args.warm else [])
    got = {}
    for _ in range(args.runs):
        for kind in kinds:
            for k, v in one(args, kind).items():
                got.setdefault(k, []).append(v)
            time.sleep(0.1)
    print(f"{args.sifrun} {args.image}, task {args.task!r}, {args.runs} runs each:")
    for k, v in got.items():
        print(f"  {k:9} median {statistics.median(v):7.2f} ms  (min {min(v):.2f})")


if __name__ == "__main__":
    main()
