"""app.py as a child process on a free loopback port: started, waited for, measured and stopped.

Used by the app benchmark (benchmarks/app.py) and by the tests that need the running app
(tests/conftest.py, test_space.py, test_ui_browser.py); it lives outside the package, which only
holds what the app, training and evaluation run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_memory_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class AppProcess:
    """app.py started as a child process, with the moment it was started."""

    process: subprocess.Popen
    url: str
    started: float
    log: Path

    def memory_mb(self) -> tuple[float, float]:
        return process_memory_mb(self.process.pid)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_app(workdir: Path, extra_env: dict[str, str] | None = None, app_dir: Path = ROOT) -> AppProcess:
    """Start app.py (of `app_dir`, by default this repository, from that folder as a Space does) on a free
    loopback port, analytics off, its temporary files under `workdir`."""
    port = _free_port()
    log = workdir / "app.log"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(workdir / "gradio"), **(extra_env or {})}
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(app_dir / "app.py")], cwd=app_dir, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return AppProcess(process, f"http://127.0.0.1:{port}/", started, log)


def wait_until_serving(app: AppProcess, timeout_s: float = 300) -> float:
    """Seconds from process start until the page answers; raises with the app's log if it never does."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if app.process.poll() is not None:
            raise RuntimeError(f"app.py exited with {app.process.returncode}:\n{app.log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(app.url, timeout=2)
            return time.perf_counter() - app.started
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"app.py did not answer within {timeout_s:.0f} s:\n{app.log.read_text()[-3000:]}")
