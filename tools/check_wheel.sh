#!/usr/bin/env bash
# The package as users get it: build the wheel from this tree, install it into fresh venvs outside the source
# tree, and run what they run there (`make wheel-check`, the last step of `make test`):
#   1. base install only (numpy, onnxruntime, tokenizers, soundfile, soxr, click; + pytest): `edgeser --help`,
#      the package is the installed one and torch is absent;
#   2. with the `export` extra: `edgeser export --model cmgi` (recipe and shipped default found in the wheel),
#      `edgeser predict` on the bundle and a shipped demo clip;
#   3. back on the base install: the runtime tests (tests/test_runtime*.py, tests/test_assets.py, copied beside
#      an empty folder so `import edgeser` can only find the wheel) on that bundle, and `edgeser predict`.
# Packages come from pip's usual sources and cache; torch from constraints.txt (the local CPU build).
# KEEP=1 keeps the work folder; WHEEL_DEMO=1 also runs `edgeser demo` from the wheel (about a minute more).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgeser-wheel.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "wheel-check: work folder $WORK" >&2; else trap 'rm -rf "$WORK"' EXIT; fi
step() { printf '[wheel-check %4ds] %s\n' "$SECONDS" "$*" >&2; }
fail() { echo "wheel-check: $*" >&2; exit 1; }
PIP_QUIET=(--quiet --disable-pip-version-check)
# pip, minus the one warning per package of this machine's file:// extra indexes that lack it
pip_in() { local venv=$1; shift; "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file" >&2); }

step "build the wheel from the working tree (tracked and untracked files, nothing git ignores)"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run/tests"
(cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) \
  | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel "${PIP_QUIET[@]}" --no-deps --no-build-isolation "$WORK/src" -w "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/edgeser-*.whl)
"$PYTHON" - "$WHEEL" <<'EOF' >&2
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
infos = wheel.infolist()
shipped = [i for i in infos if i.filename.startswith("edgeser/shipped/")]
print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: {sum(i.compress_size for i in infos) / 1e6:.1f} MB, {len(infos)} files, "
      f"of which edgeser/shipped/ {len(shipped)} files, {sum(i.compress_size for i in shipped) / 1e6:.1f} MB")
names = set(wheel.namelist())
for needed in ("edgeser/shipped/models/cmgi.json", "edgeser/shipped/models/checkpoints/cmgi/model.safetensors",
               "edgeser/shipped/demo/ravdess/manifest.csv", "edgeser/calibrate/data/sentences.txt", "edgeser/py.typed"):
    if needed not in names:
        sys.exit(f"wheel-check: the wheel lacks {needed}")
if any(n.startswith(("tests/", "tools/", "benchmarks/")) for n in names):
    sys.exit("wheel-check: the wheel carries tests/, tools/ or benchmarks/")
EOF

cd "$WORK/run"  # outside the source tree from here on
step "base install into a fresh venv: the wheel + its base dependencies (+ pytest)"
"$PYTHON" -m venv "$WORK/base"
pip_in "$WORK/base" install "${PIP_QUIET[@]}" -c "$REPO/constraints.txt" "$WHEEL" "pytest>=8"
"$WORK/base/bin/edgeser" --help >/dev/null
"$WORK/base/bin/python" - "$WORK/base" <<'EOF'
import importlib.util, sys
from pathlib import Path
import edgeser
where = Path(edgeser.__file__).resolve()
if Path(sys.argv[1]).resolve() not in where.parents:
    sys.exit(f"wheel-check: edgeser was imported from {where}, not from the venv")
heavy = [m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is not None]
if heavy:
    sys.exit(f"wheel-check: the base install pulled {heavy}")
EOF

step "export extra into a second fresh venv (torch pinned by constraints.txt)"
"$PYTHON" -m venv "$WORK/export"
pip_in "$WORK/export" install "${PIP_QUIET[@]}" -c "$REPO/constraints.txt" "$WHEEL[export]"
step "edgeser export --model cmgi (the shipped default, from the wheel)"
"$WORK/export/bin/edgeser" export --model cmgi --out "$WORK/run/cmgi" >/dev/null
CLIP=$("$WORK/base/bin/python" -c "
import csv
from edgeser.assets import demo_clips
print(demo_clips().parent / next(csv.DictReader(demo_clips().open()))['path'])")
for venv in export base; do
  step "edgeser predict ($venv venv) on the exported bundle and a shipped demo clip"
  "$WORK/$venv/bin/edgeser" predict "$WORK/run/cmgi" "$CLIP" --json > "$WORK/predict-$venv.json"
  "$WORK/base/bin/python" - "$WORK/predict-$venv.json" "$WORK/run/cmgi/bundle.json" <<'EOF'
import json, sys
result = json.loads(open(sys.argv[1]).read())
labels = json.loads(open(sys.argv[2]).read())["labels"]
if result.get("label") not in labels or abs(sum(result["probabilities"].values()) - 1) > 1e-4:
    sys.exit(f"wheel-check: edgeser predict gave {result}")
print(f"  {result['file'].rsplit('/', 1)[-1]}: {result['label']} {result['confidence']:.2f}", file=sys.stderr)
EOF
done
"$WORK/base/bin/python" -c "
import json, sys
export, base = (json.load(open(f'$WORK/predict-{v}.json'))['label'] for v in ('export', 'base'))
sys.exit(None if export == base else f'wheel-check: the export and base installs predict {export} and {base}')"

step "runtime tests on the base install (no source tree, no torch), on the exported bundle"
cp "$REPO"/tests/conftest.py "$REPO"/tests/test_runtime.py "$REPO"/tests/test_runtime_api.py \
   "$REPO"/tests/test_assets.py "$WORK/run/tests/"
EDGESER_TEST_BUNDLE="$WORK/run/cmgi" OMP_NUM_THREADS=1 \
  "$WORK/base/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$WORK/run" tests

if [ "${WHEEL_DEMO:-0}" = 1 ]; then
  step "edgeser demo from the wheel (shipped clips)"
  "$WORK/export/bin/edgeser" demo --out "$WORK/run/demo" --data "$WORK/no-data" >&2
fi
step "done: the wheel installs, exports, predicts and passes the runtime tests outside the source tree"
