import copy

import pytest
import yaml

from conftest import ROOT
from robustlora.config import ParamError, load_params, parse_params


@pytest.fixture()
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _error(raw) -> str:
    with pytest.raises(ParamError) as e:
        parse_params(raw)
    return str(e.value)


def test_default_params_parse(raw):
    p = parse_params(raw)
    assert p.data.source == "synthetic"
    assert p.data.md5 == "90528d7ca1a48142e341f4ef8d21d0de"
    assert set(p.variants) >= {"baseline", "lora_fc", "lora_fc_conv1"}
    assert p.variant("lora_fc_conv1").targets == ("fc", "conv1")
    assert p.variant("lora_fc").rank == p.lora.rank
    assert p.variant("baseline").rank is None
    # ε written as fractions
    assert 8 / 255 in p.attack.pgd_eps and 0.5 in p.attack.pgd_eps


def test_holdout_out_of_range_names_the_key(raw):
    raw["data"]["holdout"] = 0.9
    assert _error(raw) == "params.yaml: data.holdout must be in [0, 0.5), got 0.9"


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("data", "source", "imagenet", "params.yaml: data.source must be one of synthetic, tiny-imagenet, got 'imagenet'"),
        ("data", "classes", 0, "data.classes must be in [1, inf]"),
        ("data", "classes", ["n01443537", "dog"], "data.classes must be a number of classes or a non-empty list of wnids"),
        ("data", "md5", "abc", "data.md5 must be 32 hex digits or null"),
        ("data", "train_per_class", "all", "data.train_per_class must be an integer or null"),
        ("train", "lr", -1, "train.lr must be in (0, inf]"),
        ("train", "momentum", 1.0, "train.momentum must be in [0, 1)"),
        ("train", "schedule", "linear", "train.schedule must be one of cosine, step"),
        ("train", "device", "tpu", "train.device must be auto, cpu, mps, cuda or cuda:N"),
        ("lora", "rank", 0, "lora.rank must be in [1, inf]"),
        ("lora", "rank", True, "lora.rank must be an integer"),
        ("model", "head", "fresh", "model.head must be one of pretrained, new"),
    ],
)
def test_bad_values_name_their_key(raw, section, key, value, expected):
    raw[section][key] = value
    assert expected in _error(raw)


def test_unknown_keys_and_sections_are_refused(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["learning_rate"] = 0.1
    assert "unknown key train.learning_rate" in _error(bad)
    bad = copy.deepcopy(raw)
    bad["trian"] = {}
    assert "unknown section trian" in _error(bad)


def test_attack_eps_and_step_size(raw):
    raw["attack"]["pgd"]["eps"] = ["8/255", 2]
    assert "attack.pgd.eps values must be numbers in [0, 1]" in _error(raw)
    raw["attack"]["pgd"]["eps"] = [0.1]
    raw["attack"]["pgd"]["step_size"] = 0.01
    assert "exactly one of step_size" in _error(raw)


def test_variants_are_validated(raw):
    raw["variants"]["odd"] = {"adaptation": "lora"}
    assert "variants.odd.targets must be a non-empty list" in _error(raw)
    raw["variants"]["odd"] = {"adaptation": "full", "targets": ["fc"]}
    assert "variants.odd.targets is only for adaptation: lora" in _error(raw)
    raw["variants"]["odd"] = {"adaptation": "prefix"}
    assert "variants.odd.adaptation must be one of full, lora, none" in _error(raw)


def test_pretrain_weights_need_the_synthetic_source(raw):
    raw["data"]["source"] = "tiny-imagenet"
    assert "model.weights 'pretrain'" in _error(raw)
    raw["model"]["weights"] = "imagenet"
    assert parse_params(raw).data.source == "tiny-imagenet"


def test_load_params_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
