#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to build, test and run kloak:
# packages, Bun, the project's npm dependencies, and the kernel filesystems
# kloak needs (bpffs, tracefs, securityfs) when they are not mounted.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# qemu-system-x86, busybox-static, cpio, xz-utils, zstd and debian-archive-keyring: the VM kernel
# matrix (bun run test:kernels) boots Debian kernels fetched from Debian's archive.
# python3-requests: a client of the runtime matrix (test/runtime); zsh, fish: completion tests;
# default-jre-headless: a TLS client kloak cannot hook (Java's own TLS), which it must report;
# python3-aiohttp, python3-httpx, python3-uvloop: memory-BIO clients of test/runtime/membio.test.ts;
# wget, gcc, libc6-dev: test/runtime (a GnuTLS client; C clients built by the tests).
# buildah: `bun run image` builds deploy/Containerfile with it, and test/image builds and runs that
# image (`buildah run --isolation chroot`, so no OCI runtime is needed).
# nginx (Debian's smallest package with the http proxy and ssl modules): the egress-proxy peer of
# `bun run bench`, which runs its own nginx with its own config; the package's service is not wanted.
for pkg in libbpf1 libbpf-dev clang llvm bpftool openssl curl ca-certificates python3 git binutils procps util-linux \
  qemu-system-x86 busybox-static cpio xz-utils zstd debian-archive-keyring python3-requests zsh fish \
  default-jre-headless python3-aiohttp python3-httpx python3-uvloop wget gcc libc6-dev buildah nginx; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || command -v bun >/dev/null || need+=(npm)
# kubectl renders deploy/ in the manifest tests (Debian's is 1.20; any kubectl will do).
command -v kubectl >/dev/null || need+=(kubernetes-client)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nginx's package starts its service on port 80 while it installs, and its install fails when that
  # start does (port 80 taken): deny service starts for this install (policy-rc.d, which invoke-rc.d
  # and deb-systemd-invoke obey), unless the machine has a policy of its own.
  policy=""
  if [[ " ${need[*]} " == *" nginx "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" || { [ -n "$policy" ] && rm -f "$policy"; exit 1; }
  [ -n "$policy" ] && rm -f "$policy"
  # The package also enables its service for the next boot (and starts it where a policy of the
  # machine's own allowed that): stop and disable it (only when this script installed it: an nginx
  # that was already there is the machine owner's).
  if [[ " ${need[*]} " == *" nginx "* ]]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now nginx.service >/dev/null 2>&1 || true
    else
      # no systemd running (a container): stop what the init script started, and drop the links
      # that would start it at the next boot either way
      service nginx stop >/dev/null 2>&1 || true
      update-rc.d nginx disable >/dev/null 2>&1 || true
      if command -v systemctl >/dev/null; then systemctl disable nginx.service >/dev/null 2>&1 || true; fi
    fi
  fi
fi

command -v bun >/dev/null || npm install -g bun
bun install --frozen-lockfile

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
[ -e /sys/kernel/security/lockdown ] || mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security || true
echo "setup: ok (bun $(bun --version), libbpf $(dpkg-query -W -f='${Version}' libbpf1))"
