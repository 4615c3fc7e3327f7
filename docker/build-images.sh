#!/usr/bin/env bash
# Build meshserve's container images (what `make images` runs).
#
#   docker/build-images.sh [SERVICE...]      default: gateway features preprocess model
#
# 1. Base image: BASE_IMAGE if set; otherwise python:3.11-slim-bookworm when the engine
#    already has it (e.g. after `docker pull`); otherwise the local debootstrap base
#    LOCAL_BASE_IMAGE (meshserve-base:bookworm), built by docker/build-base-image.sh when
#    missing. Nothing is pulled unless you name a BASE_IMAGE the engine lacks.
# 2. Wheelhouse per service, on the host: meshserve's own wheels plus every third-party
#    wheel for Linux/CPython 3.11, pinned by requirements/constraints.txt and (by default)
#    by the versions installed in the repo venv, so images run what the tests ran.
# 3. docker build (legacy builder) with the wheelhouse as the context: no network needed.
#
# Environment (all optional):
#   IMAGE_TAG=dev           images are meshserve-<service>:IMAGE_TAG
#   BASE_IMAGE=             see 1.
#   LOCAL_BASE_IMAGE=meshserve-base:bookworm
#   TORCH_VARIANT=cpu       torch build for the model image: cpu, or CUDA such as cu126.
#                           A CUDA build is tagged meshserve-model:IMAGE_TAG-VARIANT.
#   TORCH_INDEX_URL=        index holding torch==<ver>+VARIANT; default: pip's configured
#                           indexes when they have it, else download.pytorch.org/whl/VARIANT
#   PIN_FROM_VENV=1         also pin to the repo venv's versions (0: constraints.txt only)
#   PYTHON=.venv/bin/python  a Python 3.11 with pip + setuptools (builds the wheelhouse)
#   WHEEL_ARCH=x86_64       target architecture of the wheels (aarch64 for arm64 engines)
#   DOCKER=docker  BUILD_DIR=build/images  DOCKER_BUILD_FLAGS= (extra docker build flags)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

ALL_SERVICES=(gateway features preprocess model)
SERVICES=("$@")
[[ ${#SERVICES[@]} -gt 0 ]] || SERVICES=("${ALL_SERVICES[@]}")

IMAGE_TAG="${IMAGE_TAG:-dev}"
BASE_IMAGE="${BASE_IMAGE:-}"
REGISTRY_BASE_IMAGE="python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE="${LOCAL_BASE_IMAGE:-meshserve-base:bookworm}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
PIN_FROM_VENV="${PIN_FROM_VENV:-1}"
PYTHON="${PYTHON:-.venv/bin/python}"
WHEEL_ARCH="${WHEEL_ARCH:-x86_64}"
DOCKER="${DOCKER:-docker}"
BUILD_DIR="${BUILD_DIR:-build/images}"
DOCKER_BUILD_FLAGS="${DOCKER_BUILD_FLAGS:-}"
TORCH_VERSION="$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements/constraints.txt)"

t0=$EPOCHREALTIME
say() { printf '[images %6.1fs] %s\n' "$(awk "BEGIN { print $EPOCHREALTIME - $t0 }")" "$*"; }
die() { echo "error: $*" >&2; exit 1; }
# pip's noise from this machine's local indexes (directories it cannot list).
quiet_pip() { { grep -v -E "is ignored: it is neither a file nor a directory|^$" || true; } >&2; }

for svc in "${SERVICES[@]}"; do
  [[ " ${ALL_SERVICES[*]} " == *" $svc "* ]] || die "unknown service '$svc' (one of: ${ALL_SERVICES[*]})"
done
[[ -x "$PYTHON" ]] || PYTHON="$(command -v "$PYTHON" || true)"
[[ -n "$PYTHON" && -x "$PYTHON" ]] || die "no Python at ${PYTHON:-.venv/bin/python}: run \`make install\` first (or set PYTHON)"
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine reachable through '$DOCKER' (start dockerd; see docker/README.md)"
[[ -n "$TORCH_VERSION" ]] || die "no torch pin in requirements/constraints.txt"

# ------------------------------------------------------------------------ 1. base image
if [[ -n "$BASE_IMAGE" ]]; then
  say "base image: $BASE_IMAGE (BASE_IMAGE)"
elif "$DOCKER" image inspect "$REGISTRY_BASE_IMAGE" >/dev/null 2>&1; then
  BASE_IMAGE="$REGISTRY_BASE_IMAGE"
  say "base image: $BASE_IMAGE (present in the engine)"
else
  say "base image: $LOCAL_BASE_IMAGE ($REGISTRY_BASE_IMAGE not in the engine; local debootstrap base)"
  DOCKER="$DOCKER" docker/build-base-image.sh "$LOCAL_BASE_IMAGE"
  BASE_IMAGE="$LOCAL_BASE_IMAGE"
fi

# The wheelhouse targets the base image's exact Python (markers may test the patch level).
PY_FULL="$("$DOCKER" run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
  -c 'import platform; print(platform.python_version())')" || die "no python3 in $BASE_IMAGE"
[[ "$PY_FULL" == 3.11.* ]] || die "$BASE_IMAGE has Python $PY_FULL; meshserve images need 3.11"
say "base Python $PY_FULL"

# ------------------------------------------------------------------ 2a. project wheels
mkdir -p "$BUILD_DIR"
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
project_wheels="$BUILD_DIR/project-wheels"
rm -rf "$project_wheels" && mkdir -p "$project_wheels"
src="$(mktemp -d "${TMPDIR:-/tmp}/meshserve-src.XXXXXX")"
trap 'rm -rf "$src"' EXIT
# Build from a clean copy: no stale build/ or egg-info from the working tree, nothing
# written into it. SOURCE_DATE_EPOCH makes the wheels byte-identical for identical
# sources, so Docker's layer cache holds while the code does not change.
project_dirs=(gen/python runtime feature_repo services/gateway services/features services/preprocess services/model)
tar -C "$ROOT" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ -c "${project_dirs[@]}" | tar -C "$src" -x
isolation=(--no-build-isolation)
"$PYTHON" -c 'import setuptools' 2>/dev/null || isolation=()
(cd "$src" && SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -q --no-deps "${isolation[@]}" \
   -w "$project_wheels" "${project_dirs[@]/#/./}") 2>&1 | quiet_pip
say "project wheels: $(ls "$project_wheels" | tr '\n' ' ')"

# ------------------------------------------------------------------ 2b. constraints
constraints="$BUILD_DIR/constraints.txt"
{
  echo "# generated by docker/build-images.sh: requirements/constraints.txt + repo venv versions"
  grep -v -E '^\s*(#|$)|^torch==' requirements/constraints.txt
  if [[ "$PIN_FROM_VENV" == 1 ]]; then
    # torch is pinned below with its build variant; editable meshserve packages are ours.
    "$PYTHON" -m pip freeze --exclude-editable 2>/dev/null | grep -v -E '^(torch|meshserve-.*)==| @ |^-e |^#' || true
  fi
} | awk -F'==' '!seen[tolower($1)]++' > "$constraints"

platforms=()
for m in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${m}_${WHEEL_ARCH}"); done
platforms+=(--platform "manylinux2014_${WHEEL_ARCH}" --platform "linux_${WHEEL_ARCH}")
[[ "$WHEEL_ARCH" == x86_64 ]] && platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
download=("$PYTHON" -m pip download -q --only-binary=:all: "${platforms[@]}"
          --python-version "$PY_FULL" --implementation cp --abi cp311
          -c "$constraints" --find-links "$project_wheels")

# Where torch==VERSION+VARIANT comes from: pip's own configuration when it has that build
# (e.g. a local find-links), else the PyTorch index for the variant. $1: download dir.
torch_index_args() {
  if [[ -n "$TORCH_INDEX_URL" ]]; then echo "--extra-index-url $TORCH_INDEX_URL"; return; fi
  if "${download[@]}" --no-deps -d "$1" "torch==${TORCH_VERSION}+${TORCH_VARIANT}" >/dev/null 2>&1; then
    return
  fi
  echo "--extra-index-url https://download.pytorch.org/whl/${TORCH_VARIANT}"
}

# ------------------------------------------------------------------ 3. per service
declare -A requirement=(
  [gateway]="meshserve-gateway"
  [features]="meshserve-features"
  [preprocess]="meshserve-preprocess"
  [model]="meshserve-model"
)
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || revision="${revision}-dirty"
built=()
for svc in "${SERVICES[@]}"; do
  ctx="$BUILD_DIR/$svc"
  tag="$IMAGE_TAG"
  extra=()
  reqs=("${requirement[$svc]}")
  rm -rf "$ctx" && mkdir -p "$ctx/deps" "$ctx/project"
  if [[ "$svc" == model ]]; then
    reqs+=("torch==${TORCH_VERSION}+${TORCH_VARIANT}")
    read -r -a extra <<< "$(torch_index_args "$ctx/deps")"
    [[ "$TORCH_VARIANT" == cpu ]] || tag="${IMAGE_TAG}-${TORCH_VARIANT}"
  fi
  "${download[@]}" "${extra[@]}" -d "$ctx/deps" "${reqs[@]}" 2>&1 | quiet_pip
  # pip evaluated markers against the host's Python: add what the image's Python needs.
  for _ in 1 2 3 4 5; do
    mapfile -t missing < <("$PYTHON" docker/wheelhouse_missing.py "$ctx/deps" "$PY_FULL")
    [[ ${#missing[@]} -gt 0 ]] || break
    say "$svc: adding for Python $PY_FULL: ${missing[*]}"
    "${download[@]}" "${extra[@]}" -d "$ctx/deps" "${missing[@]}" 2>&1 | quiet_pip
  done
  mv "$ctx"/deps/meshserve_*.whl "$ctx/project/"
  # name==version of each third-party wheel (PEP 427 file names: name-version-...whl).
  (cd "$ctx/deps" && ls *.whl | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/') > "$ctx/requirements.txt"
  cp docker/check_image.py "$ctx/"
  say "$svc wheelhouse: $(wc -l < "$ctx/requirements.txt") third-party wheels, $(du -sh "$ctx/deps" | cut -f1)${extra[*]:+ (${extra[*]})}"

  log="$BUILD_DIR/$svc.build.log"
  say "docker build meshserve-$svc:$tag (log: ${log#"$ROOT"/})"
  # shellcheck disable=SC2086
  if ! DOCKER_BUILDKIT=0 "$DOCKER" build -f docker/Dockerfile --target "$svc" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg SERVICE="$svc" \
        --build-arg TORCH_VARIANT="$TORCH_VARIANT" \
        --build-arg VERSION="$IMAGE_TAG" --build-arg REVISION="$revision" \
        -t "meshserve-$svc:$tag" $DOCKER_BUILD_FLAGS "$ctx" > "$log" 2>&1; then
    tail -40 "$log" >&2
    die "docker build of meshserve-$svc failed (full log: $log)"
  fi
  grep -E "^meshserve-$svc: " "$log" | sed 's/^/    /' || echo "    (check stage cached)"
  say "built meshserve-$svc:$tag"
  built+=("meshserve-$svc:$tag")
done

say "done: ${built[*]}"
"$DOCKER" images --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' \
  | grep -E "^(REPOSITORY|meshserve-)" || true
