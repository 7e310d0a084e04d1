#!/usr/bin/env python3
"""Times commands side by side, interleaved: each round runs every command
once, in an order that alternates between rounds, so that a change of load
on the machine hits all of them alike. Each run starts after --gap seconds
of rest, so that one command never waits for the end of the job before it
(Slurm's epilog; the node's CPUs). Prints each command's median, mean,
standard deviation and min, and the ratio of each median to the first's.

    interleave.py [--runs R] [--warmup W] [--gap S] CMD_A CMD_B ...

A command is split on white space and run without a shell; one that fails
stops the measurement (exit status 1)."""

import argparse
import statistics
import subprocess
import sys
import time


def run(cmd, gap=0.0):
    time.sleep(gap)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"interleave: {' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    return elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gap", type=float, default=0.3, help="seconds of rest before each run (not timed)")
    p.add_argument("commands", nargs="+")
    a = p.parse_args()
    cmds = [c.split() for c in a.commands]
    for _ in range(a.warmup):
        for c in cmds:
            run(c)
    times = [[] for _ in cmds]
    for i in range(a.runs):
        order = list(range(len(cmds)))
        if i % 2:
            order.reverse()
        for k in order:
            times[k].append(run(cmds[k], a.gap))
    base = statistics.median(times[0])
    print(f"{a.runs} runs each after {a.warmup} warm-ups, interleaved:")
    for c, t in zip(a.commands, times):
        med = statistics.median(t)
        print(
            f"  {c:<50} median {med * 1e3:7.1f} ms  mean {statistics.mean(t) * 1e3:7.1f}"
            f" ± {statistics.stdev(t) * 1e3:5.1f} ms  min {min(t) * 1e3:7.1f} ms"
            f"  ratio {med / base:.3f}x"
        )
    if len(cmds) == 2:
        print(f"RATIO (median, second / first): {statistics.median(times[1]) / base:.3f}x")


if __name__ == "__main__":
    main()
