#!/usr/bin/env python3
"""Where a container step's extra time goes, to the tenth of a millisecond,
from the kernel's scheduler events (slurmd's log has whole milliseconds).

Runs PAIRS pairs of steps, `srun -nN true` and `srun -nN --sif-image=IMAGE
true` (alternating, after --gap seconds of rest each), as USER under
`perf record -a` (the sched_process_fork/exec/exit tracepoints), then
prints, for each kind of step, the median time after srun's exec of:

  slurmstepd exec     slurmd started the step's slurmstepd
  holder fork/exec    slurmstepd forked the holder (init_post_opt) / it
                      exec'd sifrun-hold or sifrun
  task fork           slurmstepd forked the first task
  task exec           the first task exec'd the program
  last task exit      the last task ended
  srun exit           srun ended: what the user waits for

and the difference. Run as root with the cluster and the plugin set up
(as bench/srun-bench.sh --setup or tests/run-all do):

    bench/step-sched.py [--pairs 15] [--tasks 2] [--gap 0.3] [--user sifrun-test] IMAGE

The program the tasks run is `true`; its exec is found by file name
(`true` or `busybox`), so use an image whose `true` is one of those."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

EVENTS = ["slurmstepd exec", "holder fork", "holder exec", "task fork", "task exec",
          "last task exit", "srun exit"]
LINE = re.compile(r"\s*(.+?)\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+sched:(\S+):\s*(.*)")


def record(a, data):
    """The steps under perf record; srun's output is dropped."""
    srun = lambda image: (f"runuser -u {a.user} -- env -C {a.dir} srun -n{a.tasks} "
                          + (f"--sif-image={image} " if image else "") + "true >/dev/null")
    loop = "; ".join([f"sleep {a.gap}", srun(None), f"sleep {a.gap}", srun(a.image)])
    cmd = ["perf", "record", "-q", "-a", "-o", data,
           "-e", "sched:sched_process_fork", "-e", "sched:sched_process_exec",
           "-e", "sched:sched_process_exit", "--", "bash", "-c",
           f"for i in $(seq {a.pairs}); do {loop}; done"]
    subprocess.run(cmd, check=True)


def events(data):
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,cpu,time,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    ev = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            comm, pid, tid, t, kind, rest = m.groups()
            ev.append((float(t), kind, comm, int(pid), int(tid), rest))
    ev.sort()
    return ev


def steps(ev):
    """(start, end) of each srun, in order."""
    started, runs = {}, []
    for t, kind, comm, pid, tid, rest in ev:
        if kind == "sched_process_exec" and re.search(r"filename=\S*/srun\b", rest):
            started[pid] = t
        elif kind == "sched_process_exit" and pid == tid and pid in started:
            runs.append((started.pop(pid), t))
    return sorted(runs)


def marks(ev, start, end):
    """The events of one step, in ms after srun's exec."""
    forked, got = {}, {}
    ms = lambda t: (t - start) * 1e3
    for t, kind, comm, pid, tid, rest in ev:
        if not start <= t <= end:
            continue
        if kind == "sched_process_fork":
            m = re.search(r"child_pid=(\d+)", rest)
            if m:
                forked[int(m.group(1))] = t
        elif kind == "sched_process_exec":
            if re.search(r"filename=\S*/slurmstepd\b", rest):
                got.setdefault("slurmstepd exec", ms(t))
            elif re.search(r"filename=\S*/sifrun(-hold)?\b", rest):
                got.setdefault("holder exec", ms(t))
                if pid in forked:
                    got.setdefault("holder fork", ms(forked[pid]))
            elif re.search(r"filename=\S*/(true|busybox)\b", rest):
                got.setdefault("task exec", ms(t))
                if pid in forked:
                    got.setdefault("task fork", ms(forked[pid]))
        elif kind == "sched_process_exit" and comm in ("true", "busybox"):
            got["last task exit"] = ms(t)
    got["srun exit"] = ms(end)
    return got


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=15)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--gap", type=float, default=0.3)
    p.add_argument("--user", default="sifrun-test")
    p.add_argument("image")
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("step-sched: run as root (perf record -a)")
    a.dir = os.path.dirname(os.path.abspath(a.image))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        record(a, data)
        ev = events(data)
    runs = steps(ev)
    if len(runs) != 2 * a.pairs:
        sys.exit(f"step-sched: {len(runs)} sruns traced, not {2 * a.pairs}")
    kinds = {"without": runs[0::2], "with": runs[1::2]}
    table = {k: [marks(ev, s, e) for s, e in r] for k, r in kinds.items()}
    print(f"median ms after srun's exec ({a.pairs} steps without, {a.pairs} with a container, -n{a.tasks}):")
    print(f"  {'event':18} {'without':>8} {'with':>8} {'extra':>8}")
    for name in EVENTS:
        med = {}
        for k, rows in table.items():
            v = [r[name] for r in rows if name in r]
            med[k] = statistics.median(v) if v else None
        fmt = lambda x: f"{x:8.2f}" if x is not None else f"{'-':>8}"
        w, c = med["without"], med["with"]
        extra = fmt(c - w) if w is not None and c is not None else f"{'-':>8}"
        print(f"  {name:18} {fmt(w)} {fmt(c)} {extra}")


if __name__ == "__main__":
    main()
