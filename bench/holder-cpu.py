#!/usr/bin/env python3
"""The CPU a Slurm step's holder costs, without Slurm.

Starts `HOLDER slurm-hold` as USER (as the plugin does for a step without
an ECL) in a cgroup of its own (cgroup v1's cpuacct), hands it a request
whose step command is COMMAND, reads its ready report, waits 300 ms (the
lookups and the read-ahead after the report), reads the cgroup's CPU time,
then sends SIGTERM and reads it again after the holder's end. Prints the
medians over RUNS of: the CPU to 300 ms after the report, the CPU of the
whole life, the wall time from the start to the report and from SIGTERM
to the end, and each thread's CPU (from /proc/PID/task/*/schedstat, the
server's `S:`, the container process's `C:`; a thread that ended is not
counted there, but in the cgroup's).

    bench/holder-cpu.py [--runs 15] [--user sifrun-test] [--command true] HOLDER IMAGE

As root (the cgroup); the holder and the image must be readable by USER.
--command '' sends no command (nothing read ahead)."""

import argparse
import json
import os
import pathlib
import pwd
import re
import signal
import statistics
import subprocess
import time

CGROUP = "/sys/fs/cgroup/cpuacct/sifrun-holder-cpu"


def release():
    cargo = pathlib.Path(__file__).resolve().parent.parent / "Cargo.toml"
    return re.search(r'^version = "([^"]+)"', cargo.read_text(), re.M).group(1)


def request(image, command, home):
    # slurm_conf::protocol::Request, version 2 (every field it requires).
    return {
        "version": 2, "release": release(), "step": "1.0", "image": image, "ecl_config": None,
        "binds": [], "env": [], "pwd": None, "writable_tmpfs": False, "no_home": True,
        "gpu": "none", "netfs": False, "netfs_types": [], "fabric_libraries": False,
        "allow_umad": False, "slurm_client": False, "slurm_conf": "/etc/slurm/slurm.conf",
        "verbosity": 0, "job_env": [["PATH", "/usr/bin:/bin"], ["HOME", home]],
        "command": command or None,
    }


def usage_ms():
    return int(pathlib.Path(CGROUP, "cpuacct.usage").read_text()) / 1e6


def threads(pid):
    out = {}
    for t in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (t / "comm").read_text().strip()
            out[name] = out.get(name, 0) + int((t / "schedstat").read_text().split()[0]) / 1e6
        except OSError:
            pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--user", default="sifrun-test")
    p.add_argument("--command", default="true")
    p.add_argument("holder")
    p.add_argument("image")
    a = p.parse_args()
    pw = pwd.getpwnam(a.user)
    a.holder, a.image = os.path.abspath(a.holder), os.path.abspath(a.image)
    os.makedirs(CGROUP, exist_ok=True)
    line = (json.dumps(request(a.image, a.command, pw.pw_dir)) + "\n").encode()

    def as_user():
        pathlib.Path(CGROUP, "tasks").write_text(str(os.getpid()))
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    per_thread, settled, whole, ready, ending = {}, [], [], [], []
    for _ in range(a.runs):
        before = usage_ms()
        start = time.perf_counter()
        h = subprocess.Popen([a.holder, "slurm-hold", "--slurm-step=1.0", a.image],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             cwd=pw.pw_dir, preexec_fn=as_user, env={})
        h.stdin.write(line)
        h.stdin.close()
        report = h.stdout.readline()
        ready.append((time.perf_counter() - start) * 1e3)
        if b'"ready"' not in report:
            h.kill()
            raise SystemExit(f"holder-cpu: no ready report: {report[:300]!r}")
        time.sleep(0.3)
        settled.append(usage_ms() - before)
        children = pathlib.Path(f"/proc/{h.pid}/task/{h.pid}/children").read_text().split()
        seen = {f"S:{k}": v for k, v in threads(h.pid).items()}
        for c in children:
            seen.update({f"C:{k}": v for k, v in threads(int(c)).items()})
        for k, v in seen.items():
            per_thread.setdefault(k, []).append(v)
        stop = time.perf_counter()
        h.send_signal(signal.SIGTERM)
        h.wait()
        ending.append((time.perf_counter() - stop) * 1e3)
        whole.append(usage_ms() - before)
        time.sleep(0.05)
    med = statistics.median
    print(f"{a.runs} holders, command {a.command or '(none)'}, medians:")
    print(f"  CPU to 300 ms after the report  {med(settled):6.2f} ms")
    print(f"  CPU of the whole life           {med(whole):6.2f} ms")
    print(f"  start to report (wall)          {med(ready):6.2f} ms")
    print(f"  SIGTERM to end (wall)           {med(ending):6.2f} ms")
    for k in sorted(per_thread):
        print(f"  thread {k:24} {med(per_thread[k]):6.2f} ms (in {len(per_thread[k])} runs)")


if __name__ == "__main__":
    main()
