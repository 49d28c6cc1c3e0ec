#!/usr/bin/env bash
# Thin wrapper: see `python3 launch/gpu.py --help`. Needs only Python 3.10+ (standard library).
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu.py" "$@"
