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
# Environment: SIFRUN (default target/release/sifrun), W (work directory,
#   default a new one under /var/tmp), DIRS (the layers' sources, default
#   "/usr/bin /usr/lib/gcc /usr/share/doc").
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
SIFRUN="$(realpath "${SIFRUN:-target/release/sifrun}")"
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

# Wall seconds and peak RSS (KiB) of a command, as "WALL RSS".
measure() {
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; return 1; }
    cat "$W/time"
}
pipeline() {
    rm -rf "$W/p" && mkdir -p "$W/p"
    skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$W/p/oci:t" &&
        umoci unpack --rootless --image "$W/p/oci:t" "$W/p/bundle" &&
        mksquashfs "$W/p/bundle/rootfs" "$W/p/img.sqsh" -noappend -comp gzip -quiet -no-progress
}
export -f pipeline
export W ref

printf '%-4s %-22s %-22s %s\n' run "pipeline s (peak MiB)" "sifrun s (peak MiB)" ratio
for i in $(seq "$runs"); do
    sync
    read -r pw pr < <(measure bash -c pipeline)
    rm -rf "$W/p"
    rm -f "$W/s.sif"
    sync
    read -r sw sr < <(measure "$SIFRUN" pull --nohttps "$W/s.sif" "docker://$ref")
    printf '%-4s %-22s %-22s %s\n' "$i" "$pw ($((pr / 1024)))" "$sw ($((sr / 1024)))" \
        "$(awk -v a="$sw" -v b="$pw" 'BEGIN { printf "%.2fx", a / b }')"
done
# Peak RSS of the pipeline is its largest single process (skopeo, umoci or
# mksquashfs), as /usr/bin/time reports the largest child of bash.
