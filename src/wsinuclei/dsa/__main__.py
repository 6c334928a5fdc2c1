"""The DSA entry point (what slicer_cli_web's ``cli_list_entrypoint`` does for HistomicsTK):
``--list_cli`` prints the CLI list and nothing else; ``CLI --xml`` prints that CLI's XML and nothing else;
``CLI ARGS...`` runs the CLI."""

from __future__ import annotations

import importlib
import json
import os
import sys

from . import CLI_LIST


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # stdout closed early (`wsinuclei-dsa NucleiDetection --xml | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 141  # 128 + SIGPIPE, as a shell reports a command ended by a closed pipe


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    clis = json.loads(CLI_LIST.read_text())
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m wsinuclei.dsa --list_cli | CLI --xml | CLI ARGS...\n"
              f"CLIs: {', '.join(clis)}")
        return 0 if argv else 2
    if argv[0] == "--list_cli":
        print(CLI_LIST.read_text().strip())
        return 0
    if argv[0] not in clis:
        print(f"wsinuclei-dsa: error: unknown CLI {argv[0]!r} (known: {', '.join(clis)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"wsinuclei.dsa.{argv[0]}.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
