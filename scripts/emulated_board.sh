#!/usr/bin/env bash
# An emulated arm64 board for EdgeCompile's device farm: a Debian arm64 root filesystem run under
# qemu-user through proot (no privileges, no binfmt_misc), with the slim runtime
# (edgecompile[runtime,runtime-tvm]: numpy, ONNX Runtime, TVM's aarch64 wheel; no torch) in a venv,
# serving as an RPC board registered with a tracker on this machine (loopback only).
#
#   scripts/emulated_board.sh prepare            # once, ~20-40 min (40 on 2 loaded cores); cached under $BOARD_DIR
#   scripts/emulated_board.sh start [--key rpi5] [--tracker 127.0.0.1:9190]
#   .venv/bin/edgecompile bench OUT --remote 127.0.0.1:9190 --key rpi5     # timings are "emulated"
#   scripts/emulated_board.sh exec python -c 'import edgecompile'       # a command on the board
#   scripts/emulated_board.sh stop
#
# `start` also starts a tracker at --tracker when none answers there. Timings from this board are
# qemu's, not an ARM CPU's: the board labels itself emulated and every report says so. The emulated CPU
# is a Cortex-A76 (the Raspberry Pi 5's; BOARD_CPU=max|cortex-a72|... picks another qemu model).
# Needs Debian's debootstrap, qemu-user-static and proot (installed with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${EDGECOMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecompile}
BOARD_DIR=${BOARD_DIR:-$CACHE/board/arm64-bookworm}
ROOTFS=$BOARD_DIR/rootfs
WHEELS=$BOARD_DIR/wheels
RUN=$BOARD_DIR/run
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PY=${HOST_PY:-$REPO/.venv/bin/python}
EC=${EC:-$REPO/.venv/bin/edgecompile}
KEY=rpi5
TRACKER=127.0.0.1:9190
PORT=9090

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[board] $*" >&2; }

fake_cpuinfo() {   # qemu-user shows the host's x86 /proc/cpuinfo, which crashes ARM CPU detection
  # (ONNX Runtime's cpuinfo segfaults on it): present Cortex-A76 cores (the Raspberry Pi 5's) instead
  local n
  for n in $(seq 0 $(( $(nproc) - 1 ))); do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$n"
  done
}

board() {   # run a command inside the rootfs (arm64 under qemu), the repo mounted at /repo
  [ -f "$BOARD_DIR/cpuinfo" ] || fake_cpuinfo > "$BOARD_DIR/cpuinfo"
  # QEMU_CPU: qemu-user's default "max" CPU offers SVE, i8mm, bf16..., so engines would pick kernels no
  # Raspberry Pi 5 runs; emulate its Cortex-A76 (NEON, dotprod, fp16), which the fake cpuinfo names too
  env -i PATH=/opt/board/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 EDGECOMPILE_BOARD_EMULATED=1 QEMU_CPU="${BOARD_CPU:-cortex-a76}" ${BOARD_ENV:-} \
    proot -q qemu-aarch64-static -0 -r "$ROOTFS" -w / -b /dev -b /proc -b /sys -b /etc/resolv.conf \
      -b "$BOARD_DIR/cpuinfo:/proc/cpuinfo" -b "$WHEELS:/wheels" -b "$REPO:/repo" -b /tmp \
      /bin/sh -c '"$@"; rc=$?; [ $rc -gt 128 ] && echo "board: $1 killed by signal $((rc - 128))" >&2; exit $rc' \
      board "$@"
  # the board's /bin/sh carries the command's status: proot exits 0 when a multi-threaded tracee (python with
  # ONNX Runtime's threads) dies of a signal, so a segfault on the board used to read as success
}

need_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v proot >/dev/null || missing+=(proot)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    die "missing ${missing[*]}: apt-get install ${missing[*]}"
  fi
}

wheels() {   # aarch64 wheels, downloaded on the host (the board installs with --no-index)
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/edgecompile-*.whl
  "$HOST_PY" -m pip wheel -q --no-deps -w "$WHEELS" "$REPO" 2>&1 | sed "/is ignored/d" >&2
  ls "$WHEELS"/edgecompile-*.whl >/dev/null 2>&1 || die "building the edgecompile wheel failed"
  local req=$WHEELS/requirements.txt
  "$HOST_PY" - "$REPO/pyproject.toml" > "$req" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = p["dependencies"] + p["optional-dependencies"]["runtime"] + p["optional-dependencies"]["runtime-tvm"]
print("\n".join(deps))
EOF
  [ -f "$BOARD_DIR/.wheels-ok" ] && cmp -s "$req" "$BOARD_DIR/.wheels-ok" && return 0
  rm -f "$BOARD_DIR/.installed"
  log "downloading aarch64 wheels: $(tr '\n' ' ' < "$req")"
  "$HOST_PY" -m pip download -q -d "$WHEELS" --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux_2_28_aarch64 -r "$req" 2>&1 | sed "/is ignored/d" >&2
  cp "$req" "$BOARD_DIR/.wheels-ok"
}

prepare() {
  need_tools
  [ -x "$HOST_PY" ] || die "$HOST_PY not found: run scripts/bootstrap.sh first (or set HOST_PY)"
  mkdir -p "$BOARD_DIR" "$RUN"
  if [ ! -f "$BOARD_DIR/.stage1-ok" ]; then
    log "debootstrap stage 1 (arm64 bookworm, minbase + python3) into $ROOTFS"
    rm -rf "$ROOTFS"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$ROOTFS" "$MIRROR" > "$BOARD_DIR/debootstrap1.log" 2>&1 \
      || die "debootstrap stage 1 failed; see $BOARD_DIR/debootstrap1.log"
    touch "$BOARD_DIR/.stage1-ok"
  fi
  if [ ! -f "$BOARD_DIR/.stage2-ok" ]; then
    log "debootstrap stage 2 under qemu (a few minutes)"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBOOTSTRAP_DIR=/debootstrap \
      proot -q qemu-aarch64-static -0 -r "$ROOTFS" -w / /debootstrap/debootstrap --second-stage \
      > "$BOARD_DIR/debootstrap2.log" 2>&1 || die "debootstrap stage 2 failed; see $BOARD_DIR/debootstrap2.log"
    touch "$BOARD_DIR/.stage2-ok"
  fi
  wheels
  if [ ! -x "$ROOTFS/opt/board/bin/python" ]; then
    log "creating the board's venv"
    board python3 -m venv /opt/board
  fi
  log "installing the slim runtime on the board: edgecompile[runtime,runtime-tvm]"
  if [ ! -f "$BOARD_DIR/.installed" ]; then
    board /opt/board/bin/pip install -q --disable-pip-version-check --no-index --find-links /wheels \
      -r /wheels/requirements.txt
    touch "$BOARD_DIR/.installed"
  fi
  board /opt/board/bin/pip install -q --disable-pip-version-check --no-index --no-deps --force-reinstall \
    /wheels/$(basename "$(ls "$WHEELS"/edgecompile-*.whl)")
  board /opt/board/bin/python -c "import edgecompile, numpy, onnxruntime, tvm, platform; print('board ready:', platform.machine(), 'tvm', tvm.__version__)"
}

tracker_up() { "$EC" device list --tracker "$TRACKER" >/dev/null 2>&1; }

start() {
  [ -x "$ROOTFS/opt/board/bin/edgecompile" ] || die "the board is not prepared: scripts/emulated_board.sh prepare"
  mkdir -p "$RUN"
  if ! tracker_up; then
    log "starting a tracker on $TRACKER"
    nohup "$EC" device tracker --host "${TRACKER%:*}" --port "${TRACKER##*:}" \
      > "$RUN/tracker.log" 2>&1 &
    echo $! > "$RUN/tracker.pid"
    for _ in $(seq 60); do tracker_up && break; sleep 1; done
    tracker_up || die "the tracker did not start; see $RUN/tracker.log"
  fi
  log "starting board '$KEY' (emulated arm64) registered with $TRACKER"
  export ROOTFS WHEELS REPO BOARD_DIR
  export -f board fake_cpuinfo
  nohup bash -c "board /opt/board/bin/edgecompile device serve --tracker '$TRACKER' --key '$KEY' --port $PORT \
    --port-end $((PORT + 100)) --emulated" > "$RUN/board-$KEY.log" 2>&1 &
  echo $! > "$RUN/board-$KEY.pid"
  for _ in $(seq 180); do
    "$EC" device list --tracker "$TRACKER" --json 2>/dev/null \
      | grep -q "\"key\": \"$KEY\"" && { log "board '$KEY' is up"; return 0; }
    kill -0 "$(cat "$RUN/board-$KEY.pid")" 2>/dev/null || die "the board exited; see $RUN/board-$KEY.log"
    sleep 1
  done
  die "the board did not register within 180 s; see $RUN/board-$KEY.log"
}

signal_gone() {   # pkill ARGS...: only "no process matched" (exit 1) is tolerated, any other failure stops
  local rc=0
  pkill "$@" 2>/dev/null || rc=$?
  [ "$rc" -le 1 ] || die "pkill $* failed (exit $rc)"
}

stop() {
  for f in "$RUN"/board-*.pid "$RUN"/tracker.pid; do
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    signal_gone -TERM -P "$pid"
    # a process that already exited is fine; one still there that cannot be signalled is not
    kill -TERM "$pid" 2>/dev/null || ! kill -0 "$pid" 2>/dev/null || die "cannot stop process $pid ($f)"
    rm -f "$f"
  done
  signal_gone -TERM -f "proot.*$ROOTFS"
  sleep 2
  signal_gone -KILL -f "proot.*$ROOTFS"   # a proot whose tracees are gone may ignore TERM
  log "stopped"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case $1 in
    --key) KEY=$2; shift 2 ;;
    --tracker) TRACKER=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    *) break ;;
  esac
done
case $cmd in
  prepare) prepare ;;
  start) start ;;
  stop) stop ;;
  exec) board "$@" ;;
  path) echo "$ROOTFS" ;;
  *) echo "usage: $0 prepare | start [--key KEY] [--tracker HOST:PORT] [--port P] | exec CMD... | stop | path" >&2
     exit 2 ;;
esac
