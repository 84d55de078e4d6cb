"""The benchmark CLI: argument errors, the README table, and a real (small) measurement."""

import pytest

from benchmarks import suites as bench


def test_unknown_model_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "medmamba_xl"])
    assert exit_info.value.code == 2
    assert "unknown model(s) medmamba_xl" in capsys.readouterr().err


def test_bad_batch_sizes_are_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--batch-sizes", "one"])
    assert "--batch-sizes must be comma-separated integers" in capsys.readouterr().err


def test_models_are_timed_against_inception_in_the_same_rounds():
    rows = bench.bench_models(["resnet50"], batch_sizes=(1,), repeats=1)
    by_name = {row["model"]: row for row in rows}
    assert set(by_name) == {"inception_v3", "resnet50"}
    assert by_name["inception_v3"]["vs_inception_v3"] == 1.0
    assert by_name["resnet50"]["ms"] > 0 and by_name["resnet50"]["params_m"] == 23.52


def test_readme_section_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.README_START}\nold table\n{bench.README_END}\noutro\n")
    bench.update_readme(readme, "new table")
    assert readme.read_text() == f"intro\n{bench.README_START}\nnew table\n{bench.README_END}\noutro\n"


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here")
    with pytest.raises(SystemExit, match="no <!-- bench:models:start -->"):
        bench.update_readme(readme, "table")


def test_gpu_section_is_skipped_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.bench_gpu(repeats=1) is None
    assert bench.GPU_SKIPPED in capsys.readouterr().out
    assert bench.main(["gpu"]) == 1


def test_gpu_section_code_runs_on_cpu(monkeypatch):
    """The GPU section's measurements, pointed at the CPU at tiny sizes: they run and report."""
    device = bench.torch.device("cpu")
    real_create_model = bench.create_model
    scan = bench.bench_scan_backends(device, repeats=1, shape=dict(batch=1, dim=8, length=9, d_state=4, groups=2))
    assert scan["reference"]["vs_reference"] == 1.0 and scan["cpu"]["max_error"] < 1e-5
    tiny = bench.torch.nn.Sequential(bench.torch.nn.Conv2d(3, 4, 3, stride=8), bench.torch.nn.Flatten(0))
    monkeypatch.setattr(bench, "create_model", lambda name: tiny)
    rows = bench.bench_throughput(device, batch_sizes=(1,), repeats=1)
    monkeypatch.setattr(bench, "create_model", real_create_model)
    assert {(r["model"], r["precision"]) for r in rows} == {
        (m, p) for m in ("medmamba_t", "inception_v3") for p in ("float32", "amp torch.bfloat16")}
    assert bench.logits_parity(device, batch=1)["max_error"] == 0.0
    gpu = {"gpu": "cpu", "auto_backend": "cpu", "scan": scan, "logits_parity": {"max_error": 0.0},
           "triton_parity": {"passed": {"case": True}}, "throughput": rows}
    assert "| medmamba_t | float32 |" in "\n".join(bench.gpu_markdown(gpu))


def test_screen_table_states_each_target_from_the_runs():
    from benchmarks import screen

    def run(processes: int, threads: int, rate: float, speedup: float | None, growth: list[float]) -> dict:
        return {"processes": processes, "threads_per_process": threads, "loop_photos_per_second": rate,
                "wall_photos_per_second": rate * 0.9, "speedup": speedup,
                "scaling_efficiency": None if speedup is None else speedup / processes, "rss_growth": growth,
                "vs_one_process_every_core": None, "vs_bare_forward": rate / 6.0,
                "projected_hours_100k": 100_000 / rate / 3600}

    report = {"photos": 2000, "photo_size": 512, "batch_size": 16, "cores": 2,
              "bare_forward": {"photos_per_second": 6.0},
              "runs": [run(1, 1, 2.7, 1.0, [0.002]), run(2, 1, 5.4, 2.0, [0.031, 0.0]), run(1, 2, 4.1, None, [])]}
    table = screen.markdown(report)
    assert "| 2 | 1 | 5.4 | 4.9 | 2.00x | 100% | 0.90x |" in table
    assert ("2 processes 2.00x the photos/s of 1 (target >= 1.6x); 0.90x the bare forward (target >= 0.8x); "
            "largest RSS growth of any rank +3.1% (target < 5%)") in table
