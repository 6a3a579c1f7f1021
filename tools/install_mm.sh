#!/usr/bin/env bash
# Install the OpenMMLab stack that vizattn.mm needs into one Python environment: mmcv with its compiled ops, then
# the rest of the `mm` extra of pyproject.toml (mmengine, mmdet, mmsegmentation and their undeclared imports).
#
#   tools/install_mm.sh [PYTHON]     PYTHON: the environment's interpreter (default: python3); torch must be in it
#
# mmcv 2.1.0 (the last release mmdet 3.3 and mmsegmentation 1.2 accept) exists on PyPI only as a source
# distribution. It does not build against torch 2.14 as released (torch's headers need -std=c++20, its setup.py
# asks for c++17) and it compiles for about 40 minutes on 2 cores. The mmcv wheel is therefore taken from, in order:
#   1. $VIZATTN_MMCV_WHEEL, when set (a wheel file);
#   2. $VIZATTN_SHARED_WHEELS (default: ../shared/wheels beside the checkout), CPU ops built for torch 2.14.1;
#   3. the wheel cache $VIZATTN_WHEEL_CACHE (default ~/.cache/vizattn/wheels), one folder per torch and CUDA build;
#   4. a build of the PyPI source with the C++ standard raised to c++20, stored in the cache for the next machine
#      run from the same home.
# CUDA ops are built when a CUDA toolkit (nvcc) and a GPU are both found: a CPU-only machine that happens to carry
# a toolkit would spend hours compiling kernels it cannot run. VIZATTN_MMCV_CUDA=1 or 0 forces either. The shared
# wheel has CPU ops only, so it is skipped when CUDA ops are wanted.
# When everything is installed already (a warm machine) the script only reads package metadata and exits;
# VIZATTN_MMCV_REINSTALL=1 reinstalls mmcv anyway.
set -euo pipefail

PY="${1:-python3}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${VIZATTN_SHARED_WHEELS:-$REPO/../shared/wheels}"
CACHE="${VIZATTN_WHEEL_CACHE:-$HOME/.cache/vizattn/wheels}"
PIP=("$PY" -m pip --disable-pip-version-check)

log() { printf 'install_mm: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v "$PY" >/dev/null || die "no Python interpreter '$PY'."

# One metadata pass (no imports): python tag, torch version, the mm extra's pins, what is missing.
# Output lines: pytag, torch version ('' if absent), mmcv version wanted, 'ok'|'missing' for mmcv with compiled
# ops, the installed mmcv build variant ('' if unknown), then the extra's other unmet requirements, one a line.
mapfile -t STATE < <("$PY" - "$REPO/pyproject.toml" <<'EOF'
import importlib.metadata as md
import pathlib
import re
import sys

text = pathlib.Path(sys.argv[1]).read_text()
block = re.search(r"^mm\s*=\s*\[(.*?)\]", text, re.M | re.S)
reqs = re.findall(r'"([^"]+)"', block.group(1)) if block else []


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def satisfied(req):
    # The extra uses only 'name==version' and bare names; anything else is left to pip.
    name, sep, want = req.partition("==")
    if re.search(r"[<>!~;\[ ]", name):
        return False
    have = version(name)
    return have is not None and (not sep or have == want)


mmcv_want = next((r.partition("==")[2] for r in reqs if r.partition("==")[0] == "mmcv"), "")
files = (md.files("mmcv") or []) if version("mmcv") else []
has_ext = any(str(f).startswith("mmcv/_ext") for f in files)
mmcv_ok = version("mmcv") == mmcv_want and has_ext
marker = pathlib.Path(sys.prefix, "share", "vizattn", "mmcv-build")
print(f"cp{sys.version_info[0]}{sys.version_info[1]}")
print(version("torch") or "")
print(mmcv_want)
print("ok" if mmcv_ok else "missing")
print(marker.read_text().strip() if marker.exists() else "")
for req in reqs:
    if req.partition("==")[0] != "mmcv" and not satisfied(req):
        print(req)
EOF
)
PYTAG="${STATE[0]}"
TORCH="${STATE[1]%%+*}"
MMCV="${STATE[2]}"
MMCV_STATE="${STATE[3]}"
MMCV_BUILD="${STATE[4]}"
EXTRA=("${STATE[@]:5}")

[[ -n "$MMCV" ]] || die "pyproject.toml's mm extra pins no mmcv version (expected mmcv==X.Y.Z)."
[[ -n "$TORCH" ]] || die "torch is not installed for $PY; install vizattn first (make install, or pip install -e .)."

# Which build is wanted: CUDA ops need a toolkit to compile and a GPU to be worth compiling.
NVCC=""
for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    if [[ -n "$cand" && -x "$cand" ]]; then NVCC="$cand"; break; fi
done
case "${VIZATTN_MMCV_CUDA:-auto}" in
    1) [[ -n "$NVCC" ]] || die "VIZATTN_MMCV_CUDA=1 but no nvcc was found (set CUDA_HOME)."; CUDA=1 ;;
    0) CUDA=0 ;;
    auto)
        CUDA=0
        if [[ -n "$NVCC" ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
            CUDA=1
        fi ;;
    *) die "VIZATTN_MMCV_CUDA must be 1, 0 or auto, got '${VIZATTN_MMCV_CUDA}'." ;;
esac
if [[ "$CUDA" == 1 ]]; then
    CUVER="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1\2/p')"
    VARIANT="torch-$TORCH-cu$CUVER"
else
    VARIANT="torch-$TORCH-cpu"
fi

if [[ "$MMCV_STATE" == ok && "${VIZATTN_MMCV_REINSTALL:-0}" != 1 && ( -z "$MMCV_BUILD" || "$MMCV_BUILD" == "$VARIANT" ) ]]
then
    NEED_MMCV=0
else
    NEED_MMCV=1
fi
if [[ "$NEED_MMCV" == 0 && ${#EXTRA[@]} -eq 0 ]]; then
    log "mmcv $MMCV (${MMCV_BUILD:-installed}) and the mm extra are installed."
    exit 0
fi

WHEEL_GLOB="mmcv-$MMCV-$PYTAG-$PYTAG-linux_$(uname -m).whl"
CACHE_DIR="$CACHE/mmcv-$MMCV/$VARIANT"

find_wheel() {
    local f
    if [[ -n "${VIZATTN_MMCV_WHEEL:-}" ]]; then
        [[ -f "$VIZATTN_MMCV_WHEEL" ]] || die "VIZATTN_MMCV_WHEEL=$VIZATTN_MMCV_WHEEL is not a file."
        echo "$VIZATTN_MMCV_WHEEL"; return
    fi
    # The shared wheel: CPU ops, linked against torch 2.14.1's ABI (see its README).
    if [[ "$CUDA" == 0 && "$TORCH" == 2.14.1 ]]; then
        for f in "$SHARED"/$WHEEL_GLOB; do [[ -f "$f" ]] && { echo "$f"; return; }; done
    fi
    for f in "$CACHE_DIR"/$WHEEL_GLOB; do [[ -f "$f" ]] && { echo "$f"; return; }; done
    return 0
}

build_wheel() {
    local tmp src jobs
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    jobs="$(nproc)"
    log "building mmcv $MMCV from source (CUDA ops: $CUDA, $jobs jobs); this takes about 40 min on 2 cores, once."
    # mmcv's setup.py imports pkg_resources (gone from setuptools 81) and builds against the torch of this
    # environment (no build isolation); the build tools go to a side folder, not into the environment.
    "${PIP[@]}" install --quiet --target "$tmp/tools" "setuptools<81" wheel ninja
    export PYTHONPATH="$tmp/tools${PYTHONPATH:+:$PYTHONPATH}" PATH="$tmp/tools/bin:$PATH"
    "${PIP[@]}" download --quiet --no-deps --no-binary mmcv --no-build-isolation "mmcv==$MMCV" -d "$tmp"
    tar -xzf "$tmp/mmcv-$MMCV.tar.gz" -C "$tmp"
    src="$tmp/mmcv-$MMCV"
    sed -i -E 's/(std[=:])c\+\+1[47]/\1c++20/g' "$src/setup.py"
    grep -q 'c++20' "$src/setup.py" || die "could not raise the C++ standard in mmcv's setup.py."
    if [[ "$CUDA" == 1 ]]; then
        (export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}"
         MMCV_WITH_OPS=1 FORCE_CUDA=1 MAX_JOBS="$jobs" \
            "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$tmp/dist" "$src")
    else
        # An empty CUDA_VISIBLE_DEVICES keeps setup.py from switching to CUDA ops because a GPU is visible.
        MMCV_WITH_OPS=1 FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="" MAX_JOBS="$jobs" \
            "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$tmp/dist" "$src"
    fi
    mkdir -p "$CACHE_DIR"
    local built
    built="$(ls "$tmp"/dist/mmcv-*.whl)"
    # Move in under a temporary name first so that a concurrent reader never sees half a wheel.
    cp "$built" "$CACHE_DIR/.partial.whl"
    mv "$CACHE_DIR/.partial.whl" "$CACHE_DIR/$(basename "$built")"
    rm -rf "$tmp"
    trap - EXIT
}

if [[ "$NEED_MMCV" == 1 ]]; then
    WHEEL="$(find_wheel)"
    if [[ -z "$WHEEL" ]]; then
        mkdir -p "$CACHE_DIR"
        # Two installs on one machine share the cache: the second waits for the first build instead of repeating it.
        exec 9>"$CACHE_DIR/.lock"
        command -v flock >/dev/null && flock 9
        WHEEL="$(find_wheel)"
        if [[ -z "$WHEEL" ]]; then
            start=$SECONDS
            build_wheel
            log "built in $(( (SECONDS - start) / 60 )) min, cached in $CACHE_DIR"
            WHEEL="$(find_wheel)"
        fi
        exec 9>&-
    fi
    [[ -n "$WHEEL" ]] || die "no mmcv wheel found or built (looked for $WHEEL_GLOB in $SHARED and $CACHE_DIR)."
    log "installing $WHEEL"
    if [[ "$MMCV_STATE" == ok ]]; then
        "${PIP[@]}" install --quiet --force-reinstall --no-deps "$WHEEL"
    else
        "${PIP[@]}" install --quiet "$WHEEL"
    fi
    prefix="$("$PY" -c 'import sys; print(sys.prefix)')"
    mkdir -p "$prefix/share/vizattn"
    echo "$VARIANT" >"$prefix/share/vizattn/mmcv-build"
fi

if [[ ${#EXTRA[@]} -gt 0 ]]; then
    log "installing ${EXTRA[*]}"
    "${PIP[@]}" install --quiet "${EXTRA[@]}"
fi
log "done: mmcv $MMCV ($VARIANT) and the mm extra are installed for $PY."
