#!/usr/bin/env python3
"""Two or more builds of the lean holder, compared in real steps, paired.

Each round installs each HOLDER in turn (the order alternating between
rounds) as STAGE/sifrun-hold, the holder the plugin runs beside
`launcher=STAGE/sifrun`, and runs PER pairs of steps as USER: `srun -nN
true` and `srun -nN --sif-image=IMAGE true` (which first alternating), each
after --gap seconds of rest. A pair's extra is the container step's time
minus the bare step's, so a change of load hits both; the median extra per
build is printed after each round and at the end.

    bench/holder-pairs.py [--rounds 4] [--per 8] [--tasks 2] [--gap 0.3]
                          [--user sifrun-test] --stage STAGE IMAGE HOLDER...

As root, with the cluster and the plugin set up (bench/srun-bench.sh
--setup's steps, or tests/run-all's); STAGE/sifrun-hold is left as the last
HOLDER installed."""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per", type=int, default=8)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--gap", type=float, default=0.3)
    p.add_argument("--user", default="sifrun-test")
    p.add_argument("--stage", required=True)
    p.add_argument("image")
    p.add_argument("holders", nargs="+")
    a = p.parse_args()
    image = os.path.abspath(a.image)
    cwd = os.path.dirname(image)

    def install(holder):
        tmp = os.path.join(a.stage, ".sifrun-hold.new")
        shutil.copy(holder, tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, os.path.join(a.stage, "sifrun-hold"))

    def step(container):
        time.sleep(a.gap)
        cmd = ["runuser", "-u", a.user, "--", "srun", f"-n{a.tasks}"]
        cmd += [f"--sif-image={image}"] if container else []
        started = time.perf_counter()
        r = subprocess.run(cmd + ["true"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode:
            sys.exit(f"holder-pairs: {' '.join(cmd)} true: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
        return (time.perf_counter() - started) * 1e3

    extra = {h: [] for h in a.holders}
    for h in a.holders:  # one warm-up pair each
        install(h)
        step(True)
        step(False)
    for r in range(a.rounds):
        for h in (a.holders if r % 2 == 0 else a.holders[::-1]):
            install(h)
            step(True)  # the new build's first start
            for i in range(a.per):
                first = i % 2 == 0
                x = step(not first)
                y = step(first)
                bare, cont = (x, y) if first else (y, x)
                extra[h].append(cont - bare)
        print(f"round {r + 1}: " + "  ".join(f"{os.path.basename(h)} {statistics.median(v):.2f} ms"
                                           for h, v in extra.items()), flush=True)
    print(f"median extra (container - bare) over {a.rounds * a.per} pairs each:")
    for h, v in extra.items():
        print(f"  {h:50} {statistics.median(v):6.2f} ms  (mean {statistics.mean(v):6.2f})")


if __name__ == "__main__":
    main()
