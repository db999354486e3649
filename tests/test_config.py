import json

import pytest
import yaml

from robustlora.config import (TARGET_SETS, AttackConfig, FullSettings, LoraSettings, ParamError, PgdConfig,
                               TrainConfig, VariantSpec, load_params, parse_params, to_dict)
from robustlora.errors import RobustloraError

# the schema of the study's params.yaml (the values are the lead's; the tests need only a valid, complete file)
PARAMS = """
data:
  source: synthetic
  url: http://cs231n.stanford.edu/tiny-imagenet-200.zip
  md5: 90528D7CA1A48142E341F4EF8D21D0DE
  classes: 10
  train_per_class: null
  val_per_class: null
  holdout: 0.1
  seed: 0
  synthetic: {seed: 0, image_size: 64, source_classes: 16, target_classes: 10, shift: 0.6}
model: {arch: resnet18, weights: pretrain, head: pretrained, input_size: 32}
pretrain: {lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, schedule: cosine, batch_size: 64, max_epochs: 10,
           patience: 3, crop_padding: 4, flip: true, seed: 0, device: auto}
train:
  momentum: 0.9
  schedule: cosine
  step_size: 10
  gamma: 0.1
  batch_size: 64
  max_epochs: 15
  patience: 5
  crop_padding: 4
  flip: true
  seeds: [0, 1, 2]
  device: auto
  eval_batch_size: 256
full: {lr: 0.01, weight_decay: 5.0e-4, train_batchnorm: true}
lora: {lr: 0.05, weight_decay: 0.0, rank: 4, alpha: 1.0}
none: {}
variants:
  pretrained: {adaptation: none}
  baseline: {adaptation: full}
  baseline_frozen_bn: {adaptation: full, train_batchnorm: false}
  lora_fc: {adaptation: lora, targets: [fc]}
  lora_fc_conv1: {adaptation: lora, targets: [fc, conv1]}
attack:
  n_images: 300
  batch_size: 100
  seed: 0
  device: auto
  eps: [16/255, 1/255, 2/255, 4/255, 8/255, 8/255]
  pgd: {steps: 10, rel_step_size: 0.25, random_start: true, restarts: 1, sanity_eps: 0.5}
report:
  eps: 8/255
  reference_fgsm_asr: 0.65
  tolerance: 0.10
  alpha: 0.05
  n_boot: 2000
  seed: 0
  arms: {baseline: baseline, lora_fc: lora_fc, lora_fc_conv1: lora_fc_conv1}
mlflow: {experiment: robustlora}
"""


@pytest.fixture()
def raw():
    return yaml.safe_load(PARAMS)


def _error(raw) -> str:
    with pytest.raises(ParamError) as e:
        parse_params(raw)
    assert isinstance(e.value, RobustloraError) and "\n" not in str(e.value)
    return str(e.value)


def test_params_parse(raw):
    p = parse_params(raw)
    assert p.data.source == "synthetic"
    assert p.data.md5 == "90528d7ca1a48142e341f4ef8d21d0de"  # lower-cased
    assert p.data.synthetic.shift == 0.6 and p.data.synthetic.test_images == 20  # unset keys take the defaults
    assert p.train.seeds == (0, 1, 2)
    assert list(p.variants) == ["pretrained", "baseline", "baseline_frozen_bn", "lora_fc", "lora_fc_conv1"]
    assert p.variant("lora_fc_conv1").targets == ("fc", "conv1")
    assert (p.variant("lora_fc").rank, p.variant("lora_fc").alpha) == (4, 1.0)
    assert p.variant("baseline").rank is None and p.variant("pretrained").alpha is None
    # ε written as fractions; the grid sorted and without repeats
    assert p.attack.eps == tuple(k / 255 for k in (1, 2, 4, 8, 16))
    assert p.report.eps == 8 / 255 and p.attack.pgd.sanity_eps == 0.5
    assert p.report.arms == {"baseline": "baseline", "lora_fc": "lora_fc", "lora_fc_conv1": "lora_fc_conv1"}
    assert p.report.equivalence_margin == 0.05  # not in this file: the default, 5 points


def test_variant_overrides_resolve_the_kind_settings(raw):
    raw["variants"]["lora_r8"] = {"adaptation": "lora", "targets": ["layer*.*.conv*"], "rank": 8, "lr": "1e-3"}
    p = parse_params(raw)
    assert p.variant("baseline").settings == FullSettings(lr=0.01, weight_decay=5e-4, train_batchnorm=True)
    assert p.variant("baseline_frozen_bn").settings.train_batchnorm is False
    assert p.variant("baseline_frozen_bn").settings.lr == 0.01  # the rest comes from the full section
    assert p.variant("lora_r8").settings == LoraSettings(lr=1e-3, weight_decay=0.0, rank=8, alpha=1.0)
    assert p.lora.rank == 4  # the section itself is unchanged


def test_fit_config_joins_the_loop_the_kind_and_the_seed(raw):
    raw["lora"]["lr"] = 0.2
    p = parse_params(raw)
    cfg = p.fit_config("lora_fc", seed=2)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.lr, cfg.weight_decay, cfg.seed, cfg.max_epochs, cfg.eval_batch_size) == (0.2, 0.0, 2, 15, 256)
    assert p.fit_config("baseline", seed=0).lr == 0.01
    with pytest.raises(ParamError, match=r"seed 7 is not in train.seeds \[0, 1, 2\]"):
        p.fit_config("baseline", seed=7)
    with pytest.raises(ParamError, match="variants.pretrained .adaptation: none. trains nothing"):
        p.fit_config("pretrained", seed=0)
    with pytest.raises(ParamError, match=r"^params.yaml: no variant 'nope' under variants \(have: pretrained, "):
        p.variant("nope")


def test_holdout_out_of_range_names_the_key(raw):
    raw["data"]["holdout"] = 0.9
    assert _error(raw) == "params.yaml: data.holdout must be in [0, 0.5), got 0.9"


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("data", "source", "imagenet", "params.yaml: data.source must be one of synthetic, tiny-imagenet, got 'imagenet'"),
        ("data", "classes", 0, "params.yaml: data.classes must be in [1, inf], got 0"),
        ("data", "classes", ["n01443537", "a/b"], "data.classes must be a number of classes or a non-empty list of class folder names"),
        ("data", "classes", ["n01443537", "n01443537"], "data.classes must not repeat a wnid"),
        ("data", "md5", "abc", "data.md5 must be 32 hex digits or null, got 'abc'"),
        ("data", "train_per_class", "all", "params.yaml: data.train_per_class must be an integer or null, got 'all'"),
        ("data", "seed", 1.5, "data.seed must be an integer, got 1.5"),
        ("data", "synthetic", [], "params.yaml: data.synthetic must be a mapping, got []"),
        ("full", "lr", -1, "params.yaml: full.lr must be in (0, inf], got -1"),
        ("lora", "lr", "fast", "params.yaml: lora.lr must be a finite number, got 'fast'"),
        ("lora", "alpha", ".nan", "lora.alpha must be a finite number"),
        ("full", "train_batchnorm", "yes", "params.yaml: full.train_batchnorm must be true or false, got 'yes'"),
        ("train", "momentum", 1.0, "params.yaml: train.momentum must be in [0, 1), got 1.0"),
        ("train", "schedule", "linear", "train.schedule must be one of cosine, step"),
        ("train", "device", "tpu", "params.yaml: train.device must be auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
        ("train", "seeds", [0, 0], "train.seeds must be a non-empty list of distinct integers >= 0, got [0, 0]"),
        ("train", "seeds", [], "train.seeds must be a non-empty list of distinct integers >= 0"),
        ("pretrain", "device", "cuda:x", "pretrain.device must be auto, cpu, mps, cuda or cuda:N"),
        ("lora", "rank", 0, "params.yaml: lora.rank must be in [1, inf], got 0"),
        ("lora", "rank", True, "params.yaml: lora.rank must be an integer, got True"),
        ("model", "head", "fresh", "model.head must be one of pretrained, new"),
        ("model", "weights", "", "model.weights must be a non-empty string"),
        ("report", "alpha", 1, "params.yaml: report.alpha must be in (0, 1), got 1"),
        ("report", "equivalence_margin", 0, "params.yaml: report.equivalence_margin must be in (0, 1), got 0"),
        ("attack", "n_images", 0, "params.yaml: attack.n_images must be in [1, inf], got 0"),
    ],
)
def test_bad_values_name_their_key(raw, section, key, value, expected):
    raw[section][key] = value
    assert expected in _error(raw)


def test_integers_are_not_floats_and_floats_not_strings(raw):
    raw["train"]["max_epochs"] = "15"
    assert _error(raw) == "params.yaml: train.max_epochs must be an integer, got '15'"
    raw = yaml.safe_load(PARAMS)
    raw["full"]["weight_decay"] = "1e-4"  # YAML 1.1 reads 1e-4 (no dot) as a string
    raw["full"]["lr"] = 1  # an integer is a fine float
    p = parse_params(raw)
    assert (p.full.weight_decay, p.full.lr) == (1e-4, 1.0)


def test_unknown_keys_and_sections_are_refused(raw):
    raw["train"]["lr"] = 0.1  # moved to full.lr / lora.lr
    assert _error(raw).startswith("params.yaml: unknown key train.lr (known: momentum, schedule, ")
    raw = yaml.safe_load(PARAMS)
    raw["data"]["synthetic"]["colours"] = 3
    assert "unknown key data.synthetic.colours (known: seed, image_size," in _error(raw)
    raw = yaml.safe_load(PARAMS)
    raw["none"] = {"lr": 0.1}
    assert _error(raw) == "params.yaml: unknown key none.lr (known: none: it takes no keys)"
    raw = yaml.safe_load(PARAMS)
    raw["trian"] = {}
    assert _error(raw).startswith("params.yaml: unknown section trian (known: data, model, pretrain, train, full,")


def test_missing_sections_take_their_defaults_but_variants_are_required():
    variants = {"baseline": {"adaptation": "full"}, "lora_fc": {"adaptation": "lora", "targets": ["fc"]},
                "lora_fc_conv1": {"adaptation": "lora", "targets": ["fc", "conv1"]}}
    p = parse_params({"variants": variants, "data": None})
    assert p.data.holdout == 0.1 and p.attack.pgd.step_for(8 / 255) == 0.25 * 8 / 255
    assert _error({"data": {}}) == "params.yaml: variants is missing"
    assert "variants must be a non-empty mapping of name -> spec" in _error({"variants": {}})
    with pytest.raises(ParamError, match="params.yaml must be a mapping of sections, got list"):
        parse_params([])


def test_attack_eps_and_step_size(raw):
    raw["attack"]["eps"] = ["8/255", 2]
    assert _error(raw) == ("params.yaml: attack.eps values must be numbers in [0, 1] pixel units "
                           "(write 8/255 for 8 grey levels), got 2")
    raw["attack"]["eps"] = ["8/255", "8/0"]
    assert "got '8/0'" in _error(raw)
    raw["attack"]["eps"] = [8 / 255]
    raw["attack"]["pgd"]["step_size"] = 0.01
    assert _error(raw) == ("params.yaml: attack.pgd needs exactly one of step_size (absolute, [0,1] pixels) "
                           "or rel_step_size (fraction of ε)")
    del raw["attack"]["pgd"]["rel_step_size"]
    raw["attack"]["pgd"]["sanity_eps"] = None
    pgd = parse_params(raw).attack.pgd
    assert pgd.step_for(8 / 255) == pgd.step_for(0.5) == 0.01 and pgd.sanity_eps is None
    raw["attack"]["pgd"]["step_size"] = 2
    assert _error(raw) == "params.yaml: attack.pgd.step_size must be in (0, 1], got 2"


def test_pgd_step_scales_with_eps():
    pgd = PgdConfig(rel_step_size=0.25)
    assert pgd.step_for(8 / 255) == pytest.approx(2 / 255)
    assert AttackConfig(pgd=pgd).eps == tuple(k / 255 for k in (1, 2, 4, 8, 16))


def test_variants_are_validated(raw):
    raw["variants"]["odd"] = {"adaptation": "lora"}
    assert _error(raw) == ("params.yaml: variants.odd.targets must be a non-empty list of layer names or glob "
                           "patterns, got []")
    raw["variants"]["odd"] = {"adaptation": "full", "targets": ["fc"]}
    assert _error(raw) == "params.yaml: variants.odd.targets is only for adaptation: lora (this variant is full), got ['fc']"
    raw["variants"]["odd"] = {"adaptation": "prefix", "rank": 3}
    assert _error(raw) == "params.yaml: variants.odd.adaptation must be one of full, lora, none, got 'prefix'"
    raw["variants"]["odd"] = {"targets": ["fc"]}
    assert _error(raw) == "params.yaml: variants.odd.adaptation is missing"
    raw["variants"]["odd"] = "lora"
    assert _error(raw) == "params.yaml: variants.odd must be a mapping, got 'lora'"
    raw["variants"]["odd"] = {"adaptation": "lora", "targets": ["fc", ""]}
    assert "variants.odd.targets.1 must be a non-empty string" in _error(raw)
    del raw["variants"]["odd"]
    raw["variants"]["bad name"] = {"adaptation": "none"}
    assert "variants.bad name is not a valid name" in _error(raw)


def test_variant_overrides_must_be_keys_of_their_kind(raw):
    raw["variants"]["odd"] = {"adaptation": "full", "rank": 8}
    assert _error(raw) == ("params.yaml: unknown key variants.odd.rank (known: adaptation, adversarial, lr, "
                           "weight_decay, train_batchnorm)")
    raw["variants"]["odd"] = {"adaptation": "none", "lr": 0.1}
    assert _error(raw) == "params.yaml: unknown key variants.odd.lr (known: adaptation)"
    raw["variants"]["odd"] = {"adaptation": "lora", "targets": ["fc"], "rank": 0}
    assert _error(raw) == "params.yaml: variants.odd.rank must be in [1, inf], got 0"
    raw["variants"]["odd"] = {"adaptation": "full", "train_batchnorm": "no"}
    assert _error(raw) == "params.yaml: variants.odd.train_batchnorm must be true or false, got 'no'"


def test_a_bad_section_is_reported_before_the_variants_that_use_it(raw):
    raw["lora"]["rank"] = -1
    assert _error(raw) == "params.yaml: lora.rank must be in [1, inf], got -1"


def test_cross_section_rules(raw):
    bad = yaml.safe_load(PARAMS)
    bad["report"]["eps"] = "3/255"
    assert _error(bad) == ("params.yaml: report.eps must be one of attack.eps (1/255, 2/255, 4/255, 8/255, 16/255), "
                           "got 3/255")
    bad = yaml.safe_load(PARAMS)
    bad["attack"].update(full_eps=["2/255"], grid_images=50)
    assert _error(bad) == ("params.yaml: report.eps must be one of attack.full_eps (PGD covers only the first "
                           "attack.grid_images images elsewhere) (2/255), got 8/255")
    bad["attack"]["grid_images"] = None  # PGD on every image at every ε: any report.eps of the grid will do
    assert parse_params(bad).attack.pgd_images(8 / 255, 500) == 500
    bad = yaml.safe_load(PARAMS)
    bad["report"]["arms"]["lora_fc"] = "lora_all"
    assert _error(bad).startswith("params.yaml: report.arms.lora_fc names no variant 'lora_all' (have: pretrained, ")
    bad["report"]["arms"]["lora_fc"] = None
    assert parse_params(bad).report.arms["lora_fc"] is None
    bad["report"]["arms"] = {"baseline": "baseline"}
    assert "report.arms must give every role (baseline, lora_fc, lora_fc_conv1; null = no such arm), missing lora_fc" \
        in _error(bad)
    bad["report"]["arms"] = {"baseline": None, "lora_fc": None, "lora_fc_conv1": None, "victim": "baseline"}
    assert "report.arms.victim must be one of baseline, lora_fc, lora_fc_conv1, got 'victim'" in _error(bad)
    bad = yaml.safe_load(PARAMS)
    bad["model"]["head"] = "new"
    assert "variants.pretrained (adaptation: none) has no lr to train the fresh head" in _error(bad)


def test_pretrain_weights_need_the_synthetic_source(raw):
    raw["data"]["source"] = "tiny-imagenet"
    assert "model.weights 'pretrain'" in _error(raw)
    raw["model"]["weights"] = "imagenet"
    assert parse_params(raw).data.source == "tiny-imagenet"


def test_synthetic_target_classes_within_source(raw):
    raw["data"]["synthetic"]["target_classes"] = 20
    assert _error(raw) == "params.yaml: data.synthetic.target_classes must be <= source_classes (16), got 20"


def test_configs_are_frozen_and_dump_to_json(raw):
    p = parse_params(raw)
    with pytest.raises(Exception, match="frozen"):
        p.train.max_epochs = 3  # type: ignore[misc]
    data = json.loads(json.dumps(to_dict(p)))
    assert data["attack"]["eps"][0] == 1 / 255
    sets = {name: list(patterns) for name, patterns in TARGET_SETS.items()}
    assert data["variants"]["lora_fc"] == {"name": "lora_fc", "adaptation": "lora", "targets": ["fc"],
                                           "target_set": "fc",
                                           "settings": {"lr": 0.05, "weight_decay": 0.0, "rank": 4, "alpha": 1.0,
                                                        "target_sets": sets}, "adversarial": None}
    assert data["train"]["seeds"] == [0, 1, 2] and data["report"]["arms"]["baseline"] == "baseline"


def test_variant_spec_built_in_code():
    spec = VariantSpec(name="x", adaptation="lora", targets=("fc",))
    assert spec.settings == LoraSettings() and spec.rank == 4
    with pytest.raises(ValueError, match="must be LoraSettings"):
        VariantSpec(name="x", adaptation="lora", targets=("fc",), settings=FullSettings())


def test_load_params_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text(PARAMS)
    assert load_params(tmp_path / "params.yaml").variant("lora_fc").targets == ("fc",)


def test_targets_may_name_a_target_set(raw):
    raw["variants"]["lora_fc"]["targets"] = "layer4"  # as `-S variants.lora_fc.targets=layer4` writes it
    spec = parse_params(raw).variants["lora_fc"]
    assert spec.targets == TARGET_SETS["layer4"] and spec.target_set == "layer4" and spec.targets_label == "layer4"
    # a list equal to a set (in any order) is named after it; any other list keeps its patterns as its label
    raw["variants"]["lora_fc"]["targets"] = ["conv1", "fc"]
    assert parse_params(raw).variants["lora_fc"].target_set == "fc+conv1"
    raw["variants"]["lora_fc"]["targets"] = ["fc", "layer1.0.conv1"]
    spec = parse_params(raw).variants["lora_fc"]
    assert spec.target_set is None and spec.targets_label == "fc,layer1.0.conv1"
    # sets are params: a new one is usable by name, and a variant may bring its own
    raw["lora"]["target_sets"] = {"stem": ["conv1"]}
    raw["variants"]["lora_fc"]["targets"] = "stem"
    assert parse_params(raw).variants["lora_fc"].targets == ("conv1",)


def test_unknown_target_set_and_bad_sets_are_named(raw):
    raw["variants"]["lora_fc"]["targets"] = "layer5"
    assert _error(raw) == ("params.yaml: variants.lora_fc.targets 'layer5' is not a target set (known: fc, fc+conv1, "
                           "layer4, all_convs; or give a list of layer names / globs)")
    raw["variants"]["lora_fc"]["targets"] = ["fc"]
    raw["lora"]["target_sets"] = {"empty": []}
    assert "lora.target_sets" in _error(raw) and "set 'empty' must be a non-empty list" in _error(raw)


def test_every_default_target_set_matches_resnet18_layers():
    from robustlora.models.lora import resolve_targets
    from robustlora.models.resnet import build_model

    model = build_model(10, 32)
    names = {name: resolve_targets(model, list(patterns)) for name, patterns in TARGET_SETS.items()}
    assert names["fc"] == ["fc"] and sorted(names["fc+conv1"]) == ["conv1", "fc"]
    assert len(names["layer4"]) == 1 + 4 + 1  # fc, two blocks x two convs, the downsample conv
    assert len(names["all_convs"]) == 1 + 1 + 16 + 3  # fc, the stem, 8 blocks x 2 convs, 3 downsample convs


# ----------------------------------------------------------------------------- adversarial fine-tuning


def test_adversarial_true_takes_the_defaults_and_reaches_the_fit_config(raw):
    raw["variants"]["robust"] = {"adaptation": "full", "adversarial": True}
    p = parse_params(raw)
    at = p.variants["robust"].adversarial
    assert (at.method, at.eps, at.steps, at.random_start, at.select) == ("pgd", 4 / 255, 2, True, "robust")
    assert at.step_size == pytest.approx(1.25 * 4 / 255)  # Madry's 2.5·ε of travel over the steps
    assert p.fit_config("robust", p.train.seeds[0]).adversarial == at
    assert p.variants["baseline"].adversarial is None and p.fit_config("baseline", p.train.seeds[0]).adversarial is None
    assert at.label == "PGD-AT ε=4/255, 2 steps of 1.25·ε, random start"


def test_a_variants_adversarial_mapping_overrides_train_adversarial_key_by_key(raw):
    raw["train"]["adversarial"] = {"eps": "8/255", "steps": 3}
    raw["variants"]["trades"] = {"adaptation": "full", "adversarial": {"method": "trades", "beta": 1.0}}
    raw["variants"]["plain"] = {"adaptation": "full", "adversarial": False}
    p = parse_params(raw)
    assert p.variants["baseline"].adversarial.eps == 8 / 255  # train.adversarial reaches every training arm
    trades = p.variants["trades"].adversarial
    assert (trades.method, trades.beta, trades.eps, trades.steps) == ("trades", 1.0, 8 / 255, 3)
    assert p.variants["plain"].adversarial is None
    assert trades.label == "TRADES β=1, ε=8/255, 3 steps of 0.833·ε"


def test_adversarial_errors_name_the_key(raw):
    raw["variants"]["robust"] = {"adaptation": "full", "adversarial": {"eps": 0}}
    assert _error(raw) == "params.yaml: variants.robust.adversarial.eps must be in (0, 1], got 0"
    raw["variants"]["robust"] = {"adaptation": "full", "adversarial": {"step": 2}}
    assert _error(raw).startswith("params.yaml: unknown key variants.robust.adversarial.step (known: method, eps,")
    raw["variants"]["robust"] = {"adaptation": "none", "adversarial": True}
    assert _error(raw) == "params.yaml: variants.robust.adversarial needs an arm that trains (this variant is none)"


def test_slow_blackbox_sections_share_their_first_keys_with_their_own_defaults():
    from robustlora.config import BoundaryConfig, HopSkipJumpConfig, SlowBlackboxConfig, ZooConfig

    for section, n_images, max_iter in ((HopSkipJumpConfig, 20, 20), (BoundaryConfig, 20, 1000), (ZooConfig, 10, 100)):
        assert issubclass(section, SlowBlackboxConfig)
        assert list(section.model_fields)[:3] == ["all_seeds", "n_images", "max_iter"]  # params and MLflow key order
        assert (section().all_seeds, section().n_images, section().max_iter) == (True, n_images, max_iter)


def test_schema_helpers_write_eps_as_params_does():
    from robustlora.config import as_tuple, eps_grid, off_grid

    assert eps_grid(["8/255", 0.0, "1/255", 8 / 255]) == (0.0, 1 / 255, 8 / 255)  # sorted, repeats dropped
    assert eps_grid(None) is None and as_tuple(["fc"]) == ("fc",) and as_tuple("fc") == "fc"
    assert off_grid(3 / 255, (2 / 255, 8 / 255)) == "(2/255, 8/255), got 3/255"
