"""End-to-end benchmark of the running app, as users feel it: HTTP in, probabilities and heat maps out.

    python -m benchmarks app [--repeats N] [--load-clients 4] [--load-requests 25] [--json OUT]
                             [--readme benchmarks/README.md]

Starts app.py on 127.0.0.1 and measures in one run: cold start (process start to the first answered
/grade); /grade and /compare latency over real HTTP with gradio_client, interleaved round by round with
a bare torchvision InceptionV3 forward at 299 px (the unit, so results are ratios that a noisy machine
cancels out); the app's resident memory (steady, peak, before and after the load phase); and a bounded
load phase of concurrent clients on loopback with error, lost-request and throughput counts and the
app's CPU use (the queue should keep it near the core count, not above). Every request uploads its own marked
copy of a photo (FreshUploads): the app remembers the image check of a view it has already seen.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision

from benchmarks.app_process import (  # noqa: F401  (process_memory_mb, process_cpu_seconds: read by tests)
    AppProcess,
    process_cpu_seconds,
    process_memory_mb,
    start_app,
    wait_until_serving,
)
from drdemo.tasks import ICDR_GRADES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
README_START, README_END = "<!-- bench:app:start -->", "<!-- bench:app:end -->"
REQUEST_TIMEOUT_S = 300


class BadAnswer(Exception):
    """The app answered, but not with what the endpoint promises."""


def check_label(label: dict) -> str:
    """The grade a gr.Label value names, after checking it holds five probabilities that sum to 1."""
    confidences = {c["label"]: c["confidence"] for c in label.get("confidences", [])}
    if set(confidences) != set(ICDR_GRADES):
        raise BadAnswer(f"label has classes {sorted(confidences)}, not the five ICDR grades")
    if abs(sum(confidences.values()) - 1) > 1e-3:
        raise BadAnswer(f"probabilities sum to {sum(confidences.values()):.4f}")
    return label["label"]


def check_answer(endpoint: str, answer: tuple) -> None:
    """Raise BadAnswer unless `answer` has the shape `endpoint` documents, with image files that exist."""
    if endpoint == "/grade":
        text, _note, label, _dme, pair, _explanation, _check, _result = answer
        check_label(label)
        images = list(pair)
    elif endpoint == "/compare":
        text, _note, chart_a, chart_b, label_a, label_b, cam_a, cam_b, _dme_a, _dme_b, _check, _result = answer
        check_label(label_a)
        check_label(label_b)
        if not all(len(chart.get("data", [])) == len(ICDR_GRADES) for chart in (chart_a, chart_b)):
            raise BadAnswer("/compare answered without both models' probability tables for the charts")
        images = [cam_a, cam_b]
    else:
        raise ValueError(f"unknown endpoint {endpoint}")
    if not text or not all(isinstance(p, str) and Path(p).is_file() for p in images):
        raise BadAnswer(f"{endpoint} answered without its text or heat map images")


def _client(url: str):
    """A gradio_client session. The app is plain HTTP on loopback, so certificate verification has
    nothing to check; left on, httpx builds a CA context for each upload, stream and download
    (~20-40 ms apiece, ~110 ms per /grade measured), a client cost no browser pays."""
    from gradio_client import Client
    return Client(url, verbose=False, ssl_verify=False)


class DirectClient:
    """Gradio's HTTP API as the app's page uses it, event-driven: upload the file, start the event, read the answer
    from the server-sent event stream the moment it arrives, then fetch the answer's images over the same
    keep-alive connection. gradio_client's message loop sleeps 50 ms whenever its queue is empty
    (gradio_client/utils.py), so every latency it reports is rounded up to its next poll; a browser's EventSource
    is not. Answers come back in gradio_client's shape (images downloaded, their local paths in place of the file
    data), so `check_answer` reads both."""

    def __init__(self, url: str, workdir: Path):
        import httpx
        self.http = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S)
        self.workdir = workdir
        info = self.http.get("/gradio_api/info").raise_for_status().json()["named_endpoints"]
        self.defaults = {name: [p.get("parameter_default") for p in endpoint["parameters"]]
                         for name, endpoint in info.items()}
        self.downloads = 0

    def predict(self, image: Path, endpoint: str) -> tuple:
        with open(image, "rb") as file:
            uploaded = self.http.post("/gradio_api/upload", files={"files": file}).raise_for_status().json()[0]
        data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, *self.defaults[endpoint][1:]]
        event = self.http.post(f"/gradio_api/call{endpoint}", json={"data": data}).raise_for_status().json()
        kind = None
        with self.http.stream("GET", f"/gradio_api/call{endpoint}/{event['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    payload = json.loads(line.split(":", 1)[1])
                    if kind == "error":
                        raise BadAnswer(f"{endpoint} answered with an error: {payload}")
                    return tuple(self._local(value) for value in payload)
        raise BadAnswer(f"{endpoint}'s event stream ended without an answer")

    def _local(self, value):
        """`value` with every file in it downloaded and replaced by its local path."""
        if isinstance(value, dict) and value.get("meta", {}).get("_type") == "gradio.FileData":
            self.downloads += 1
            path = self.workdir / f"answer_{self.downloads:05d}{Path(value['path']).suffix}"
            path.write_bytes(self.http.get(value["url"]).raise_for_status().content)
            return str(path)
        if isinstance(value, list | tuple):
            return [self._local(item) for item in value]
        return value


def call_direct(client: DirectClient, endpoint: str, image: Path) -> float:
    """Seconds one request takes over HTTP through `DirectClient`, answer checked."""
    start = time.perf_counter()
    answer = client.predict(image, endpoint)
    seconds = time.perf_counter() - start
    check_answer(endpoint, answer)
    return seconds


def call(client, endpoint: str, image: Path) -> float:
    """Seconds one request takes over HTTP, answer checked."""
    from gradio_client import handle_file
    start = time.perf_counter()
    answer = client.predict(handle_file(str(image)), api_name=endpoint)
    seconds = time.perf_counter() - start
    check_answer(endpoint, answer)
    return seconds


def call_refused(client: DirectClient, image: Path) -> float:
    """Seconds until /grade refuses `image` at the gate: the HTTP, upload and queue floor of a request."""
    start = time.perf_counter()
    decision, *_, result = client.predict(image, "/grade")
    seconds = time.perf_counter() - start
    if result.get("graded", True):
        raise BadAnswer(f"/grade graded {image.name} instead of refusing it at the gate")
    if "fundus" not in decision.lower():
        raise BadAnswer(f"/grade refused a non-fundus image with an unexpected message: {decision}")
    return seconds


@dataclass
class LoadResult:
    clients: int
    requests_per_client: int
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    lost: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def submitted(self) -> int:
        return self.clients * self.requests_per_client

    def summary(self) -> dict:
        return {"clients": self.clients, "requests_per_client": self.requests_per_client,
                "submitted": self.submitted, "ok": self.ok, "errors": len(self.errors), "lost": self.lost,
                "error_messages": sorted(set(self.errors))[:5], "seconds": round(self.seconds, 1),
                "requests_per_second": round(self.ok / self.seconds, 3) if self.seconds else None,
                "latency_p50_s": _percentile(self.latencies, 50), "latency_p95_s": _percentile(self.latencies, 95)}


def load_phase(url: str, images: list[Path], clients: int, requests_per_client: int,
               endpoints: tuple[str, ...] = ("/grade", "/compare")) -> LoadResult:
    """`clients` concurrent gradio_client sessions, each sending its requests one after another,
    cycling through `endpoints` and `images` (request i of the phase sends image i modulo their number, so a
    list as long as the phase sends each once). A request that never comes back is counted lost."""
    from gradio_client import handle_file
    result = LoadResult(clients, requests_per_client)
    lock = threading.Lock()

    def session(index: int) -> None:
        client = _client(url)
        for n in range(requests_per_client):
            endpoint = endpoints[(index + n) % len(endpoints)]
            image = images[(index * requests_per_client + n) % len(images)]
            start = time.perf_counter()
            try:
                job = client.submit(handle_file(str(image)), api_name=endpoint)
                answer = job.result(timeout=REQUEST_TIMEOUT_S)
                check_answer(endpoint, answer)
            except TimeoutError:
                with lock:
                    result.lost += 1
            except Exception as exc:  # every failure is counted and reported, none stops the phase
                with lock:
                    result.errors.append(f"{endpoint}: {type(exc).__name__}: {exc}"[:300])
            else:
                with lock:
                    result.ok += 1
                    result.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(session, range(clients)))
    result.seconds = time.perf_counter() - start
    return result


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def _unit_forward() -> Callable[[], float]:
    """Seconds of one bare torchvision InceptionV3 forward at 299 px, batch 1 (the unit of every ratio)."""
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    x = torch.randn(1, 3, 299, 299)

    def run() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        return time.perf_counter() - start
    for _ in range(2):
        run()
    return run


def large_upload(workdir: Path, source: Path, size: tuple[int, int] = (4000, 3000)) -> Path:
    """A camera-sized JPEG (12 MP) made from an example, to time the decode/downscale path."""
    from PIL import Image
    path = workdir / "camera_4000x3000.jpeg"
    with Image.open(source) as image:
        image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path


class FreshUploads:
    """Each request's own copy of a photo, marked so that no two copies decode to the same pixels: the app remembers
    the image check's answer for a view it has seen (a preview, then the grading of the same upload), and a
    benchmark that sent the same file again would time that memory instead of a first upload."""

    def __init__(self, workdir: Path):
        self.folder = workdir / "fresh"
        self.folder.mkdir(exist_ok=True)
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, source: Path) -> Path:
        from PIL import Image
        with self._lock:
            self.count += 1
            index = self.count
        with Image.open(source) as image:
            image = image.convert("RGB")
        # a 1/40-of-the-width square at the centre (on the retina), its shade set by the request's number
        side = max(8, image.width // 40)
        x, y = image.width // 2 - side // 2, image.height // 2 - side // 2
        image.paste((index * 37 % 200 + 40, index * 91 % 200 + 40, index * 53 % 200 + 40), (x, y, x + side, y + side))
        path = self.folder / f"{index:05d}_{source.stem}.jpeg"
        image.save(path, quality=92)
        return path


def non_fundus_upload(workdir: Path) -> Path:
    """A plain blue square the gate refuses, to time a request that does no model work."""
    from PIL import Image
    path = workdir / "blue_square.png"
    Image.new("RGB", (512, 512), (20, 90, 230)).save(path)
    return path


class _MemoryWatch:
    """Samples the app's RSS every `interval` seconds on a thread; `.peak_mb` is the largest seen."""

    def __init__(self, app: AppProcess, interval: float = 0.2):
        self.app, self.interval, self.peak_mb = app, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.app.memory_mb()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> _MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_app(repeats: int = 10, load_clients: int = 4, load_requests: int = 25,
              extra_env: dict[str, str] | None = None, log: Callable[[str], None] = print) -> dict:
    """The whole measurement; see the module docstring."""
    images = sorted(EXAMPLES.glob("*.jp*g"))
    if not images:
        raise RuntimeError(f"no example images in {EXAMPLES}")
    report: dict = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="drdemo-bench-") as tmp:
        workdir = Path(tmp)
        camera_file = large_upload(workdir, images[0])
        refused_file = non_fundus_upload(workdir)
        app = start_app(workdir, extra_env)
        try:
            page_s = wait_until_serving(app)
            client = _client(app.url)
            call(client, "/grade", images[0])
            report["cold_start_s"] = round(time.perf_counter() - app.started, 2)
            report["page_ready_s"] = round(page_s, 2)
            log(f"cold start {report['cold_start_s']} s (page after {report['page_ready_s']} s)")
            unit = _unit_forward()
            fresh = FreshUploads(workdir)
            direct = DirectClient(app.url, workdir)
            samples: dict[str, list[float]] = {"unit": [], "/grade": [], "/compare": [], "camera_grade": [],
                                               "refused_grade": [], "gradio_client_grade": []}
            for round_ in range(repeats):
                image = images[round_ % len(images)]
                uploads = {"/grade": fresh(image), "/compare": fresh(image), "camera": fresh(camera_file),
                           "gradio_client": fresh(image)}
                samples["unit"].append(unit())
                samples["/grade"].append(call_direct(direct, "/grade", uploads["/grade"]))
                samples["/compare"].append(call_direct(direct, "/compare", uploads["/compare"]))
                samples["camera_grade"].append(call_direct(direct, "/grade", uploads["camera"]))
                samples["refused_grade"].append(call_refused(direct, refused_file))
                samples["gradio_client_grade"].append(call(client, "/grade", uploads["gradio_client"]))
            unit_ms = statistics.median(samples["unit"]) * 1e3
            latency = {}
            for name in ("/grade", "/compare", "camera_grade", "refused_grade", "gradio_client_grade"):
                p50, p95 = _percentile(samples[name], 50) * 1e3, _percentile(samples[name], 95) * 1e3
                latency[name] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
                                 "p50_vs_inception": round(p50 / unit_ms, 2)}
            report["unit_inception_v3_ms"] = round(unit_ms, 1)
            report["latency"] = latency
            log(f"latency {latency} (unit {unit_ms:.1f} ms)")
            report["steady_rss_mb"] = round(app.memory_mb()[0], 1)
            load_uploads = [fresh(images[i % len(images)]) for i in range(load_clients * load_requests)]
            cpu_before, wall_before = app.cpu_seconds(), time.perf_counter()
            with _MemoryWatch(app) as watch:
                result = load_phase(app.url, load_uploads, load_clients, load_requests)
            cores_used = (app.cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
            rss_after, peak = app.memory_mb()
            report["load"] = {**result.summary(), "app_cpu_cores_used": round(cores_used, 2),
                              "rss_before_mb": report["steady_rss_mb"], "rss_after_mb": round(rss_after, 1),
                              "rss_peak_during_mb": round(watch.peak_mb, 1),
                              "rss_growth_percent": round(100 * (rss_after / report["steady_rss_mb"] - 1), 1)}
            report["peak_rss_mb"] = round(peak, 1)
            log(f"load {report['load']}")
            report["still_answers"] = bool(call(client, "/grade", images[-1]))
        finally:
            app.stop()
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> dict:
    """Each of the app's speed and memory targets, met or not, from the measured numbers."""
    latency, load = report["latency"], report["load"]
    return {
        "compare_p50_le_3_5x_inception": latency["/compare"]["p50_vs_inception"] <= 3.5,
        "grade_p50_le_2x_inception": latency["/grade"]["p50_vs_inception"] <= 2.0,
        "cold_start_lt_12s": report["cold_start_s"] < 12,
        "rss_lt_2_5gb_under_load": report["peak_rss_mb"] < 2560,
        "rss_growth_lt_10_percent": load["rss_growth_percent"] < 10,
        "load_without_errors_or_losses": load["errors"] == 0 and load["lost"] == 0,
        "queue_keeps_cpu_within_cores": load["app_cpu_cores_used"] <= (report["cpu_count"] or 1) * 1.05,
    }


def markdown(report: dict) -> str:
    latency, load = report["latency"], report["load"]
    unit = report["unit_inception_v3_ms"]
    lines = [
        f"Measured by `python -m benchmarks app` ({report['cpu_count']} CPUs, torch {report['torch']}): app.py on "
        f"127.0.0.1, each request a fresh upload sent over Gradio's HTTP API and its answer read from the event "
        f"stream as it arrives (`DirectClient`, as the page does; the load phase and the last row use gradio_client, "
        f"certificate checks off), interleaved with a bare torchvision InceptionV3 forward at 299 px ({unit} ms, "
        f"the unit).",
        "",
        "| path | p50 (ms) | p95 (ms) | p50 vs InceptionV3 forward |",
        "|---|---|---|---|",
        "| `/grade` (MedMamba-T: probabilities and its default heat map, 1280x850 JPEG) | "
        f"{latency['/grade']['p50_ms']} | "
        f"{latency['/grade']['p95_ms']} | {latency['/grade']['p50_vs_inception']}x |",
        f"| `/grade`, 4000x3000 camera JPEG | {latency['camera_grade']['p50_ms']} | "
        f"{latency['camera_grade']['p95_ms']} | {latency['camera_grade']['p50_vs_inception']}x |",
        f"| `/compare` (both models and their default heat maps) | {latency['/compare']['p50_ms']} | "
        f"{latency['/compare']['p95_ms']} | "
        f"{latency['/compare']['p50_vs_inception']}x |",
        f"| `/grade` refused by the gate (no model work: the HTTP, upload and queue floor) | "
        f"{latency['refused_grade']['p50_ms']} | {latency['refused_grade']['p95_ms']} | "
        f"{latency['refused_grade']['p50_vs_inception']}x |",
        f"| `/grade` through gradio_client (it polls its message queue every 50 ms) | "
        f"{latency['gradio_client_grade']['p50_ms']} | {latency['gradio_client_grade']['p95_ms']} | "
        f"{latency['gradio_client_grade']['p50_vs_inception']}x |",
        "",
        f"Cold start (process start to first answered `/grade`): {report['cold_start_s']} s. Memory: "
        f"{report['steady_rss_mb']} MB steady, {report['peak_rss_mb']} MB peak. Load: {load['clients']} clients x "
        f"{load['requests_per_client']} requests (alternating `/grade` and `/compare`): {load['ok']} answered, "
        f"{load['errors']} errors, {load['lost']} lost, {load['requests_per_second']} requests/s, p50 "
        f"{load['latency_p50_s']} s, app CPU {load['app_cpu_cores_used']} cores; RSS {load['rss_before_mb']} -> "
        f"{load['rss_after_mb']} MB over those {load['submitted']} requests ({load['rss_growth_percent']:+}%).",
    ]
    return "\n".join(lines)
