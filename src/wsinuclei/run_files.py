"""A finished run's files as ``wsinuclei detect`` leaves them: its summary ``NAME.run.json`` found in an output
folder and read. The viewer, region counting and the cohort table all start from it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import WsinucleiError

SUFFIX = ".run.json"


def find_run_json(target: str | Path) -> Path:
    """``target`` itself when it is a NAME.run.json, else the one NAME.run.json in the folder ``target``; a
    folder with none or with several is a one-line error (naming them)."""
    p = Path(target)
    if p.is_dir():
        runs = sorted(p.glob(f"*{SUFFIX}"))
        if not runs:
            raise WsinucleiError(f"{p}: no NAME.run.json here; give a 'wsinuclei detect' output folder")
        if len(runs) > 1:
            names = ", ".join(r.name[: -len(SUFFIX)] for r in runs)
            raise WsinucleiError(f"{p}: holds {len(runs)} runs ({names}); name one: {runs[0]}")
        return runs[0]
    if not p.is_file():
        raise WsinucleiError(f"{p}: no such run folder or NAME.run.json")
    return p


def read_run_json(path: str | Path) -> dict:
    """A run summary's contents; an unreadable or non-JSON file is a one-line error."""
    p = Path(path)
    try:
        run = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WsinucleiError(f"{p}: not a readable run summary ({e})") from None
    if not isinstance(run, dict):
        raise WsinucleiError(f"{p}: not a run summary (a JSON object is expected)")
    return run


def read_run(target: str | Path) -> tuple[dict, Path]:
    """A finished run's summary and its folder: ``target`` is the NAME.run.json or the folder holding one."""
    p = find_run_json(target)
    return read_run_json(p), p.parent


def run_name(path: str | Path) -> str:
    """NAME of NAME.run.json."""
    return Path(path).name[: -len(SUFFIX)]
