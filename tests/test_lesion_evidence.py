"""drdemo.models.lesion_evidence and drdemo.train.lesion_evidence: the grade and DME risk read from a model's
own lesion maps, fitted after the network and blended with its probabilities."""

import json

import numpy as np
import pytest
import torch

from drdemo.checkpoint import load_model, read_config, record_grading
from drdemo.checkpoint.config import check_heads
from drdemo.data import load_samples
from drdemo.models import create_model
from drdemo.models.heads import MultiHeadNet
from drdemo.models.lesion_evidence import (
    STATISTICS_PER_TYPE,
    LesionEvidence,
    ProportionalOdds,
    blend,
    lesion_statistics,
)
from drdemo.tasks import DME_RISKS, LESION_TYPES
from drdemo.train import lesion_evidence as fitting

HEADS = {"grade_head": "softmax", "dme_classes": list(DME_RISKS), "lesion_types": list(LESION_TYPES)}


def _reference_statistics(maps: np.ndarray) -> np.ndarray:
    """The statistics written out in numpy, loop by loop, as the probe that chose them computed them."""
    rows = []
    for photo in maps:
        row = []
        for p in photo:
            h = p.shape[0]
            centre = (h - 1) / 2
            masses = [0.0] * 4
            rings = [0.0] * 3
            for y in range(h):
                for x in range(h):
                    masses[(2 if y >= centre else 0) + (1 if x >= centre else 0)] += p[y, x]
                    r = np.hypot(y - centre, x - centre) / (h / 2)
                    rings[0 if r < 0.25 else 1 if r < 0.5 else 2] += p[y, x]
            row += [np.log1p(p.mean() * 1000), np.log1p((p > 0.5).sum()), p.max()]
            row += sorted(np.log1p(masses)) + list(np.log1p(rings))
        rows.append(row)
    return np.asarray(rows)


@pytest.mark.parametrize("size", [7, 8])
def test_the_statistics_match_a_plain_numpy_reference(size):
    generator = np.random.default_rng(0)
    maps = generator.random((3, 2, size, size)).astype(np.float32) ** 3
    maps[1, 0, : size // 2] = 0.9                       # a lesion-heavy top half: quadrant order matters
    ours = lesion_statistics(torch.from_numpy(maps)).numpy()
    assert ours.shape == (3, 2 * STATISTICS_PER_TYPE)
    np.testing.assert_allclose(ours, _reference_statistics(maps), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, T, h, h\)"):
        lesion_statistics(torch.zeros(1, 2, 4, 5))


def test_more_and_wider_spread_lesions_raise_every_count():
    few, many = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    few[0, 0, 2, 2] = 0.9
    many[0, 0, ::5, ::5] = 0.9
    few_stats, many_stats = lesion_statistics(few)[0], lesion_statistics(many)[0]
    assert many_stats[1] > few_stats[1]                 # cells over 0.5
    assert many_stats[3] > 0 == few_stats[3]            # the least affected quadrant has lesions only when spread


def test_blend_is_a_weighted_geometric_mean_of_the_two_distributions():
    network, evidence = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[-1.0, 0.5, 3.0]])
    assert torch.allclose(blend(network, evidence, 0.0).softmax(-1), network.softmax(-1))
    assert torch.allclose(blend(network, evidence, 1.0).softmax(-1), evidence.softmax(-1))
    expected = network.softmax(-1) ** 0.4 * evidence.softmax(-1) ** 0.6
    assert torch.allclose(blend(network, evidence, 0.6).softmax(-1), expected / expected.sum())


def test_a_model_with_evidence_serves_the_blend_and_keeps_its_own_heads_for_training(one_torch_thread):
    torch.manual_seed(0)
    plain = create_model("resnet50", heads=HEADS).eval()
    weighted = create_model("resnet50", heads={**HEADS, "lesion_evidence_weight": 0.3}).eval()
    assert plain.lesion_evidence is None and isinstance(weighted.lesion_evidence, LesionEvidence)
    weighted.load_state_dict({**plain.state_dict(), **{f"lesion_evidence.{k}": v for k, v in
                                                       weighted.lesion_evidence.state_dict().items()}})
    with torch.no_grad():
        torch.nn.init.normal_(weighted.lesion_evidence.grade.weight)
        photo = torch.randn(2, 3, 64, 64)
        base, served = plain(photo), weighted(photo)
        grade_evidence, dme_evidence = weighted.lesion_evidence(torch.sigmoid(base.lesion_logits))
    assert torch.equal(served.softmax_logits, base.softmax_logits) and torch.equal(served.features, base.features)
    assert torch.allclose(served.logits, blend(base.logits, grade_evidence, 0.3), atol=1e-6)
    assert torch.allclose(served.dme_logits, blend(base.dme_logits, dme_evidence, 0.3), atol=1e-6)
    assert not torch.allclose(served.logits.softmax(-1), base.logits.softmax(-1), atol=1e-3)


@pytest.mark.parametrize("weight", [0, 1.5, "0.5", True])
def test_a_bad_evidence_weight_is_named(weight):
    assert "lesion_evidence_weight" in check_heads({**HEADS, "lesion_evidence_weight": weight}, 5, "icdr5")
    with pytest.raises((ValueError, TypeError)):
        MultiHeadNet(torch.nn.Identity(), "fc", ["x"], [1], False, 5, 3, 4, lesion_evidence_weight=weight)
    assert check_heads({**HEADS, "lesion_evidence_weight": 0.6}, 5, "icdr5") is None


def test_proportional_odds_matches_a_plain_numpy_reference_and_orders_the_grades():
    module = ProportionalOdds(3, 5)
    with torch.no_grad():
        module.direction.copy_(torch.tensor([1.0, -0.5, 0.25]))
        module.thresholds.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0], [-4.0, 1.0, 0.0]])
    scores = x.double().numpy() @ np.array([1.0, -0.5, 0.25])
    above = 1 / (1 + np.exp(-(scores[:, None] - np.array([-1.0, 0.0, 0.5, 2.0])[None])))
    expected = np.concatenate([np.ones((3, 1)), above], 1) - np.concatenate([above, np.zeros((3, 1))], 1)
    with torch.no_grad():
        log_probabilities = module(x)
    np.testing.assert_allclose(log_probabilities.exp().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert log_probabilities.dtype == torch.float32
    expected_grade = (log_probabilities.exp() * torch.arange(5)).sum(1)
    assert expected_grade[2] < expected_grade[0] < expected_grade[1]      # the grades follow the direction


def test_the_ordinal_fit_recovers_the_direction_and_serves_what_it_fitted():
    generator = np.random.default_rng(4)
    statistics = generator.normal(size=(2000, len(LESION_TYPES) * STATISTICS_PER_TYPE))
    truth = np.zeros(statistics.shape[1])
    truth[:3] = [1.5, -1.0, 0.5]
    latent = statistics @ truth + generator.logistic(size=2000)
    grades = np.digitize(latent, [-2.0, -1.0, 1.0, 2.0])
    grade_fit, choice = fitting.fit_regression(statistics, grades, 5, regression="proportional_odds")
    regression = grade_fit[-1]
    assert isinstance(regression, fitting.ProportionalOddsRegression) and choice["strength"] in fitting.STRENGTHS
    direction = regression.direction_ * grade_fit[0].scale_ ** -1          # back to the unscaled statistics
    assert direction @ truth / np.linalg.norm(direction) / np.linalg.norm(truth) > 0.95
    assert np.all(np.diff(regression.thresholds_) > 0)
    np.testing.assert_allclose(grade_fit.predict_proba(statistics).sum(1), 1.0, atol=1e-9)
    dme_fit, _ = fitting.fit_regression(statistics, grades % 3, 3)
    module = fitting.evidence_module(grade_fit, dme_fit, len(LESION_TYPES))
    assert isinstance(module.grade, ProportionalOdds)
    with torch.no_grad():
        grade, _ = module.read(torch.from_numpy(statistics).float())
    np.testing.assert_allclose(grade.numpy(), grade_fit.predict_log_proba(statistics), atol=1e-4)
    with pytest.raises(fitting.LesionEvidenceError, match="must be one of multinomial, proportional_odds"):
        fitting.fit_regression(statistics, grades, 5, regression="ordinal")


def test_a_checkpoint_names_its_grade_regression_and_a_bad_one_is_named(one_torch_thread):
    ordinal = {**HEADS, "lesion_evidence_weight": 0.5, "lesion_evidence_grade": "proportional_odds"}
    assert check_heads(ordinal, 5, "icdr5") is None
    model = create_model("resnet50", heads=ordinal)
    assert isinstance(model.lesion_evidence.grade, ProportionalOdds)
    assert isinstance(create_model("resnet50", heads={**HEADS, "lesion_evidence_weight": 0.5}).lesion_evidence.grade,
                      torch.nn.Linear)                                  # absent: multinomial, as every earlier one
    assert "must be one of multinomial, proportional_odds" in check_heads({**ordinal, "lesion_evidence_grade": "x"},
                                                                          5, "icdr5")
    no_weight = {k: v for k, v in ordinal.items() if k != "lesion_evidence_weight"}
    assert "needs heads.lesion_evidence_weight" in check_heads(no_weight, 5, "icdr5")
    with pytest.raises(ValueError, match="grade_regression"):
        LesionEvidence(4, 5, 3, "ordinal")


def _labelled_statistics(generator, n, informative=True):
    """Statistics whose first column shifts with the grade and second with the DME risk (noise otherwise)."""
    grades, risks = np.arange(n) % 5, np.arange(n) % 3
    statistics = generator.normal(size=(n, len(LESION_TYPES) * STATISTICS_PER_TYPE))
    if informative:
        statistics[:, 0] += 2.0 * grades
        statistics[:, 1] += 3.0 * risks
    return statistics, grades, risks


def test_the_fitted_module_computes_what_the_fitted_regressions_predict():
    generator = np.random.default_rng(1)
    statistics, grades, risks = _labelled_statistics(generator, 60)
    grade_fit, choice = fitting.fit_regression(statistics, grades, 5)
    dme_fit, _ = fitting.fit_regression(statistics, risks, 3)
    assert choice["strength"] in fitting.STRENGTHS and set(choice["cross_validated_log_loss"]) == set(fitting.STRENGTHS)
    module = fitting.evidence_module(grade_fit, dme_fit, len(LESION_TYPES))
    with torch.no_grad():
        grade, dme = module.read(torch.from_numpy(statistics).float())
    np.testing.assert_allclose(grade.log_softmax(-1).numpy(), grade_fit.predict_log_proba(statistics), atol=1e-4)
    np.testing.assert_allclose(dme.log_softmax(-1).numpy(), dme_fit.predict_log_proba(statistics), atol=1e-4)
    with pytest.raises(fitting.LesionEvidenceError, match=r"no example of class \[4\]"):
        fitting.fit_regression(statistics[grades < 4], grades[grades < 4], 5)


def test_views_of_one_photo_never_score_each_other_when_the_strength_is_chosen():
    # Labels without any signal, each photo's statistics repeated as its "views": folds that split a photo's views
    # reward memorising them (the weakest L2), folds grouped by photo see that nothing generalises (the strongest).
    generator = np.random.default_rng(3)
    statistics, grades = generator.normal(size=(60, 40)), np.arange(60) % 5
    generator.shuffle(grades)
    views, labels, photos = np.tile(statistics, (4, 1)), np.tile(grades, 4), np.tile(np.arange(60), 4)
    assert fitting.fit_regression(views, labels, 5)[1]["strength"] == max(fitting.STRENGTHS)
    assert fitting.fit_regression(views, labels, 5, photos=photos)[1]["strength"] == min(fitting.STRENGTHS)


def test_the_weight_follows_the_validation_log_loss():
    generator = np.random.default_rng(2)
    statistics, grades, risks = _labelled_statistics(generator, 80)
    module = fitting.evidence_module(fitting.fit_regression(statistics, grades, 5)[0],
                                     fitting.fit_regression(statistics, risks, 3)[0], len(LESION_TYPES))
    val_statistics, val_grades, val_risks = _labelled_statistics(generator, 40)
    noise = {"statistics": val_statistics, "grade": generator.normal(size=(40, 5)).astype(np.float32),
             "dme": generator.normal(size=(40, 3)).astype(np.float32)}
    weight, tried = fitting.choose_weight(module, noise, val_grades, val_risks)
    assert weight >= 0.8 and [t["weight"] for t in tried] == [0.0, *fitting.BLEND_WEIGHTS]
    perfect = dict(noise, grade=np.eye(5, dtype=np.float32)[val_grades] * 20,
                   dme=np.eye(3, dtype=np.float32)[val_risks] * 20)
    with pytest.raises(fitting.LesionEvidenceError, match="network alone is better"):
        fitting.choose_weight(module, perfect, val_grades, val_risks)


def _grading_folder(root, n_train=30):
    """IDRiD's grading layout: `n_train` training photos, grades and DME risks cycling, two test photos."""
    from PIL import Image

    labels = root / "2. Groundtruths"
    labels.mkdir(parents=True)
    rows = "".join(f"IDRiD_{i:03d},{i % 5},{i % 3},,,,,,,,,\r\n" for i in range(1, n_train + 1))
    (labels / "a. IDRiD_Disease Grading_Training Labels.csv").write_bytes(
        ("Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,,\r\n" + rows + "\r\n").encode())
    (labels / "b. IDRiD_Disease Grading_Testing Labels.csv").write_bytes(
        b"Image name,Retinopathy grade,Risk of macular edema \r\nIDRiD_001,4,0\r\nIDRiD_002,1,0\r\n")
    generator = np.random.default_rng(0)
    for folder, count in (("a. Training Set", n_train), ("b. Testing Set", 2)):
        (root / "1. Original Images" / folder).mkdir(parents=True)
        for i in range(1, count + 1):
            pixels = np.zeros((48, 64, 3), np.uint8)
            yy, xx = np.mgrid[:48, :64]
            pixels[(yy - 24) ** 2 + (xx - 32) ** 2 < 22 ** 2] = (150, 70, 30)
            pixels = np.clip(pixels + generator.integers(0, 30, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "1. Original Images" / folder / f"IDRiD_{i:03d}.jpg")
    return root


def _split_source(tmp_path, untrained_checkpoint):
    """An untrained three-head checkpoint whose split.json holds 20 training and 10 validation photos of a small
    grading folder; returns (checkpoint folder, grading folder, training photo ids)."""
    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    data = _grading_folder(tmp_path / "B. Disease Grading")
    ids = [f"IDRiD_{i:03d}" for i in range(1, 31)]
    (source / "training").mkdir(exist_ok=True)
    (source / "training" / "split.json").write_text(json.dumps({"parts": {"train": ids[:20], "val": ids[20:]},
                                                                "data": str(data)}))
    return source, data, ids[:20]


def _informative_outputs(monkeypatch, seen: list):
    """Make the fit see the real network's outputs with statistics that carry the labels, each call's photo count
    and augmented seed appended to `seen`."""
    real_outputs = fitting.network_outputs

    def informative(loaded, samples, augmented_seed=None):
        outputs = real_outputs(loaded, samples, augmented_seed)
        seen.append((len(samples), augmented_seed))
        grades, risks = np.asarray([s.grade for s in samples]), np.asarray([s.dme for s in samples])
        outputs["statistics"][:, 0] = 2.0 * grades + np.random.default_rng(len(samples)).normal(size=len(samples))
        outputs["statistics"][:, 1] = 3.0 * risks
        return outputs

    monkeypatch.setattr(fitting, "network_outputs", informative)


def test_the_cli_writes_a_checkpoint_that_serves_the_blend_and_drops_the_sources_evaluations(
        tmp_path, untrained_checkpoint, one_torch_thread, monkeypatch):
    source, _, _ = _split_source(tmp_path, untrained_checkpoint)
    record_grading(source, {"qwk": 0.61, "accuracy": 0.57, "n": 103, "confusion_matrix": [[1]]},
                   "103 photos of IDRiD's test part", "evaluate")
    seen = []
    _informative_outputs(monkeypatch, seen)
    out = tmp_path / "with_evidence"
    assert fitting.main(["--checkpoint", str(source), "--out", str(out)]) == 0
    assert seen == [(20, None), (10, None)]
    config = read_config(out)
    weight = config.heads["lesion_evidence_weight"]
    assert weight in fitting.BLEND_WEIGHTS and "lesion_evidence_weight" not in read_config(source).heads
    stage = config.provenance
    assert stage["initialised_from"] == str(source) and stage["lesion_evidence"]["weight"] == weight
    assert stage["lesion_evidence"]["training_photos"] == 20 and len(stage["lesion_evidence"]["validation"]) == 11
    assert (source / "eval" / "test.json").exists() and not list(out.glob("eval/*.json"))
    assert config.metrics == {} and config.cam_evaluation == {}
    assert f"against what its lesion maps show ({weight:.0%})" in (out / "README.md").read_text()
    served, original = load_model(out, device="cpu").model, load_model(source, device="cpu").model
    photo = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base, blended = original(photo), served(photo)
        grade_evidence, _ = served.lesion_evidence(torch.sigmoid(base.lesion_logits))
    assert torch.equal(blended.softmax_logits, base.softmax_logits)
    assert torch.allclose(blended.logits, blend(base.logits, grade_evidence, weight), atol=1e-5)
    assert fitting.main(["--checkpoint", str(out), "--out", str(tmp_path / "again")]) == 2   # already weighed


def test_the_cli_fits_reproducible_augmented_views_or_an_ordinal_grade_and_records_which(
        tmp_path, untrained_checkpoint, one_torch_thread, monkeypatch):
    source, data, ids = _split_source(tmp_path, untrained_checkpoint)
    loaded = load_model(source, device="cpu")
    photos = [s for s in load_samples(data, "idrid", part="train") if s.image_id in ids]
    served = fitting.network_outputs(loaded, photos)["statistics"]
    first, again = (fitting.network_outputs(loaded, photos, augmented_seed=1000)["statistics"] for _ in range(2))
    other = fitting.network_outputs(loaded, photos, augmented_seed=1001)["statistics"]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, served) and not np.allclose(first, other)

    seen = []
    _informative_outputs(monkeypatch, seen)
    out = tmp_path / "with_evidence"
    assert fitting.main(["--checkpoint", str(source), "--out", str(out), "--augmented-views", "2", "--seed", "5"]) == 0
    assert seen == [(20, None), (10, None), (20, 6000), (20, 6001)]
    recipe = read_config(out).provenance["recipe"]
    assert recipe["augmented_views"] == 2 and "seeded 6000..6001" in recipe["augmentation"]
    assert "grouped by photo" in recipe["augmentation"]

    ordinal = tmp_path / "ordinal"
    assert fitting.main(["--checkpoint", str(source), "--out", str(ordinal), "--grade-regression",
                         "proportional_odds"]) == 0
    config = read_config(ordinal)
    assert config.heads["lesion_evidence_grade"] == "proportional_odds"
    assert config.provenance["recipe"]["grade_regression"] == "proportional_odds"
    assert isinstance(load_model(ordinal, device="cpu").model.lesion_evidence.grade, ProportionalOdds)
    assert "an ordinal (proportional-odds) logistic regression for the grade" in (ordinal / "README.md").read_text()


def test_bad_arguments_get_a_message_not_a_traceback(tmp_path, untrained_checkpoint, capsys):
    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    assert fitting.main(["--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "split.json is missing" in capsys.readouterr().err
    single = untrained_checkpoint(tmp_path / "single", "resnet50", input_size=64)
    assert fitting.main(["--checkpoint", str(single), "--out", str(tmp_path / "out")]) == 2
    assert "single-head" in capsys.readouterr().err
    assert fitting.main(["--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fitting.main(["--checkpoint", str(source), "--out", str(tmp_path / "out"), "--augmented-views", "-1"])
    assert "--augmented-views is a count of views" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fitting.main(["--checkpoint", str(source), "--out", str(source)])
    assert "new folder" in capsys.readouterr().err
    from dataclasses import replace

    from drdemo.checkpoint.io import write_config
    write_config(source, replace(read_config(source), calibration={"temperature": 1.5, "logit_bias": [0.0] * 5}))
    assert fitting.main(["--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "uncalibrated checkpoint, then calibrate" in capsys.readouterr().err


def test_a_new_lesion_decoder_or_a_soup_refuses_a_checkpoint_whose_grades_read_its_maps(tmp_path,
                                                                                      untrained_checkpoint):
    from dataclasses import replace

    from drdemo.checkpoint import CheckpointError
    from drdemo.checkpoint.io import read_weights
    from drdemo.train.lesion_head import LesionHeadError, refit_model
    from drdemo.train.soup import check_ingredients

    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    config = read_config(source)
    weighted = replace(config, heads={**config.heads, "lesion_evidence_weight": 0.6})
    with pytest.raises(LesionHeadError, match="lesion_evidence_weight"):
        refit_model(weighted, read_weights(source), ["layer1"])
    with pytest.raises(CheckpointError, match="fit the soup's evidence"):
        check_ingredients([config, weighted], ["a", "b"])
