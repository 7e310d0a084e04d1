#!/usr/bin/env bash
# Step launch cost of the ECL path (issue 12) side by side with the
# unprivileged path, in one run, on the same signed root-owned image:
#   srun -n2 true                       (no container)
#   srun -n2 --sif-image=IMG true       without [ecl]: user namespace + FUSE
#   srun -n2 --sif-image=IMG true       with [ecl]: root's namespace, the
#                                       verifier, the loop device, squashfs
# then the holder's phases of one ECL step (--sif-verbose): open and pin,
# verification in the unprivileged child, loop device, mount, apply.
# Usage (as root, cluster and plugin set up as tests/run-all does; CONFIG is
# the plugin's config=, replaced by rename and restored):
#   bench/ecl-srun-bench.sh SIFRUN CONFIG [USER] [RUNS]
set -euo pipefail
sifrun="$1" config="$2" user="${3:-sifrun-test}" runs="${4:-20}"
key="$(cd "$(dirname "$0")/.." && pwd)/tests/corpus/sylabs-sif/test/keys/private.asc"
dir=/srv/sifrun-ecl-bench
work="$(mktemp -d /tmp/sifrun-ecl-bench.XXXXXX)"
chown "$user" "$work"
saved="$(mktemp "$(dirname "$config")/.saved.XXXXXX")"
cp -p "$config" "$saved"
put() { local t; t="$(mktemp "$(dirname "$1")/.new.XXXXXX")"; cat > "$t"; chmod 0644 "$t"; mv -f "$t" "$1"; }
trap 'put "$config" < "$saved"; rm -f "$saved"; rm -rf "$work" "$dir"' EXIT
mkdir -p "$dir"
runuser -u "$user" -- bash -ec "
    mkdir -p $work/rootfs/bin && cp /bin/busybox $work/rootfs/bin/
    for t in sh true; do ln -s busybox $work/rootfs/bin/\$t; done
    $sifrun build $work/img.sif $work/rootfs >/dev/null"
cp "$work/img.sif" "$dir/bb.sif"
"$sifrun" sign --key "$key" "$dir/bb.sif" >/dev/null
cp "$key" "$dir/keyring.asc"
chmod 0644 "$dir"/*
with_ecl() {
    cat "$saved"
    printf '[ecl]\nactivated = true\nkeyring = "%s"\n' "$dir/keyring.asc"
    printf '[[ecl.execgroup]]\nmode = "whitelist"\ndirpath = "%s"\n' "$dir"
    printf 'keyfp = ["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]\n'
}
bench() { (cd "$work" && runuser -u "$user" -- hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/$1.json" "${@:2}"); }
put "$config" < "$saved"
bench plain "srun -n2 true" "srun -n2 --sif-image=$dir/bb.sif true"
with_ecl | put "$config"
bench ecl "srun -n2 --sif-image=$dir/bb.sif true"
median() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print('\n'.join(f\"{x['command']}: median {x['median']*1e3:.1f} ms\" for x in r))" "$1"; }
echo; echo "medians:"; median "$work/plain.json"; echo -n "with [ecl] "; median "$work/ecl.json"
echo; echo "one ECL step's set-up phases (--sif-verbose):"
(cd "$work" && runuser -u "$user" -- srun -n1 --sif-verbose --sif-image="$dir/bb.sif" true 2>&1) | grep -E 'phase|ready in|joined' || true
