#!/usr/bin/env bash
# CI: build the sdist and the wheel, install the wheel in a new venv (its dependencies from the registry, as a
# user's `pip install` gets them), and run it there, away from the source tree: --version, the shipped models
# (weights and their figures inside the package), the DSA CLI's XML, `demo` on the bundled slide, and `view
# --no-browser` serving the page, its viewer files and the run's nuclei on 127.0.0.1.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
# Only the viewer this script started is stopped: `kill 0` would signal the whole process group (CI itself).
trap '[ -n "${VIEW_PID:-}" ] && kill "$VIEW_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
PY="${PYTHON:-python3}"
"$PY" -m venv "$WORK/build-env"
"$WORK/build-env/bin/python" -m pip install -q --upgrade pip build
"$WORK/build-env/bin/python" -m build -q --sdist --wheel -o "$WORK/dist" "$ROOT" >/dev/null
ls "$WORK"/dist/wsinuclei-*.tar.gz >/dev/null
WHEEL="$(ls "$WORK"/dist/wsinuclei-*.whl)"
echo "wheel: $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"
cd "$WORK"  # nothing of the source tree on the path from here
BIN="$WORK/venv/bin"
# Each output is read whole before it is searched: `cmd | grep -q` closes the pipe at the first match, and the
# writer's BrokenPipeError then fails the pipeline under pipefail.
expect() {  # expect PATTERN COMMAND...: COMMAND succeeds and prints PATTERN
  local pattern="$1" out; shift
  out="$("$@")" || { echo "CI: '$*' failed" >&2; return 1; }
  grep -q -- "$pattern" <<<"$out" || { echo "CI: '$*' did not print '$pattern'" >&2; return 1; }
}
expect "default model: star" "$BIN/wsinuclei" --version
expect "star_default" "$BIN/wsinuclei" models
expect "star_types" "$BIN/wsinuclei" models
expect "<executable>" "$BIN/wsinuclei-dsa" NucleiDetection --xml
"$BIN/python" - <<'PY'
from importlib import resources
root = resources.files("wsinuclei")
for rel in ("weights/star_default.safetensors", "weights/star_types.safetensors", "weights/models.toml", "viewer/static/index.html",
            "dsa/NucleiDetection/NucleiDetection.xml", "models/presets/star.toml"):
    assert (root / rel).is_file(), f"the wheel lacks {rel}"
assert any((root / "viewer/static/openseadragon").iterdir()), "the wheel lacks OpenSeadragon"
PY
"$BIN/wsinuclei" demo --out "$WORK/demo" --quiet
ls "$WORK"/demo/*.geojson >/dev/null
expect "by type: epithelial" "$BIN/wsinuclei" demo --model star_types --out "$WORK/demo_types" --quiet
"$BIN/wsinuclei" view "$WORK/demo" --no-browser > "$WORK/view.log" 2>&1 &
VIEW_PID=$!
for _ in $(seq 60); do grep -q "http://127.0.0.1" "$WORK/view.log" && break; sleep 1; done
URL="$(grep -o -m1 'http://127.0.0.1:[0-9]*/*' "$WORK/view.log")"
[ -n "$URL" ] || { cat "$WORK/view.log"; echo "CI: the viewer did not start" >&2; exit 1; }
"$BIN/python" - "$URL" <<'PY'
import sys, urllib.request
url = sys.argv[1].rstrip("/")
page = urllib.request.urlopen(url + "/", timeout=30).read().decode()
assert "openseadragon" in page.lower(), "the viewer page does not load OpenSeadragon"
PY
echo "CI: the wheel installs and runs in a new venv"
