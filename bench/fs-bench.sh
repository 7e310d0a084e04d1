#!/usr/bin/env bash
# Image-serving and startup benchmark, side by side in one run:
#   sifrun mount  vs  squashfuse_ll  vs  the kernel's squashfs (loop mount)
#   sifrun exec IMG true  vs  ch-run (Charliecloud)  vs  bare unshare -Urm true
#
# Usage (as root, for the kernel mount and dropping caches):
#   cargo build --release -p launcher && sudo bench/fs-bench.sh [WORKDIR]
# Needs: squashfs-tools squashfuse fuse3 charliecloud-runtime hyperfine busybox-static.
# Environment: SIFRUN (binary), BENCH_USER (unprivileged user for startup, default sifrun-test),
#   BIG_MB (size of the compressible file, default 256), COMPS (default "gzip zstd").
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-/var/tmp/sifrun-bench}"
SIFRUN="$(realpath "${SIFRUN:-target/release/sifrun}")"
BENCH_USER="${BENCH_USER:-sifrun-test}"
BIG_MB="${BIG_MB:-256}"
COMPS="${COMPS:-gzip zstd}"
[ "$(id -u)" -eq 0 ] || { echo "run as root (kernel mount, drop_caches)" >&2; exit 1; }
mkdir -p "$W"
MNT="$W/mnt"
mkdir -p "$MNT"

now() { date +%s%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

if [ ! -d "$W/tree" ]; then
    echo "generating the tree (20,000 small files in 200 dirs, ${BIG_MB} MiB compressible file)"
    mkdir -p "$W/tree"
    for d in $(seq 1 200); do
        mkdir -p "$W/tree/d$d"
        for f in $(seq 1 100); do
            head -c $(( (RANDOM % 3900) + 100 )) /usr/share/common-licenses/GPL-3 > "$W/tree/d$d/f$f.txt"
        done
    done
    head -c $(( BIG_MB * 3 / 4 ))M /dev/urandom | base64 -w 76 > "$W/tree/big.txt"
fi

walk() { find "$1" -printf '%s %i %m %T@\n' > /dev/null; }
seqread() { cat "$1/big.txt" > /dev/null; }
parread() {
    local size q
    size=$(stat -c %s "$1/big.txt"); q=$(( size / 4 / 1048576 ))
    local pids=()
    for i in 0 1 2 3; do
        dd if="$1/big.txt" of=/dev/null bs=1M skip=$(( i * q )) count="$q" status=none & pids+=($!)
    done
    wait "${pids[@]}"
}

mount_fs() { # kind comp
    case "$1" in
        kernel) mount -t squashfs -o loop,ro "$W/$2.sqfs" "$MNT" ;;
        squashfuse_ll) squashfuse_ll -o offset=32768 "$W/$2.sif" "$MNT" ;;
        sifrun) "$SIFRUN" mount "$W/$2.sif" "$MNT" & echo $! > "$W/sifrun.pid"
                for _ in $(seq 1 100); do mountpoint -q "$MNT" && break; sleep 0.05; done ;;
    esac
    mountpoint -q "$MNT"
}
umount_fs() {
    case "$1" in
        sifrun) kill -TERM "$(cat "$W/sifrun.pid")"; wait "$(cat "$W/sifrun.pid")" 2>/dev/null || true ;;
        *) umount "$MNT" ;;
    esac
}

results="$W/results.txt"
: > "$results"
for comp in $COMPS; do
    if [ ! -f "$W/$comp.sif" ]; then
        mksquashfs "$W/tree" "$W/$comp.sqfs" -comp "$comp" -noappend -quiet -no-progress -all-root
        "$SIFRUN" build --force "$W/$comp.sif" --from-squashfs "$W/$comp.sqfs" > /dev/null
    fi
    for fs in kernel squashfuse_ll sifrun; do
        drop; mount_fs "$fs" "$comp"
        t=$(now); walk "$MNT"; cold=$(elapsed "$t")
        t=$(now); walk "$MNT"; warm=$(elapsed "$t")
        umount_fs "$fs"; drop; mount_fs "$fs" "$comp"
        t=$(now); seqread "$MNT"; seq=$(elapsed "$t")
        umount_fs "$fs"; drop; mount_fs "$fs" "$comp"
        t=$(now); parread "$MNT"; par=$(elapsed "$t")
        if [ "$fs" = sifrun ]; then
            rss=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$W/sifrun.pid")/status")
        else
            rss=-
        fi
        umount_fs "$fs"
        printf '%s %s %.3f %.3f %.3f %.3f %s\n' "$comp" "$fs" "$cold" "$warm" "$seq" "$par" "$rss" | tee -a "$results"
    done
done

echo
echo "comp fs cold_walk_s repeat_walk_s seq_read_s 4x_par_read_s server_hwm_kib  (ratios: fs / kernel)"
awk '{ if ($2=="kernel") { k[$1]=$0; kc[$1]=$3; kw[$1]=$4; ks[$1]=$5; kp[$1]=$6 }
       printf "%-5s %-14s %7.3f (%5.2fx) %7.3f (%5.2fx) %7.3f (%5.2fx) %7.3f (%5.2fx) %s\n",
         $1, $2, $3, $3/kc[$1], $4, $4/kw[$1], $5, $5/ks[$1], $6, $6/kp[$1], $7 }' "$results"

echo
echo "# startup, as $BENCH_USER"
comp=$(echo "$COMPS" | awk '{print $1}')
root="$W/busybox-root"
if [ ! -d "$root" ]; then
    mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/home" "$root/etc"
    cp /bin/busybox "$root/bin/"; for c in sh true; do ln -s busybox "$root/bin/$c"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"; echo 'root:x:0:' > "$root/etc/group"
fi
mksquashfs "$root" "$W/bb.sqfs" -noappend -quiet -no-progress -all-root -comp "$comp"
"$SIFRUN" build --force "$W/bb.sif" --from-squashfs "$W/bb.sqfs" > /dev/null
cp "$SIFRUN" "$W/sifrun"; chmod -R a+rX "$W"; chmod 0666 /dev/fuse
cmds=( "$W/sifrun exec $W/bb.sif true" "unshare -Urm true" )
if command -v ch-run >/dev/null; then
    if runuser -u "$BENCH_USER" -- env USER="$BENCH_USER" ch-run "$W/bb.sqfs" -- true 2>/dev/null; then
        cmds+=( "ch-run $W/bb.sqfs -- true" )
    else
        cmds+=( "ch-run $root -- true" )
    fi
fi
cd "$W"
runuser -u "$BENCH_USER" -- env USER="$BENCH_USER" hyperfine -N --warmup 3 --runs 30 "${cmds[@]}"
