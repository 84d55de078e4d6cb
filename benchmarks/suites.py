"""Benchmarks that report ratios measured in one run, so a noisy shared machine cancels out.

    python -m benchmarks [models] [--models a,b] [--repeats N] [--json OUT] [--readme benchmarks/README.md]
    python -m benchmarks inference [--checkpoints A,B] [--images 100] [--json OUT] [--readme benchmarks/README.md]
    python -m benchmarks app [--repeats N] [--load-clients 4] [--load-requests 25] [--json OUT]
                             [--readme benchmarks/README.md]
    python -m benchmarks gate [--data ../shared/data] [--repeats 20] [--json OUT] [--readme benchmarks/README.md]
    python -m benchmarks gpu [--repeats N] [--json OUT]

Prints, for every registry model, forward latency at batch 1 and 8 at its own input size and
the ratio to torchvision InceptionV3 timed in the same rounds (models are interleaved round
by round); the selective scan's speedup over the sequential PyTorch loop and its error
against the float64 oracle (also under stress); and MedMamba-T training throughput.
The `inference` suite tries inference options on the bundled checkpoints (benchmarks/inference.py);
the `app` suite measures the running app end to end (benchmarks/app.py); the `gate` suite runs the image
gate over real and synthetic fundus photos and a corpus of other pictures, and times it (benchmarks/gate.py).
With CUDA present, `models` adds a GPU section (the `gpu` suite alone): the scan per backend at
MedMamba-T's stage-1 shape (sequential loop, Triton, mamba_ssm if installed), MedMamba-T and
InceptionV3 images/s at batch 1, 8 and 64 in float32 and with AMP, MedMamba-T's logits on the GPU
against the CPU path, and the Triton kernel against the float64 oracle (benchmarks.triton_parity).

Over 400 lines because it is also the one command line for every suite (the other suites' code
lives in their own modules); its GPU section is the part that could move out next.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import app as bench_app
from benchmarks import gate as bench_gate
from benchmarks import inference as bench_inference
from benchmarks import screen as bench_screen
from benchmarks import triton_parity
from benchmarks.readme import update_section
from drdemo.inference import main_logits
from drdemo.models import count_parameters, create_model, list_models, model_defaults
from drdemo.ops import cpu_kernel, relative_error, scan_backend, selective_scan, selective_scan_ref

UNIT_MODEL = "inception_v3"
README_START, README_END = "<!-- bench:models:start -->", "<!-- bench:models:end -->"


def _median_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin so load spikes hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_models(names: list[str], batch_sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """Forward latency per model and batch size, with the ratio to InceptionV3 of the same rounds."""
    if UNIT_MODEL not in names:
        names = [UNIT_MODEL, *names]
    torch.manual_seed(0)
    models = {name: create_model(name).eval() for name in names}
    rows = []
    for batch in batch_sizes:
        inputs = {name: torch.randn(batch, 3, model_defaults(name).input_size, model_defaults(name).input_size)
                  for name in names}

        def forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode():
                    return model(x)
            return run

        times = _median_interleaved({name: forward(models[name], inputs[name]) for name in names},
                                    repeats if batch == 1 else max(3, repeats // 4))
        for name in names:
            rows.append({
                "model": name, "batch": batch, "input_size": model_defaults(name).input_size,
                "params_m": round(count_parameters(models[name]) / 1e6, 2),
                "ms": round(times[name] * 1e3, 1), "vs_inception_v3": round(times[name] / times[UNIT_MODEL], 2),
            })
    return rows


def _stress_inputs(generator: torch.Generator, batch: int, dim: int, length: int, d_state: int, groups: int,
                   stress: bool) -> tuple[torch.Tensor, ...]:
    """Inputs at MedMamba shapes; `stress` uses the hard case (A = -exp(6U), large steps)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    u = randn(batch, dim, length)
    if stress:
        A = -torch.exp(6 * torch.rand(dim, d_state, generator=generator))
        delta = F.softplus(2 * randn(batch, dim, length) + 1)
    else:
        A = -torch.exp(torch.rand(dim, d_state, generator=generator) * 2.77)  # A in [-16, -1]
        delta = F.softplus(randn(batch, dim, length) - 4)
    B, C = randn(batch, groups, d_state, length), randn(batch, groups, d_state, length)
    return u, delta, A, B, C, randn(dim)


def bench_scan(repeats: int) -> dict:
    """Fast path vs the sequential float32 loop at MedMamba-T's stage-1 shape; errors vs float64."""
    generator = torch.Generator().manual_seed(0)
    shape = dict(batch=1, dim=4 * 96, length=56 * 56, d_state=16, groups=4)
    result: dict = {"shape": shape, "backend": scan_backend("cpu")}
    for case in ("normal", "stress"):
        u, delta, A, B, C, D = _stress_inputs(generator, **shape, stress=case == "stress")
        oracle = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double())
        fast = selective_scan(u, delta, A, B, C, D)
        loop = selective_scan_ref(u, delta, A, B, C, D)
        result[f"{case}_max_error"] = float(f"{relative_error(fast, oracle):.3g}")
        result[f"{case}_loop_max_error"] = float(f"{relative_error(loop, oracle):.3g}")
    times = _median_interleaved({"fast": lambda: selective_scan(u, delta, A, B, C, D)}, repeats)
    loop_times = _median_interleaved({"loop": lambda: selective_scan_ref(u, delta, A, B, C, D)}, 3, warmup=1)
    result["fast_ms"] = round(times["fast"] * 1e3, 2)
    result["loop_ms"] = round(loop_times["loop"] * 1e3, 1)
    result["speedup"] = round(loop_times["loop"] / times["fast"], 1)

    small = [t.double().requires_grad_() for t in _stress_inputs(generator, 2, 8, 11, 4, 2, stress=False)]
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    result["gradcheck"] = bool(torch.autograd.gradcheck(
        lambda u, d, a, b, c, dd, db: selective_scan(u, d, a, b, c, dd, delta_bias=db, delta_softplus=True),
        (*small, bias)))
    return result


def bench_training(repeats: int, batch: int = 8) -> dict:
    """Forward + backward + SGD step images/s for MedMamba-T and InceptionV3, same rounds."""
    torch.manual_seed(0)
    setups = {}
    for name in ("medmamba_t", UNIT_MODEL):
        model = create_model(name).train()
        size = model_defaults(name).input_size
        images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(model=model, images=images, labels=labels, optimizer=optimizer) -> None:
            logits = main_logits(model(images))
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits, labels).backward()
            optimizer.step()
        setups[name] = step
    times = _median_interleaved(setups, max(3, repeats // 4), warmup=1)
    return {"batch": batch, **{f"{name}_img_per_s": round(batch / t, 1) for name, t in times.items()},
            "medmamba_t_vs_inception_v3_time": round(times["medmamba_t"] / times[UNIT_MODEL], 2)}


GPU_SKIPPED = "GPU section skipped: CUDA is not available (torch.cuda.is_available() is False)"
GPU_BATCH_SIZES = (1, 8, 64)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` followed by a device synchronisation, so a timer sees the kernels finish."""
    def run() -> object:
        out = fn()
        _synchronize(device)
        return out
    return run


def _scan_backends(device: torch.device) -> dict[str, str]:
    """Timed scan implementations for `device`, by name -> DRDEMO_SCAN_BACKEND value."""
    if device.type != "cuda":
        return {"reference": "torch", "cpu": "cpu"}
    backends = {"reference": "torch", "triton": "triton"}
    with triton_parity.forced_backend("auto"):
        if scan_backend(device) == "cuda":
            backends["mamba_ssm"] = "auto"
    return backends


def bench_scan_backends(device: torch.device, repeats: int, shape: dict | None = None) -> dict:
    """Each scan backend at MedMamba-T's stage-1 shape on `device`: ms per call, speedup over
    the sequential loop, and max error vs the float64 oracle."""
    shape = shape or dict(batch=1, dim=4 * 96, length=56 * 56, d_state=16, groups=4)
    u, delta, A, B, C, D = (t.to(device) for t in _stress_inputs(torch.Generator().manual_seed(0), **shape,
                                                                stress=False))
    oracle = selective_scan_ref(u.cpu().double(), delta.cpu().double(), A.cpu().double(), B.cpu().double(),
                                C.cpu().double(), D.cpu().double())
    result: dict = {"shape": shape, "device": str(device)}
    for name, backend in _scan_backends(device).items():
        with triton_parity.forced_backend(backend):
            def call() -> torch.Tensor:
                return selective_scan(u, delta, A, B, C, D)
            out = call()
            loop = name == "reference"
            ms = _median_interleaved({name: _timed(call, device)}, 3 if loop else repeats, warmup=1)[name] * 1e3
        result[name] = {"ms": round(ms, 3), "max_error": float(f"{triton_parity.relative_error(out, oracle):.3g}")}
    for name in result:
        if isinstance(result[name], dict) and "ms" in result[name]:
            result[name]["vs_reference"] = round(result["reference"]["ms"] / result[name]["ms"], 1)
    return result


def bench_throughput(device: torch.device, batch_sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """MedMamba-T and InceptionV3 inference images/s on `device`, float32 and AMP, same rounds."""
    amp_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    torch.manual_seed(0)
    models = {name: create_model(name).eval().to(device) for name in ("medmamba_t", UNIT_MODEL)}
    rows = []
    for batch in batch_sizes:
        fns = {}
        for name, model in models.items():
            size = model_defaults(name).input_size
            x = torch.randn(batch, 3, size, size, device=device)
            for precision in ("float32", "amp"):
                def run(model=model, x=x, precision=precision) -> object:
                    autocast = (torch.autocast(device.type, dtype=amp_dtype) if precision == "amp"
                                else contextlib.nullcontext())
                    with torch.inference_mode(), autocast:
                        return model(x)
                fns[(name, precision)] = _timed(run, device)
        times = _median_interleaved(fns, repeats, warmup=2)
        rows += [{"model": name, "precision": precision if precision == "float32" else f"amp {amp_dtype}",
                  "batch": batch, "img_per_s": round(batch / t, 1), "ms": round(t * 1e3, 2)}
                 for (name, precision), t in times.items()]
    return rows


def logits_parity(device: torch.device, batch: int = 2) -> dict:
    """MedMamba-T's logits on `device` (its default scan backend) vs the CPU path, float32."""
    torch.manual_seed(0)
    model = create_model("medmamba_t").eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        expected = model(x)
        got = model.to(device)(x.to(device))
    return {"backend": scan_backend(device), "max_error": float(f"{triton_parity.relative_error(got, expected):.3g}")}


def bench_gpu(repeats: int) -> dict | None:
    """The GPU section, or None (with a printed line saying why) when CUDA is not available."""
    if not torch.cuda.is_available():
        print(GPU_SKIPPED, flush=True)
        return None
    device = torch.device("cuda")
    result: dict = {"gpu": torch.cuda.get_device_name(device), "auto_backend": scan_backend(device)}
    result["scan"] = bench_scan_backends(device, repeats)
    print(json.dumps({"gpu_scan": result["scan"]}), flush=True)
    result["logits_parity"] = logits_parity(device)
    parity = triton_parity.report("cuda", small=False)
    result["triton_parity"] = {"passed": parity["passed"],
                               "worst": {case: max(errors.values()) for case, errors in parity["cases"].items()}}
    print(json.dumps({"gpu_parity": result["triton_parity"], "logits": result["logits_parity"]}), flush=True)
    result["throughput"] = bench_throughput(device, GPU_BATCH_SIZES, max(3, repeats // 2))
    return result


def gpu_markdown(gpu: dict) -> list[str]:
    scan = gpu["scan"]
    parts = [f"{name} {row['ms']} ms ({row['vs_reference']}x, error {row['max_error']})"
             for name, row in scan.items() if isinstance(row, dict) and "ms" in row]
    lines = ["", f"GPU ({gpu['gpu']}, scan backend `{gpu['auto_backend']}`): the scan at stage 1: " + "; ".join(parts)
             + f". MedMamba-T logits vs the CPU path: max error {gpu['logits_parity']['max_error']}; Triton vs the "
             f"float64 oracle: {'all cases pass' if all(gpu['triton_parity']['passed'].values()) else 'FAILS'}.",
             "", "| model | precision | " + " | ".join(f"batch {b} (img/s)" for b in GPU_BATCH_SIZES) + " |",
             "|---|---|" + "---|" * len(GPU_BATCH_SIZES)]
    table: dict[tuple[str, str], dict[int, float]] = {}
    for row in gpu["throughput"]:
        table.setdefault((row["model"], row["precision"]), {})[row["batch"]] = row["img_per_s"]
    for (model, precision), by_batch in table.items():
        lines.append(f"| {model} | {precision} | " + " | ".join(str(by_batch.get(b, "-")) for b in GPU_BATCH_SIZES)
                     + " |")
    return lines


def environment() -> dict:
    lib = cpu_kernel.load()
    return {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "scan_backend": scan_backend("cpu"),
        "scan_kernel": str(cpu_kernel.library_path()) if lib is not None else cpu_kernel.unavailable_reason(),
        "python": sys.version.split()[0],
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Measured by `python -m benchmarks` ({env['threads']} threads, torch {env['torch']}, "
        f"{env['cpu_capability']}, scan backend `{env['scan_backend']}`). Ratios are to torchvision "
        f"InceptionV3 at 299 px timed in the same rounds.",
        "",
        "| model | input | params (M) | batch 1 (ms) | vs InceptionV3 | batch 8 (ms) | vs InceptionV3 |",
        "|---|---|---|---|---|---|---|",
    ]
    by_model: dict[str, dict[int, dict]] = {}
    for row in report["models"]:
        by_model.setdefault(row["model"], {})[row["batch"]] = row
    for name, rows in by_model.items():
        one, eight = rows.get(1), rows.get(8)
        lines.append(
            f"| {name} | {one['input_size']} | {one['params_m']} | {one['ms']} | {one['vs_inception_v3']}x | "
            + (f"{eight['ms']} | {eight['vs_inception_v3']}x |" if eight else "- | - |"))
    scan = report.get("scan")
    if scan:
        lines += ["", f"Selective scan at MedMamba-T stage 1 (384 channels, L = 3136, d_state 16): "
                      f"{scan['fast_ms']} ms vs {scan['loop_ms']} ms for the sequential PyTorch loop "
                      f"(**{scan['speedup']}x**); max error vs the float64 oracle {scan['normal_max_error']} "
                      f"(stress case {scan['stress_max_error']}); gradcheck "
                      f"{'passes' if scan['gradcheck'] else 'FAILS'}."]
    train = report.get("training")
    if train:
        lines += ["", f"Training step (forward + backward + SGD, batch {train['batch']}): MedMamba-T "
                      f"{train['medmamba_t_img_per_s']} img/s at 224 px, InceptionV3 "
                      f"{train['inception_v3_img_per_s']} img/s at 299 px."]
    if report.get("gpu"):
        lines += gpu_markdown(report["gpu"])
    return "\n".join(lines)


def update_readme(path: Path, table: str, start: str = README_START, end: str = README_END) -> None:
    update_section(path, table, start, end)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["screen"]:                   # its own options: benchmarks/screen.py
        return bench_screen.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", default="models", choices=["models", "inference", "app", "gate", "gpu"],
                        help="models: bare networks (and the GPU section with CUDA); inference: options such as "
                             "int8 and torch.compile on the checkpoints; app: app.py end to end over HTTP; gate: "
                             "the image gate on real photos and other pictures; gpu: the GPU section alone; "
                             "screen: grading a generated folder at 1 and 2 processes, with its own options "
                             "(python -m benchmarks screen --help) (default: models)")
    parser.add_argument("--models", default=",".join(list_models()),
                        help="comma-separated registry names (default: all)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: 20 for models, 10 for app)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default: 1,8)")
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--checkpoints", help="inference: comma-separated checkpoint folders (default: bundled)")
    parser.add_argument("--images", type=int, default=100, help="inference: images whose grades must not change")
    parser.add_argument("--load-clients", type=int, default=4, help="app: concurrent clients (default: 4)")
    parser.add_argument("--load-requests", type=int, default=25, help="app: requests per client (default: 25)")
    parser.add_argument("--data", type=Path, default=bench_gate.DEFAULT_DATA,
                        help="gate: folder of the real fundus photos (default: ../shared/data)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--readme", type=Path, help="rewrite the benchmark section of this README")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(list_models())}")
    if args.repeats is None:
        args.repeats = 10 if args.suite == "app" else 20
    for name in ("repeats", "load_clients", "load_requests", "images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.readme is not None and args.suite == "gpu":
        parser.error("--readme does not apply to the gpu suite (its section is part of the models table)")
    if args.readme is not None:
        markers = {"models": (README_START, README_END), "app": (bench_app.README_START, bench_app.README_END),
                   "inference": (bench_inference.README_START, bench_inference.README_END),
                   "gate": (bench_gate.README_START, bench_gate.README_END)}[args.suite]
        if not args.readme.is_file() or not all(m in args.readme.read_text() for m in markers):
            parser.error(f"--readme {args.readme} has no {markers[0]} ... {markers[1]} section to update")
    if args.suite == "app":
        return _main_app(args)
    if args.suite == "inference":
        return _main_inference(args, parser)
    if args.suite == "gpu":
        gpu = bench_gpu(args.repeats)
        if gpu is None:
            return 1
        print("\n".join(gpu_markdown(gpu)))
        if args.json:
            args.json.write_text(json.dumps(gpu, indent=2))
        return 0 if all(gpu["triton_parity"]["passed"].values()) else 1
    if args.suite == "gate":
        report = bench_gate.bench_gate(args.data, args.repeats)
        return _publish(args, report, bench_gate.markdown(report), (bench_gate.README_START, bench_gate.README_END))
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")

    report: dict = {"environment": environment()}
    print(json.dumps(report["environment"]), flush=True)
    if not args.skip_scan:
        report["scan"] = bench_scan(args.repeats)
        print(json.dumps({"scan": report["scan"]}), flush=True)
    report["models"] = bench_models(names, batch_sizes, args.repeats)
    if not args.skip_training:
        report["training"] = bench_training(args.repeats)
    report["gpu"] = bench_gpu(args.repeats)
    return _publish(args, report, markdown(report), (README_START, README_END))


def _main_inference(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    folders = ([Path(f.strip()) for f in args.checkpoints.split(",") if f.strip()] if args.checkpoints
               else list(bench_inference.DEFAULT_CHECKPOINTS))
    missing = [str(f) for f in folders if not (f / "config.json").is_file()]
    if missing:
        parser.error(f"not a checkpoint folder (no config.json): {', '.join(missing)}")
    images = bench_inference.agreement_images(args.images)
    rows = [row for folder in folders for row in bench_inference.bench_checkpoint(folder, images, args.repeats)]
    return _publish(args, rows, bench_inference.markdown(rows, torch.get_num_threads()),
                    (bench_inference.README_START, bench_inference.README_END))


def _main_app(args: argparse.Namespace) -> int:
    try:
        report = bench_app.bench_app(args.repeats, args.load_clients, args.load_requests)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report["targets"], indent=2))
    return _publish(args, report, bench_app.markdown(report), (bench_app.README_START, bench_app.README_END))


def _publish(args: argparse.Namespace, report: dict | list, table: str, markers: tuple[str, str]) -> int:
    """Print the table; keep the report as JSON and rewrite the README section where asked."""
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.readme:
        update_readme(args.readme, table, *markers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
