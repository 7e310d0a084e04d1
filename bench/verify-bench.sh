#!/usr/bin/env bash
# Hashing cost of `sifrun verify` on a 2 GiB image, side by side with
# `openssl dgst -sha256` and coreutils `sha256sum` over the same file (page
# cache warm for all three, so this measures hashing, not the disk).
# Usage: bench/verify-bench.sh [SIFRUN] [DIR]
set -euo pipefail
sifrun="${1:-target/release/sifrun}"
dir="${2:-/var/tmp/sifrun-verify-bench}"
key="$(cd "$(dirname "$0")/.." && pwd)/tests/corpus/sylabs-sif/test/keys/private.asc"
mkdir -p "$dir"
if [ ! -s "$dir/big.sif" ]; then
    head -c 2G /dev/urandom > "$dir/data"
    "$sifrun" sif new "$dir/big.sif"
    "$sifrun" sif add --datatype 7 --groupid 1 "$dir/big.sif" "$dir/data"
    rm -f "$dir/data"
    "$sifrun" sign --key "$key" "$dir/big.sif" >/dev/null
fi
ls -l "$dir/big.sif"
hyperfine -N --warmup 1 --runs 5 \
    "$sifrun verify --keyring $key $dir/big.sif" \
    "openssl dgst -sha256 $dir/big.sif" \
    "sha256sum $dir/big.sif"
