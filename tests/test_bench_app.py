"""The end-to-end benchmark's pieces: answer checks, memory and CPU readings, and a short load phase
against the running app (2 clients x 3 requests; correctness only, no timing assertions)."""

import os
from pathlib import Path

import pytest

from benchmarks import app as bench_app
from benchmarks import suites as bench

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.jp*g"))


def _label(probabilities: dict[str, float]) -> dict:
    return {"label": max(probabilities, key=probabilities.get),
            "confidences": [{"label": k, "confidence": v} for k, v in probabilities.items()]}


FIVE = {"No DR": 0.1, "Mild NPDR": 0.2, "Moderate NPDR": 0.4, "Severe NPDR": 0.2, "Proliferative DR": 0.1}


def test_a_label_with_five_grades_summing_to_one_passes():
    assert bench_app.check_label(_label(FIVE)) == "Moderate NPDR"


@pytest.mark.parametrize("label, message", [
    (_label({**FIVE, "No DR": 0.5}), "sum to 1.4000"),
    (_label({"No DR": 0.5, "Referable": 0.5}), "not the five ICDR grades"),
    ({"label": None}, "not the five ICDR grades"),
])
def test_a_wrong_label_is_a_bad_answer(label, message):
    with pytest.raises(bench_app.BadAnswer, match=message):
        bench_app.check_label(label)


def test_answers_without_their_images_are_bad(tmp_path):
    image = tmp_path / "cam.png"
    image.write_bytes(b"png")
    bench_app.check_answer("/grade", ("text", "note", _label(FIVE), None, [str(image), str(image)], "", "check", {}))
    chart = {"data": [[grade, 0.2, "M"] for grade in FIVE]}
    with pytest.raises(bench_app.BadAnswer, match="heat map images"):
        bench_app.check_answer("/compare", ("text", "note", chart, chart, _label(FIVE), _label(FIVE), str(image), None,
                                            None, None, "check", {}))
    with pytest.raises(bench_app.BadAnswer, match="probability tables"):
        bench_app.check_answer("/compare", ("text", "note", chart, {}, _label(FIVE), _label(FIVE), str(image),
                                            str(image), None, None, "check", {}))


def test_each_benchmark_upload_is_a_photo_the_app_has_not_seen(tmp_path):
    """The app remembers the image check of a view it has seen; the benchmark's copies differ in pixels."""
    import numpy as np
    from PIL import Image
    fresh = bench_app.FreshUploads(tmp_path)
    copies = [fresh(EXAMPLES[0]) for _ in range(3)]
    pixels = [np.asarray(Image.open(path).convert("RGB"), dtype=np.int16) for path in copies]
    original = np.asarray(Image.open(EXAMPLES[0]).convert("RGB"), dtype=np.int16)
    assert len(set(copies)) == 3 and all(p.shape == original.shape for p in pixels)
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert np.abs(pixels[a] - pixels[b]).max() > 20
    assert np.median(np.abs(pixels[0] - original)) <= 2   # the rest of the photo is the photo


def test_memory_and_cpu_readings_of_this_process():
    current, peak = bench_app.process_memory_mb(os.getpid())
    assert 10 < current <= peak
    assert bench_app.process_cpu_seconds(os.getpid()) > 0


def test_percentile_interpolates():
    assert bench_app._percentile([1, 2, 3, 4, 5], 50) == 3
    assert bench_app._percentile([1, 2], 95) == 1.95
    assert bench_app._percentile([], 50) is None


def _report(**changes) -> dict:
    latency = {name: {"p50_ms": 100.0, "p95_ms": 120.0, "p50_vs_inception": ratio}
               for name, ratio in (("/grade", 2.0), ("/compare", 3.5), ("camera_grade", 2.2), ("refused_grade", 0.6),
                                   ("gradio_client_grade", 2.4))}
    load = {"clients": 4, "requests_per_client": 25, "submitted": 100, "ok": 100, "errors": 0, "lost": 0,
            "requests_per_second": 2.0, "latency_p50_s": 1.5, "app_cpu_cores_used": 1.9, "rss_before_mb": 900.0,
            "rss_after_mb": 950.0, "rss_growth_percent": 5.6}
    report = {"cpu_count": 2, "torch": "x", "unit_inception_v3_ms": 50.0, "latency": latency, "load": load,
              "cold_start_s": 9.0, "steady_rss_mb": 900.0, "peak_rss_mb": 1000.0}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            report[section][name] = value
        else:
            report[section] = value
    return report


def test_targets_follow_the_numbers():
    assert all(bench_app.targets(_report()).values())
    missed = bench_app.targets(_report(load__errors=1, cold_start_s=20.0, load__app_cpu_cores_used=3.0))
    assert {k for k, ok in missed.items() if not ok} == {
        "load_without_errors_or_losses", "cold_start_lt_12s", "queue_keeps_cpu_within_cores"}


def test_markdown_reports_every_measured_number():
    table = bench_app.markdown(_report())
    assert "| `/compare` (both models and their default heat maps) | 100.0 | 120.0 | 3.5x |" in table
    assert "100 answered, 0 errors, 0 lost" in table and "(+5.6%)" in table
    assert "| `/grade` refused by the gate (no model work: the HTTP, upload and queue floor) | 100.0 | 120.0 | 0.6x |" \
        in table
    assert "| `/grade` through gradio_client (it polls its message queue every 50 ms) | 100.0 | 120.0 | 2.4x |" in table


def test_app_suite_readme_without_its_section_is_refused(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{bench.README_START}\n{bench.README_END}\n")
    with pytest.raises(SystemExit):
        bench.main(["app", "--readme", str(readme)])
    assert "no <!-- bench:app:start -->" in capsys.readouterr().err


def test_bad_load_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["app", "--load-clients", "0"])
    assert "--load-clients must be at least 1" in capsys.readouterr().err


def test_short_load_phase_answers_everything_correctly(app_url):
    result = bench_app.load_phase(app_url, EXAMPLES, clients=2, requests_per_client=3)
    summary = result.summary()
    assert summary["errors"] == 0, summary["error_messages"]
    assert (summary["ok"], summary["lost"], summary["submitted"]) == (6, 0, 6)
    assert len(result.latencies) == 6


def test_refused_request_is_timed_only_when_the_gate_refuses_it(app_url, tmp_path):
    client = bench_app.DirectClient(app_url, tmp_path)
    assert bench_app.call_refused(client, bench_app.non_fundus_upload(tmp_path)) > 0
    with pytest.raises(bench_app.BadAnswer, match="instead of refusing it"):
        bench_app.call_refused(client, EXAMPLES[0])


def test_the_direct_client_gets_the_answer_gradio_client_gets(app_url, tmp_path):
    """The same request through both clients: the same texts and grades, and the images downloaded."""
    direct = bench_app.DirectClient(app_url, tmp_path)
    for endpoint in ("/grade", "/compare"):
        answer = direct.predict(EXAMPLES[0], endpoint)
        bench_app.check_answer(endpoint, answer)
        from gradio_client import handle_file
        reference = bench_app._client(app_url).predict(handle_file(str(EXAMPLES[0])), api_name=endpoint)
        timeless = [[line for line in text.splitlines() if "Time:" not in line] for text in (answer[0], reference[0])]
        assert timeless[0] == timeless[1]   # the decision, with every probability and threshold
    assert bench_app.call_direct(direct, "/grade", EXAMPLES[1]) > 0
