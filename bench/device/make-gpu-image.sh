#!/usr/bin/env bash
# Builds the image for the GPU smoke check: busybox, this machine's glibc
# (so host driver tools and libcuda run inside) and devquery (a CUDA driver
# API device query, built here without the CUDA toolkit).
# Usage: bench/device/make-gpu-image.sh SIFRUN OUT.sif
set -euo pipefail
sifrun="$1" out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,lib64,lib/x86_64-linux-gnu,usr/local/bin,usr/bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/"
for c in sh ls cat echo env head grep readlink true; do ln -s busybox "$root/bin/$c"; done
for l in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$root/lib/x86_64-linux-gnu/"
done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
gcc -O2 -o "$root/usr/local/bin/devquery" "$here/devquery.c" -ldl
echo "sifrun GPU smoke image (busybox + glibc $(ldd --version | head -1 | awk '{print $NF}'))" > "$root/etc/motd"
"$sifrun" build --force --compression zstd "$out" "$root"
