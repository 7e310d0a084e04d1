#!/usr/bin/env bash
# Steps across nodes, side by side (issue 15): on the 3-node cluster of
# tests/slurm/cluster start --nodes 3 (namespaces of this one machine),
#   srun -N3 -n3 true   vs   srun -N3 -n3 --sif-image=IMG true
# alternated (A B, B A, ...), each after a short rest; medians and the
# ratio, the load before and after, and the per-node set-up time the
# plugin logged ("container ready in N ms", each node's slurmd log) for the
# measured steps.
#
# Usage (as root, under the cluster lock; stages SIFRUN and PLUGIN, starts
# and stops the cluster, builds a busybox image as USER in their home, and
# removes everything at the end):
#   cargo build --release -p launcher -p spank-plugin
#   flock -o /tmp/sifrun-cluster.lock bench/multinode-bench.sh \
#       [--runs R] [--nodes N] [SIFRUN [PLUGIN]]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20 nodes=3 user=sifrun-test
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --nodes) nodes="$2"; shift 2 ;;
        *) break ;;
    esac
done
sifrun="${1:-target/release/sifrun}" plugin="${2:-target/release/libspank_sifrun.so}"
[ "$(id -u)" -eq 0 ] || { echo "multinode-bench: run as root" >&2; exit 1; }
cluster=tests/slurm/cluster
conf=/etc/slurm/plugstack.conf.d/sifrun.conf
home="$(getent passwd "$user" | cut -d: -f6)"
work="$home/sifrun-multinode-bench"
stage="$(mktemp -d /var/lib/sifrun-test/stage.XXXXXX)"
cleanup() {
    rm -f "$conf"
    "$cluster" stop >/dev/null || true
    rm -rf "$stage" "$work"
}
trap cleanup EXIT
chmod 0755 "$stage"
install -m 0755 "$sifrun" "$stage/sifrun"
install -m 0755 "$plugin" "$stage/libspank_sifrun.so"
echo "required $stage/libspank_sifrun.so launcher=$stage/sifrun runtime_dir=/run/sifrun-bench" > "$conf"
rm -rf "$work"
install -d -o "$user" -m 0755 "$work" "$work/root/bin"
cp /bin/busybox "$work/root/bin/busybox"
ln -s busybox "$work/root/bin/true"
chown -R "$user" "$work"
runuser -u "$user" -- "$stage/sifrun" build "$work/bb.sif" "$work/root" >/dev/null
"$cluster" stop >/dev/null
t0="$(date +%s%N)"
"$cluster" start --nodes "$nodes" >/dev/null
echo "cluster of $nodes nodes up in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
logs=/var/log/sifrun-cluster
marks="$(for f in "$logs"/slurmd-*.log; do wc -l < "$f"; done | tr '\n' ' ')"

# One step as the user in the controller's namespaces; prints its ms.
step() {
    "$cluster" exec -- runuser -u "$user" -- sh -c '
        cd "$1"; shift
        t=$(date +%s%N); "$@" >/dev/null || exit 1; echo $(( ($(date +%s%N) - t) / 1000 ))' \
        sh "$work" "$@"
}
plain=(srun -N"$nodes" -n"$nodes" true)
box=(srun -N"$nodes" -n"$nodes" --sif-image="$work/bb.sif" true)
for _ in 1 2 3; do step "${plain[@]}" >/dev/null; step "${box[@]}" >/dev/null; done
marks="$(for f in "$logs"/slurmd-*.log; do wc -l < "$f"; done | tr '\n' ' ')"
load0="$(cut -d' ' -f1 /proc/loadavg)"
a=() b=()
for i in $(seq 1 "$runs"); do
    sleep 0.3
    if [ $((i % 2)) = 1 ]; then
        a+=("$(step "${plain[@]}")"); sleep 0.3; b+=("$(step "${box[@]}")")
    else
        b+=("$(step "${box[@]}")"); sleep 0.3; a+=("$(step "${plain[@]}")")
    fi
done
load1="$(cut -d' ' -f1 /proc/loadavg)"
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1000 }'; }
ma="$(median "${a[@]}")" mb="$(median "${b[@]}")"
echo "load $load0 -> $load1; $runs steps each"
echo "srun -N$nodes -n$nodes true: median $ma ms"
echo "srun -N$nodes -n$nodes --sif-image=bb.sif true: median $mb ms"
echo "RATIO $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%.3fx", b / a }')"
i=0
for f in "$logs"/slurmd-*.log; do
    i=$((i + 1))
    skip="$(echo "$marks" | cut -d' ' -f"$i")"
    tail -n +"$((skip + 1))" "$f" | sed -n 's/.*sifrun: container ready in \([0-9.]*\) ms.*/\1/p' \
        | awk -v n="$(basename "$f" .log)" '{ s += $1; c++ } END { if (c) printf "%s: container ready in %.1f ms (mean of %d steps)\n", n, s / c, c }'
done
