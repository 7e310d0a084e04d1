#!/usr/bin/env bash
# On a GPU machine: `sifrun exec --nv` runs nvidia-smi and a CUDA device
# query inside a container, as an unprivileged user. Writes its report to
# $OUT/gpu-smoke.txt. Usage: bench/device/gpu-smoke.sh SIFRUN IMAGE
set -uo pipefail
sifrun="$1" image="$2"
out="${OUT:-/tmp}/gpu-smoke.txt"
exec > >(tee "$out") 2>&1
run() { echo "\$ $*"; "$@"; echo "[rc=$?]"; }
run nvidia-smi -L
run head -c 600 /usr/bin/nvidia-smi
echo
user=gpusmoke
id "$user" >/dev/null 2>&1 || useradd -m "$user" 2>/dev/null || adduser --disabled-password --gecos "" "$user" >/dev/null 2>&1
chmod 0666 /dev/fuse
stage=/tmp/gpu-smoke && rm -rf "$stage" && mkdir -p "$stage"
cp "$sifrun" "$image" "$stage/" && chmod -R a+rX "$stage"
as_user() { echo "\$ (as $user) $*"; su -s /bin/sh "$user" -c "$*"; echo "[rc=$?]"; }
cd /tmp
as_user "$stage/sifrun exec --nv $stage/$(basename "$image") sh -c 'cat /etc/motd; id; echo LD_LIBRARY_PATH=\$LD_LIBRARY_PATH; ls /.sifrun/gpu/lib | head -20'"
as_user "$stage/sifrun exec --nv $stage/$(basename "$image") /usr/local/bin/devquery"
as_user "$stage/sifrun exec --nv $stage/$(basename "$image") nvidia-smi -L"
as_user "$stage/sifrun exec --nv $stage/$(basename "$image") nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv"
as_user "$stage/sifrun exec $stage/$(basename "$image") /usr/local/bin/devquery"
