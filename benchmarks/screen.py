"""`python -m benchmarks screen`: screening throughput on a generated folder of synthetic fundus photos.

It grades the folder with `python -m drdemo.screen` under torchrun at each process count, every process with
one core's worth of torch threads (the way a screening job is spread: one worker per core or GPU), and once
more as one process using every core as torch threads, the best a single process can do here. It reports
photos/s of the grading loop (from summary.json, model loading excluded) and of the whole command, the speedup
and scaling efficiency against one single-core process, each run's ratio to the bare batched forward passes of
the served models on random inputs (the same batch size, in this process, on every core), each rank's peak RSS
growth after the first tenth of its run, and the projected wall time for 100,000 photos. With CUDA, a GPU run
with one process per device follows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.readme import update_section

ROOT = Path(__file__).resolve().parents[1]
PROJECTED_PHOTOS = 100_000
README_START, README_END = "<!-- bench:screen:start -->", "<!-- bench:screen:end -->"


def generate_folder(folder: Path, photos: int, size: int) -> Path:
    """`photos` synthetic fundus photos (PNG, `size` pixels, grades 0-4 in turn), kept for the next run."""
    from drdemo.data.synthetic import generate_fundus

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(photos):
        target = folder / f"{index // 500:03d}" / f"photo-{index:06d}.png"
        if not target.is_file():
            target.parent.mkdir(exist_ok=True)
            Image.fromarray(generate_fundus(index, index % 5, size=size).image).save(target)
    return folder


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(), [])
        found += children
        queue += children
    return found


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _is_rank(pid: int) -> bool:
    try:
        return b"drdemo.screen" in Path(f"/proc/{pid}/cmdline").read_bytes() and b"torch.distributed.run" not in \
            Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def run_screen(folder: Path, out: Path, processes: int, batch_size: int, device: str, threads: int) -> dict:
    """One screening run under torchrun; photos/s and each rank's RSS, sampled from /proc every 0.2 s from the
    first sample after its part file holds a row to the end."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m",
               "drdemo.screen", str(folder), "--out", str(out), "--batch-size", str(batch_size), "--device", device]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss: dict[int, list[float]] = {}
    while process.poll() is None:
        grading = any(p.stat().st_size > 0 for p in out.glob("part-*.csv")) if out.is_dir() else False
        for pid in _descendants(process.pid):
            if grading and _is_rank(pid) and (value := _rss_mib(pid)) is not None:
                rss.setdefault(pid, []).append(value)
        time.sleep(0.2)
    wall = time.perf_counter() - start
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    loop = summary["throughput"]
    growth = [_growth(values) for values in rss.values() if len(values) >= 10]
    return {"processes": processes, "threads_per_process": threads, "photos": summary["photos"],
            "loop_seconds": loop["seconds"], "loop_photos_per_second": loop["photos_per_second"],
            "wall_seconds": wall, "wall_photos_per_second": summary["photos"] / wall,
            "rss_first_half_peak_mib": [round(max(_halves(v)[0]), 1) for v in rss.values() if len(v) >= 10],
            "rss_peak_mib": [round(max(v), 1) for v in rss.values()],
            "rss_low_mib": [round(min(v[len(v) // 10:]), 1) for v in rss.values()],
            "rss_growth": [round(g, 4) for g in growth], "outcomes": summary["outcomes"]}


def _halves(values: list[float]) -> tuple[list[float], list[float]]:
    """The samples after the first tenth (warm-up), split into the run's earlier and later half."""
    kept = values[len(values) // 10:]
    return kept[:len(kept) // 2], kept[len(kept) // 2:]


def _growth(values: list[float]) -> float:
    """RSS growth over a run: the later half's peak against the earlier half's. RSS swings within every batch
    (the forward's transient buffers), so peaks are compared with peaks; a leak makes the later peak higher."""
    earlier, later = _halves(values)
    return max(later) / max(earlier) - 1


def bare_forward(batch_size: int, repeats: int, device: str) -> dict:
    """Photos/s of the served models' batched forwards alone (random inputs, every model once per photo)."""
    from drdemo.inference import view_outputs
    from drdemo.serving.slots import load_settings, serve

    os.environ["DRDEMO_DEVICE"] = device
    seconds = {}
    for settings in load_settings():
        predictor = serve(settings).predictor
        config = predictor.config
        batch = torch.randn(batch_size, 3, config.input_size, config.input_size, device=predictor.device)
        view_outputs(predictor.model, batch, config.test_time_views)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            view_outputs(predictor.model, batch, config.test_time_views)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds[settings.slot] = float(np.median(times))
    return {"seconds_per_batch": seconds, "batch_size": batch_size,
            "photos_per_second": batch_size / sum(seconds.values())}


def bench_screen(folder: Path, photos: int, size: int, batch_size: int, process_counts: list[int],
                 repeats: int) -> dict:
    cores = os.cpu_count() or 1
    generate_start = time.perf_counter()
    generate_folder(folder, photos, size)
    report: dict = {"photos": photos, "photo_size": size, "batch_size": batch_size, "cores": cores,
                    "folder_seconds": time.perf_counter() - generate_start, "runs": []}
    torch.set_num_threads(cores)
    before = bare_forward(batch_size, repeats, "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        plan = [(count, 1) for count in process_counts]   # one core per process
        if cores > 1 and 1 in process_counts:
            plan.append((1, cores))      # the reference: one process on every core
        for count, threads in plan:
            run = run_screen(folder, Path(scratch) / f"cpu-{count}x{threads}", count, batch_size, "cpu", threads)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
        after = bare_forward(batch_size, repeats, "cpu")
        # the faster of the two, before and after the runs, so a disturbance during one cannot flatter the ratios
        report["bare_forward"] = max(before, after, key=lambda b: b["photos_per_second"])
        report["bare_forward_measurements"] = [before["photos_per_second"], after["photos_per_second"]]
        one = next((r for r in report["runs"] if r["processes"] == 1 and r["threads_per_process"] == 1), None)
        for run in report["runs"]:
            scaling = one is not None and run["threads_per_process"] == 1
            run["speedup"] = run["loop_photos_per_second"] / one["loop_photos_per_second"] if scaling else None
            run["scaling_efficiency"] = None if run["speedup"] is None else run["speedup"] / run["processes"]
            run["vs_bare_forward"] = run["loop_photos_per_second"] / report["bare_forward"]["photos_per_second"]
            run["projected_hours_100k"] = PROJECTED_PHOTOS / run["wall_photos_per_second"] / 3600
        reference = next((r for r in report["runs"] if r["threads_per_process"] == cores > 1), None)
        if reference is not None:
            for run in report["runs"]:
                run["vs_one_process_every_core"] = (run["loop_photos_per_second"]
                                                    / reference["loop_photos_per_second"])
        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            report["gpu"] = {"device": torch.cuda.get_device_name(0), "devices": gpus,
                             "bare_forward": bare_forward(batch_size * 4, repeats, "cuda"),
                             "run": run_screen(folder, Path(scratch) / "gpu", gpus, batch_size * 4, "cuda", 4)}
            gpu_run = report["gpu"]["run"]
            gpu_run["vs_bare_forward"] = (gpu_run["loop_photos_per_second"]
                                          / report["gpu"]["bare_forward"]["photos_per_second"])
            gpu_run["projected_hours_100k"] = PROJECTED_PHOTOS / gpu_run["wall_photos_per_second"] / 3600
    return report


def markdown(report: dict) -> str:
    lines = [f"Screening {report['photos']} synthetic {report['photo_size']}-pixel photos, batch "
             f"{report['batch_size']}, {report['cores']} cores; bare batched forwards of the served models: "
             f"{report['bare_forward']['photos_per_second']:.1f} photos/s.", "",
             "| processes | threads each | photos/s (loop) | photos/s (wall) | speedup | efficiency | vs bare forward "
             "| vs 1 process on every core | RSS growth per rank | 100,000 photos |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = list(report["runs"]) + ([report["gpu"]["run"]] if "gpu" in report else [])
    for run in rows:
        speedup = "" if run.get("speedup") is None else f"{run['speedup']:.2f}x"
        efficiency = "" if run.get("scaling_efficiency") is None else f"{run['scaling_efficiency']:.0%}"
        growth = ", ".join(f"{g:+.1%}" for g in run["rss_growth"]) or "n/a"
        reference = "" if run.get("vs_one_process_every_core") is None else f"{run['vs_one_process_every_core']:.2f}x"
        lines.append(f"| {run['processes']} | {run['threads_per_process']} | {run['loop_photos_per_second']:.1f} | "
                     f"{run['wall_photos_per_second']:.1f} | {speedup} | {efficiency} | {run['vs_bare_forward']:.2f}x "
                     f"| {reference} | {growth} | {run['projected_hours_100k']:.1f} h |")
    lines.append("\nSpeedup and efficiency: against one process on one core. Bare forward: both served models' "
                 "batched forwards on random inputs in one process on every core, the faster of a measurement "
                 "before and one after the runs. RSS growth: the peak in the later half of a rank's run against "
                 "the peak in the earlier half (the first tenth left out as warm-up).")
    two = next((run for run in report["runs"] if run["processes"] == 2 and run.get("speedup") is not None), None)
    if two is not None:
        growth = max((g for run in report["runs"] for g in run["rss_growth"]), default=None)
        lines.append(f"\nTargets on {report['cores']} cores: 2 processes {two['speedup']:.2f}x the photos/s of 1 "
                     f"(target >= 1.6x); {two['vs_bare_forward']:.2f}x the bare forward (target >= 0.8x); largest "
                     "RSS growth of any rank " + ("n/a" if growth is None else f"{growth:+.1%}") + " (target < 5%).")
    if "gpu" in report:
        lines.append(f"\nGPU row: {report['gpu']['devices']} x {report['gpu']['device']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks screen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=2000, help="photos in the generated folder (default 2000)")
    parser.add_argument("--size", type=int, default=512, help="side of each synthetic photo in pixels (default 512)")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per forward pass (default 16)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the bare forwards (default 5)")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "drdemo-screen-bench",
                        help="where the generated photos are kept between runs")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--readme", type=Path, help=f"rewrite this file's {README_START} ... {README_END} section")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.processes.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--processes must be comma-separated integers, got {args.processes!r}")
    for name in ("photos", "size", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not counts or min(counts) < 1:
        parser.error("--processes needs positive process counts")
    if args.readme is not None and (not args.readme.is_file()
                                    or not all(m in args.readme.read_text() for m in (README_START, README_END))):
        parser.error(f"--readme {args.readme} has no {README_START} ... {README_END} section to update")
    report = bench_screen(args.folder, args.photos, args.size, args.batch_size, counts, args.repeats)
    table = markdown(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.readme:
        update_section(args.readme, table, README_START, README_END)
    return 0
