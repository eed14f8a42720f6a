#!/usr/bin/env bash
# Rebuild the committed CO-RE object from bpf/*.c. The output must be
# byte-for-byte reproducible (test/bpf/object.test.ts rebuilds and compares):
# relative paths only, DWARF stripped (BTF kept: CO-RE needs it).
set -euo pipefail
cd "$(dirname "$0")/../bpf"
out="${1:-kloak.bpf.o}"
tmp="$(mktemp --suffix=.o)"
trap 'rm -f "$tmp"' EXIT
clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -mcpu=v3 -fdebug-prefix-map="$PWD"=. \
  -Wall -Werror -Wno-unused-function \
  -I. -c kloak.bpf.c -o "$tmp"
llvm-strip -g "$tmp" -o "$out"
