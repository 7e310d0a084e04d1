#!/usr/bin/env bash
# Step launch overhead of the plugin, side by side:
#   srun -nN true   vs   srun -nN --sif-image=IMG true
# The two commands alternate (A B, B A, A B, ...) so that a change of load
# on the machine hits both alike; medians, means and the ratio of the
# medians are printed, with `uptime`'s load before and after. Then the
# set-up phases of one step (--sif-verbose: the holder's phases, the
# plugin's "container ready" and "task joined") and the mean per-node
# set-up the plugin logged for the measured steps.
#
# Usage (as root):
#   bench/srun-bench.sh [--setup] [--runs R] [--warmup W] [--tasks N]
#                       [--user USER] [IMAGE]
#   --setup    stage target/release/sifrun and libspank_sifrun.so (build
#              them first: cargo build --release -p launcher -p spank-plugin,
#              and `make holder` for the lean holder staged beside sifrun),
#              enable the plugin, start tests/slurm/cluster, build a busybox
#              image as USER when IMAGE is not given; everything is stopped
#              and removed at the end (--sifrun PATH, --plugin PATH: other
#              builds, to compare two; --holder PATH: the lean holder
#              staged beside sifrun, default the sifrun-hold beside
#              --sifrun if there is one, `--holder none` for none, so the
#              plugin runs sifrun itself). Take the cluster lock around it:
#              flock -o /tmp/sifrun-cluster.lock bench/srun-bench.sh --setup
#   Without --setup: the cluster and plugin are set up already (as
#   tests/run-all does) and IMAGE must be given.
#   --runs R   measured steps per command (default 30); --warmup W (3);
#   --gap S    seconds of rest before each step, so that no step waits for
#              the previous job's end (default 0.3);
#   --tasks N  tasks per step (default 2).
#   --docker   with --setup: a docker:// image from the cache against the
#              same image as a local SIF (issue 14: a step for a cached
#              digest costs no conversion). Starts Debian's docker-registry
#              on 127.0.0.1, pushes tests/oci/make-images' image with
#              skopeo, pulls it into a local SIF as USER and converts it
#              once into USER's cache (SIFRUN_CACHEDIR in the bench's
#              directory); then compares, side by side,
#                A  srun -nN --sif-image=LOCAL.sif sh -c true
#                B  srun -nN --sif-image=docker://REF:t sh -c true
#                   (the tag resolved to its digest by srun, every step)
#                C  srun -nN --sif-image=docker://REF@sha256:D sh -c true
#                D  B as a later step of a job that ran B: the job's pin
#                   (SLURM_SIFRUN_IMAGE_PIN, _OF) in srun's environment
#              and prints B/A, C/A and D/A.
#   --slurm PREFIX  with --setup: the Slurm series installed under PREFIX
#              (tests/slurm/build-slurm: /opt/slurm-25.11) instead of
#              Debian's; its cluster, its clients first on PATH, and by
#              default the plugin built for it (make plugin SLURM=PREFIX).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
sifrun=target/release/sifrun plugin=target/release/libspank_sifrun.so holder=""
runs=30 warmup=3 gap=0.3 tasks=2 user=sifrun-test setup=0 image="" slurm="" plugin_given=0 docker=0
while [ $# -gt 0 ]; do
    case "$1" in
        --setup) setup=1 ;;
        --runs) runs="$2"; shift ;;
        --warmup) warmup="$2"; shift ;;
        --gap) gap="$2"; shift ;;
        --sifrun) sifrun="$2"; shift ;;
        --plugin) plugin="$2"; plugin_given=1; shift ;;
        --holder) holder="$2"; shift ;;
        --slurm) slurm="$2"; shift ;;
        --tasks) tasks="$2"; shift ;;
        --user) user="$2"; shift ;;
        --docker) docker=1 ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "srun-bench: unknown option $1" >&2; exit 2 ;;
        *) image="$1" ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "srun-bench: run as root" >&2; exit 1; }
[ "$docker" = 0 ] || [ "$setup" = 1 ] || { echo "srun-bench: --docker needs --setup" >&2; exit 2; }
if [ -n "$slurm" ]; then
    [ "$plugin_given" = 1 ] || plugin="$(make -s plugin-path SLURM="$slurm")"
    export PATH="$slurm/bin:$PATH"
fi

work="$(mktemp -d /tmp/sifrun-srun-bench.XXXXXX)"
chmod 0755 "$work"
chown "$user" "$work"
conf=/etc/slurm/plugstack.conf.d/sifrun.conf
stage="" regpid=""
cleanup() {
    [ -z "$regpid" ] || kill "$regpid" 2>/dev/null || true
    if [ "$setup" = 1 ]; then
        rm -f "$conf"
        tests/slurm/cluster stop >/dev/null || true
        [ -n "$stage" ] && rm -rf "$stage"
        rm -rf /run/sifrun-bench
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if [ "$setup" = 1 ]; then
    for f in "$sifrun" "$plugin"; do
        [ -f "$f" ] || { echo "srun-bench: $f missing (cargo build --release -p launcher -p spank-plugin)" >&2; exit 1; }
    done
    [ -e "$conf" ] && { echo "srun-bench: $conf exists: another run is using the cluster" >&2; exit 1; }
    # As tests/run-all: slurmstepd runs the launcher as root, so it is
    # staged under a root-owned directory no one else may write.
    install -d -o root -g root -m 0755 /var/lib/sifrun-test
    stage="$(mktemp -d /var/lib/sifrun-test/bench.XXXXXX)"
    chmod 0755 "$stage"
    install -m 0755 "$sifrun" "$stage/sifrun"
    [ -n "$holder" ] || holder="$(dirname "$sifrun")/sifrun-hold"
    if [ "$holder" != none ] && [ -f "$holder" ]; then
        install -m 0755 "$holder" "$stage/sifrun-hold"
        echo "lean holder: $holder"
    else
        echo "lean holder: none (the plugin runs sifrun)"
    fi
    install -m 0755 "$plugin" "$stage/libspank_sifrun.so"
    chmod 0666 /dev/fuse
    echo "required $stage/libspank_sifrun.so launcher=$stage/sifrun runtime_dir=/run/sifrun-bench" > "$conf"
    tests/slurm/cluster stop >/dev/null
    tests/slurm/cluster start ${slurm:+"$slurm"}
    if [ -z "$image" ]; then
        runuser -u "$user" -- bash -ec "
            mkdir -p $work/rootfs/bin && cp /bin/busybox $work/rootfs/bin/
            for t in sh true; do ln -s busybox $work/rootfs/bin/\$t; done
            $stage/sifrun build $work/bb.sif $work/rootfs >/dev/null"
        image="$work/bb.sif"
    fi
fi
[ -n "$image" ] || { echo "srun-bench: IMAGE missing (or use --setup)" >&2; exit 2; }

user_env=(env PATH="$PATH")
commands=("srun -n$tasks true" "srun -n$tasks --sif-image=$image true")
if [ "$docker" = 1 ]; then
    bash tests/oci/make-images "$work/img" >/dev/null
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s, secret: bench}\n' \
        "$work/storage" "$port" > "$work/registry.yml"
    docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
    regpid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    ref="127.0.0.1:$port/bench/img"
    skopeo copy --quiet --dest-tls-verify=false "oci:$work/img/layout:t" "docker://$ref:t"
    user_env+=(SIFRUN_NOHTTPS=1 SIFRUN_CACHEDIR="$work/cache")
    as_bench_user() { (cd "$work" && runuser -u "$user" -- "${user_env[@]}" "$@"); }
    # gzip, as the cache converts: the two differ only in where they come from.
    as_bench_user "$stage/sifrun" pull --nohttps --compression gzip "$work/local.sif" "docker://$ref:t" >/dev/null
    pin="$(as_bench_user "$stage/sifrun" resolve "docker://$ref:t")"
    # The one conversion: into the user's cache, by a step.
    as_bench_user srun -n1 --sif-image="docker://$ref:t" sh -c true
    entries="$(find "$work/cache" -name '*.sif' | wc -l)"
    [ "$entries" = 1 ] || { echo "srun-bench: $entries cache entries after the first step, not 1" >&2; exit 1; }
    echo "docker:// image: $pin (in the cache: $(find "$work/cache" -name '*.sif'))"
    commands=("srun -n$tasks --sif-image=$work/local.sif sh -c true"
        "srun -n$tasks --sif-image=docker://$ref:t sh -c true"
        "srun -n$tasks --sif-image=docker://$pin sh -c true"
        "env SLURM_SIFRUN_IMAGE_PIN=$pin SLURM_SIFRUN_IMAGE_PIN_OF=docker://$ref:t srun -n$tasks --sif-image=docker://$ref:t sh -c true")
fi
echo "Slurm: $(srun --version); load before: $(uptime | sed 's/.*load average: //')"
mark="$(wc -l < /var/log/slurm/slurmd.log 2>/dev/null || echo 0)"
(cd "$work" && runuser -u "$user" -- "${user_env[@]}" python3 "$repo/bench/interleave.py" \
    --runs "$runs" --warmup "$warmup" --gap "$gap" "${commands[@]}")
if [ "$docker" = 1 ]; then
    entries="$(find "$work/cache" -name '*.sif' | wc -l)"
    [ "$entries" = 1 ] || { echo "srun-bench: $entries cache entries after the measured steps, not 1" >&2; exit 1; }
    echo "cache entries after the measured steps: $entries (no step converted again)"
fi
echo "load after: $(uptime | sed 's/.*load average: //')"

echo
echo "where the time goes, per step, from slurmd's log (the steps measured above):"
python3 bench/step-timeline.py /var/log/slurm/slurmd.log "$((mark + 1))" | sed 's/^/  /'
tail -n +"$((mark + 1))" /var/log/slurm/slurmd.log 2>/dev/null |
    grep -o 'container ready in [0-9.]* ms' |
    awk '{ s += $4; n++ } END { if (n) printf "  the holder, from its start to its report (the plugin log: container ready in): mean %.1f ms over %d steps\n", s / n, n }'
tail -n +"$((mark + 1))" /var/log/slurm/slurmd.log 2>/dev/null |
    { grep -o 'user_init waited [0-9.]* ms' || true; } |
    awk '{ s += $3; n++ } END { if (n) printf "  user_init waiting for its report: mean %.1f ms over %d steps\n", s / n, n }'
tail -n +"$((mark + 1))" /var/log/slurm/slurmd.log 2>/dev/null |
    grep -o 'container ready in [0-9.]* ms (holder [^,]*' | sed 's/.*(holder //' | sort | uniq -c |
    awk '{ printf "  holder program: %s in %d steps\n", $2, $1 }'
phases() { # phases IMAGE CMD...: one step's set-up phases
    echo
    echo "one step's phases (srun -n$tasks --sif-verbose --sif-image=$1 ${*:2}):"
    (cd "$work" && runuser -u "$user" -- "${user_env[@]}" srun -n"$tasks" --sif-verbose --sif-image="$1" "${@:2}" 2>&1) |
        grep -E 'phase|ready in|joined' | sed 's/^/  /' || true
}
if [ "$docker" = 1 ]; then
    for i in "$work/local.sif" "docker://$ref:t" "docker://$pin"; do phases "$i" sh -c true; done
else
    phases "$image" true
fi
