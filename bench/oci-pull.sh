#!/usr/bin/env bash
# `sifrun pull docker://…` against the pipeline a user would script
# (`skopeo copy` + `umoci unpack --rootless` + `mksquashfs`), side by side
# on one image served by a local docker-registry (issue 14; goal: sifrun
# at most 0.7x the pipeline's wall time). The image is made from host
# directories (no network): three gzip layers, of /usr/bin, /usr/lib/gcc
# and /usr/share/doc (about 540 MB here; DIRS to change).
#
# Usage: bench/oci-pull.sh [RUNS]   (as any user; needs docker-registry,
#   skopeo, umoci, squashfs-tools, time)
# Environment: SIFRUN (default target/release/sifrun), SIFRUN_BASE (a
#   second sifrun, e.g. an older build, run in the same rounds for a
#   before/after comparison), W (work directory, default a new one under
#   /var/tmp), DIRS (the layers' sources, default
#   "/usr/bin /usr/lib/gcc /usr/share/doc"). Each round prints the load
#   average (1 min) before it started.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
SIFRUN="$(realpath "${SIFRUN:-target/release/sifrun}")"
BASE="${SIFRUN_BASE:+$(realpath "$SIFRUN_BASE")}"
W="${W:-$(mktemp -d /var/tmp/sifrun-oci-bench.XXXXXX)}"
DIRS="${DIRS:-/usr/bin /usr/lib/gcc /usr/share/doc}"
mkdir -p "$W"
reg_pid=
trap '[ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$W"' EXIT

# The image: one layer per directory, made by GNU tar and added with
# `umoci raw add-layer` (which gzips it). (umoci 0.4.7's `insert` writes
# layers without the last entry's padding and the end-of-archive blocks:
# GNU tar and sifrun both refuse them as truncated.)
umoci init --layout "$W/layout" >/dev/null
umoci new --image "$W/layout:t" >/dev/null
for d in $DIRS; do
    tar -C / -cf "$W/layer.tar" "${d#/}" 2>/dev/null || true
    umoci raw add-layer --image "$W/layout:t" "$W/layer.tar" >/dev/null
    rm -f "$W/layer.tar"
done
umoci config --image "$W/layout:t" --config.cmd /usr/bin/true >/dev/null
umoci gc --layout "$W/layout"
echo "image: $(du -sm "$W/layout/blobs" | cut -f1) MiB compressed in $(ls "$W/layout/blobs/sha256" | wc -l) blobs"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$W/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/storage}}
http: {addr: 127.0.0.1:$port, secret: bench}
YML
docker-registry serve "$W/registry.yml" >/dev/null 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
ref="127.0.0.1:$port/bench/img:t"
skopeo copy --quiet --dest-tls-verify=false "oci:$W/layout:t" "docker://$ref"

# Wall seconds, peak RSS (KiB) and CPU seconds (user+system, its children
# included: steadier than the wall time when other work shares the cores)
# of a command, as "WALL RSS CPU".
measure() {
    /usr/bin/time -f "%e %M %U %S" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; return 1; }
    awk '{ printf "%s %s %.1f\n", $1, $2, $3 + $4 }' "$W/time"
}
pipeline() {
    rm -rf "$W/p" && mkdir -p "$W/p"
    skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$W/p/oci:t" &&
        umoci unpack --rootless --image "$W/p/oci:t" "$W/p/bundle" &&
        mksquashfs "$W/p/bundle/rootfs" "$W/p/img.sqsh" -noappend -comp gzip -quiet -no-progress
}
export -f pipeline
export W ref

sifrun_pull() {
    rm -f "$W/s.sif"
    sync
    measure "$1" pull --nohttps "$W/s.sif" "docker://$ref"
    [ -z "${SIFRUN_LOG:-}" ] || grep -h 'secs=' "$W/err" >&2 || true
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# "WALL s, CPU s cpu (PEAK MiB)"
cell() { printf '%s s, %s cpu (%s)' "$1" "$3" "$(($2 / 1024))"; }
if [ -n "$BASE" ]; then
    printf '%-4s %-5s | %-28s | %-28s %-6s | %-28s %s\n' run load pipeline base ratio sifrun ratio
else
    printf '%-4s %-5s | %-28s | %-28s %s\n' run load pipeline sifrun ratio
fi
for i in $(seq "$runs"); do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    sync
    read -r pw pr pc < <(measure bash -c pipeline)
    psize="$(stat -c %s "$W/p/img.sqsh")"
    rm -rf "$W/p"
    if [ -n "$BASE" ]; then
        # Alternate which sifrun goes first.
        if [ $((i % 2)) = 1 ]; then
            read -r bw br bc < <(sifrun_pull "$BASE")
            read -r sw sr sc < <(sifrun_pull "$SIFRUN")
        else
            read -r sw sr sc < <(sifrun_pull "$SIFRUN")
            read -r bw br bc < <(sifrun_pull "$BASE")
        fi
        printf '%-4s %-5s | %-28s | %-28s %-6s | %-28s %s\n' "$i" "$load" "$(cell "$pw" "$pr" "$pc")" \
            "$(cell "$bw" "$br" "$bc")" "$(ratio "$bw" "$pw")" "$(cell "$sw" "$sr" "$sc")" "$(ratio "$sw" "$pw")"
    else
        read -r sw sr sc < <(sifrun_pull "$SIFRUN")
        printf '%-4s %-5s | %-28s | %-28s %s\n' "$i" "$load" "$(cell "$pw" "$pr" "$pc")" \
            "$(cell "$sw" "$sr" "$sc")" "$(ratio "$sw" "$pw")"
    fi
done
echo "squashfs sizes: pipeline $psize bytes, sifrun's SIF $(stat -c %s "$W/s.sif") bytes"
# Peak RSS of the pipeline is its largest single process (skopeo, umoci or
# mksquashfs), as /usr/bin/time reports the largest child of bash.
