#!/usr/bin/env python3
"""Per-phase timeline of Slurm steps from slurmd's log (SlurmdDebug=debug,
as tests/slurm/cluster configures it): for each job with one step, the time
of each event after slurmd's "launch task", in ms; the medians of the
steps without and with a container (the plugin's "container ready" line)
side by side, and the difference.

    step-timeline.py SLURMD_LOG [FIRST_LINE]

FIRST_LINE: read the log from that line on (1-based)."""

import re
import statistics
import sys
from datetime import datetime

EVENTS = [
    ("plugin loaded (slurmstepd)", r"sifrun\.conf:\d+: Loaded plugin"),
    ("I/O set up", r"IO handler started"),
    ("container ready (user_init)", r"container ready in"),
    ("tasks forked", r"starting \d+ tasks"),
    ("launch response sent", r"Sending launch resp"),
    ("last task reaped", r"task \d+ \(\d+\) exited"),
    ("step's processes killed, I/O closing", r"Waiting for IO"),
    ("slurmstepd done", r"done with (job|step)"),  # "step" from 24.11
    ("job epilog done", r"(?i)completed epilog for jobid"),  # "JobId=" from 24.11
]


def parse(path, first):
    steps = {}
    with open(path, errors="replace") as f:
        for n, line in enumerate(f, 1):
            if n < first:
                continue
            m = re.match(r"\[([0-9T:.-]+)\] (\[(\d+)\.\S+\] )?(.*)", line)
            if not m:
                continue
            try:
                t = datetime.fromisoformat(m.group(1)).timestamp()
            except ValueError:
                continue
            job, msg = m.group(3), m.group(4)
            launch = re.search(r"launch task StepId=(\d+)\.", msg)
            if launch:
                steps[launch.group(1)] = {"launch": t}
                continue
            if job is None:
                jm = re.search(r"(?i)jobid[ =]\[?(\d+)", msg)
                job = jm.group(1) if jm else None
            if job in steps:
                for name, pattern in EVENTS:
                    if re.search(pattern, msg):
                        steps[job][name] = t
    return [s for s in steps.values() if "slurmstepd done" in s]


def main():
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    steps = parse(sys.argv[1], first)
    groups = {
        "no container": [s for s in steps if "container ready (user_init)" not in s],
        "container": [s for s in steps if "container ready (user_init)" in s],
    }
    n = {g: len(v) for g, v in groups.items()}
    print(f"median ms after slurmd's 'launch task' ({n['no container']} steps without, {n['container']} with a container):")
    print(f"  {'event':40} {'without':>8} {'with':>8} {'extra':>8}")
    for name, _ in EVENTS:
        med = {}
        for g, ss in groups.items():
            v = [(s[name] - s["launch"]) * 1e3 for s in ss if name in s]
            med[g] = statistics.median(v) if v else None
        a, b = med["no container"], med["container"]
        fmt = lambda x: f"{x:8.1f}" if x is not None else f"{'-':>8}"
        extra = fmt(b - a) if a is not None and b is not None else f"{'-':>8}"
        print(f"  {name:40} {fmt(a)} {fmt(b)} {extra}")


if __name__ == "__main__":
    main()
