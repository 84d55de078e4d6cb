"""The benchmark CLI: argument errors, the README table, and a real (small) measurement."""

import pytest

from drdemo import bench


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
