#!/usr/bin/env bash
# The DSA runs `docker run IMAGE --list_cli`, `docker run IMAGE CLI --xml` and `docker run IMAGE CLI ARGS...`.
# As HistomicsTK's entrypoint does, run a CLI's script directly when the first argument names one.
CLI_SCRIPT="$1/$1.py"
if [[ -f "$CLI_SCRIPT" ]]; then
    exec python -u "$CLI_SCRIPT" "${@:2}"
else
    exec python -u -m wsinuclei.dsa "$@"
fi
