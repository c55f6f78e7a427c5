#!/usr/bin/env bash
# Creates tests/compat/.venv (git-ignored) with the pinned python-socketio client of
# requirements.txt, for the Socket.IO bridge tests. Idempotent: does nothing when the venv
# already holds exactly these pins.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
if ! command -v python3 >/dev/null; then
    echo "setup_python.sh: python3 is missing. Install it (Debian/Ubuntu: apt-get install python3 python3-venv), then re-run." >&2
    exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "setup_python.sh: python3's venv module (with ensurepip) is missing. Install it (Debian/Ubuntu: apt-get install python3-venv), then re-run." >&2
    exit 1
fi
STAMP=$VENV/.requirements
if [ -x $VENV/bin/python ] && [ -f $STAMP ] && cmp -s requirements.txt $STAMP; then
    exit 0
fi
rm -rf $VENV
python3 -m venv $VENV
$VENV/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
$VENV/bin/python -c 'import socketio, engineio, requests, websocket'
cp requirements.txt $STAMP
echo "setup_python.sh: $(pwd)/$VENV ready ($($VENV/bin/python -c 'import socketio; print("python-socketio", socketio.__version__)' 2>/dev/null || echo python-socketio))"
