#!/usr/bin/env bash
# Collects the facts the gpu crate's fake host trees must mirror, from a real
# GPU node: device nodes, /proc/driver/nvidia, the ld.so.cache (binary, for
# parser fixtures), driver libraries and tools, PCI/NUMA placement.
# Usage: OUT=dir bench/device/gpu-host-facts.sh   (read-only; changes nothing)
set -u
OUT="${OUT:-/tmp/gpu-facts}"
mkdir -p "$OUT"
run() { local name="$1"; shift; { echo "\$ $*"; timeout 20 "$@" 2>&1; echo "[rc=$?]"; } > "$OUT/$name.txt"; }
run uname uname -a
run os cat /etc/os-release
run nvidia-smi-L nvidia-smi -L
run nvidia-smi-q nvidia-smi -q
run nvidia-smi-topo nvidia-smi topo -m
run dev-nvidia ls -la /dev/nvidia0 /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia-modeset /dev/nvidia-caps
run dev-all sh -c 'ls -la /dev | head -200'
run dev-caps sh -c 'ls -laR /dev/nvidia-caps /dev/dri /dev/infiniband 2>&1 | head -100'
run proc-driver sh -c 'ls -laR /proc/driver/nvidia 2>&1 | head -100; cat /proc/driver/nvidia/version; for f in /proc/driver/nvidia/gpus/*/information; do echo "== $f"; cat "$f"; done; cat /proc/driver/nvidia/capabilities/mig/* 2>&1 | head -20'
run ldconfig-p sh -c 'ldconfig -p | head -3000'
run ldconfig-nvidia sh -c 'ldconfig -p | grep -Ei "nvidia|cuda|libEGL|libGL|OpenCL|vdpau|nvoptix|nvcuvid|libnv"'
cp /etc/ld.so.cache "$OUT/ld.so.cache" 2>/dev/null
run ld-conf sh -c 'cat /etc/ld.so.conf; cat /etc/ld.so.conf.d/*'
run tools sh -c 'ls -la /usr/bin/nvidia-* /usr/local/bin/nvidia-* 2>&1'
run persistenced sh -c 'ls -la /var/run/nvidia-persistenced /run/nvidia-persistenced 2>&1'
run vendor-json sh -c 'ls -la /usr/share/glvnd/egl_vendor.d /usr/share/vulkan/icd.d /usr/share/nvidia /etc/OpenCL/vendors 2>&1'
run pci sh -c 'for d in /sys/bus/pci/devices/*; do v=$(cat $d/vendor); c=$(cat $d/class); case "$v:$c" in 0x10de:*|0x15b3:*|*:0x0207*|*:0x0200*) echo "$d vendor=$v device=$(cat $d/device) class=$c numa=$(cat $d/numa_node 2>/dev/null) cpus=$(cat $d/local_cpulist 2>/dev/null) driver=$(basename $(readlink $d/driver 2>/dev/null) 2>/dev/null)";; esac; done'
run numa sh -c 'ls /sys/devices/system/node; for n in /sys/devices/system/node/node*; do echo "$n $(cat $n/cpulist)"; done; nproc'
run infiniband sh -c 'ls -la /sys/class/infiniband /sys/class/infiniband_verbs /dev/infiniband 2>&1; ibv_devinfo 2>&1 | head -40'
run env sh -c 'env | grep -E "CUDA|NVIDIA|LD_LIBRARY|PATH" | sort'
run cgroup sh -c 'cat /proc/self/cgroup; cat /proc/self/status | grep -E "Cap|NoNewPrivs"; id'
run userns sh -c 'cat /proc/sys/user/max_user_namespaces; unshare -Urm true && echo USERNS-OK; ls -la /dev/fuse'
run mounts sh -c 'cat /proc/self/mountinfo | head -80'
ls -la "$OUT"
