"""drdemo.train.soup: the weighted mean of state dicts, and a soup checkpoint that loads, grades like the
average of its ingredients' weights, keeps their validation part, and refuses what is no soup."""

import json

import pytest
import torch

from drdemo.checkpoint import CheckpointConfig, CheckpointError, load_model, save_checkpoint
from drdemo.models import create_model
from drdemo.train.soup import average_states, main, make_soup

START = {"source": "the same ImageNet weights", "credit": "test"}
SPLIT = {"data": "d", "layout": "idrid", "part": "train", "seed": 0, "parts": {"train": ["a", "b"], "val": ["c"]}}


def _ingredient(folder, seed, start=START, split=SPLIT, input_size=224, init=None):
    """A MedMamba-T checkpoint 'fine-tuned' (seeded random weights) from pretrained weights `start` or the
    checkpoint whose provenance is `init`, with its split.json."""
    torch.manual_seed(seed)
    provenance = {"trained": True, "seed": seed, "command": f"train --seed {seed}", "best_epoch": seed,
                  "data": "IDRiD ...", **({"pretrained": start} if start else {}),
                  **({"initialised_from_provenance": init} if init else {})}
    save_checkpoint(create_model("medmamba_t").eval(), CheckpointConfig.for_architecture(
        "medmamba_t", input_size=input_size, provenance=provenance, referable_threshold=0.3), folder,
        dtype=torch.float32)
    (folder / "training").mkdir(exist_ok=True)
    (folder / "training" / "split.json").write_text(json.dumps(split))
    return folder


def test_average_states_is_the_weighted_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([2.0, 8.0]), "n": torch.tensor(9)}
    assert torch.equal(average_states([a, b])["w"], torch.tensor([1.0, 6.0]))
    assert torch.equal(average_states([a, b], weights=[3, 1])["w"], torch.tensor([0.5, 5.0]))
    assert average_states([a, b])["n"].item() == 7 and average_states([a, b])["n"].dtype == torch.int64
    with pytest.raises(ValueError, match="other tensors"):
        average_states([a, {"w": b["w"]}])
    with pytest.raises(ValueError, match="shapes differ"):
        average_states([a, {"w": torch.zeros(3), "n": b["n"]}])
    with pytest.raises(ValueError, match="non-negative"):
        average_states([a, b], weights=[1, -1])


def test_a_soup_loads_with_the_averaged_weights_and_the_ingredients_split(tmp_path):
    first, second = _ingredient(tmp_path / "a", 1), _ingredient(tmp_path / "b", 2)
    config = make_soup([first, second], tmp_path / "soup", weights=[1, 3], command="soup a b")
    soup, one, two = (load_model(folder, device="cpu").model for folder in (tmp_path / "soup", first, second))
    weights = dict(soup.named_parameters())
    for name, parameter in one.named_parameters():
        expected = 0.25 * parameter + 0.75 * dict(two.named_parameters())[name]
        assert torch.allclose(weights[name], expected, atol=2e-3 * expected.abs().max().item() + 1e-6), name
    assert json.loads((tmp_path / "soup" / "training" / "split.json").read_text())["parts"] == SPLIT["parts"]
    # choices made on the ingredients' validation do not carry over to the average
    assert config.referable_threshold == 0.5 and not config.metrics
    assert config.provenance["seed"] == [1, 2]
    assert [i["weight"] for i in config.provenance["soup"]["ingredients"]] == [0.25, 0.75]
    assert config.provenance["pretrained"] == START
    card = (tmp_path / "soup" / "README.md").read_text()
    assert "average of 2 checkpoints" in card and "train --seed 2" in card


def test_random_starts_other_splits_and_other_contracts_are_refused(tmp_path):
    good = _ingredient(tmp_path / "good", 1)
    with pytest.raises(CheckpointError, match="same pretrained weights"):
        make_soup([good, _ingredient(tmp_path / "scratch", 2, start=None)], tmp_path / "s1")
    other_split = {**SPLIT, "parts": {"train": ["a", "c"], "val": ["b"]}}
    with pytest.raises(CheckpointError, match="different photos"):
        make_soup([good, _ingredient(tmp_path / "split", 3, split=other_split)], tmp_path / "s2")
    with pytest.raises(CheckpointError, match="input_size"):
        make_soup([good, _ingredient(tmp_path / "size", 4, input_size=256)], tmp_path / "s3")
    init = {"trained": True, "seed": 0, "command": "train from scratch"}
    with pytest.raises(CheckpointError, match="same checkpoint"):
        make_soup([_ingredient(tmp_path / "i1", 5, start=None, init=init),
                   _ingredient(tmp_path / "i2", 6, start=None, init={**init, "seed": 1})], tmp_path / "s4")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()


def test_runs_started_from_one_checkpoint_make_a_soup(tmp_path):
    init = {"trained": True, "seed": 0, "command": "train from scratch"}
    config = make_soup([_ingredient(tmp_path / "a", 1, start=None, init=init),
                        _ingredient(tmp_path / "b", 2, start=None, init=init)], tmp_path / "soup")
    assert len(config.provenance["soup"]["ingredients"]) == 2


def test_the_command_line_explains_bad_arguments(tmp_path, capsys):
    good = _ingredient(tmp_path / "good", 1)
    with pytest.raises(SystemExit):
        main([str(good), "--out", str(tmp_path / "x")])
    assert "at least two" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(good), str(good), "--out", str(tmp_path / "x"), "--weights", "1"])
    assert "--weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(good), str(good), "--out", str(good)])
    assert "new folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(good), str(good), "--out", str(tmp_path)])
    assert "not empty" in capsys.readouterr().err
    assert main([str(good), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err


def test_the_served_grade_head_is_a_choice_not_the_network():
    from drdemo.tasks import DME_RISKS, LESION_TYPES
    from drdemo.train.soup import check_ingredients

    def config(**heads):
        heads = {"grade_head": "softmax", "dme_classes": list(DME_RISKS), "lesion_types": list(LESION_TYPES), **heads}
        return CheckpointConfig.for_architecture("medmamba_t", heads=heads, cam_target_layer="backbone.layers.3",
                                                 provenance={"trained": True, "pretrained": START})

    check_ingredients([config(), config(grade_head="ordinal")], ["a", "b"])   # both heads are in both networks
    with pytest.raises(CheckpointError, match="heads"):
        check_ingredients([config(), config(lesion_types=["microaneurysm"])], ["a", "b"])
    # a checkpoint from before lesion layers were named reads the default one: the same network as one naming it
    check_ingredients([config(), config(lesion_layers=["layers.0"])], ["a", "b"])
    with pytest.raises(CheckpointError, match="heads"):
        check_ingredients([config(), config(lesion_layers=["patch_embed", "layers.0"])], ["a", "b"])
