"""The adaptation registry on real models: what each kind trains, and checkpoints rebuilt from their meta."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from robustlora.models import adaptation
from robustlora.config import KIND_SCHEMAS, FullSettings, LoraSettings, VariantSpec
from robustlora.models.adaptation import KINDS
from robustlora.errors import ModelError
from robustlora.models.lora import EvalBatchNorm2d, count_parameters, expected_lora_param_count
from robustlora.models.resnet import build_model

NUM_CLASSES, SIZE = 10, 32
HEAD = 512 * NUM_CLASSES + NUM_CLASSES  # ResNet18's fc


def spec(adaptation_: str, targets=(), **settings) -> VariantSpec:
    kind = KINDS[adaptation_]
    return VariantSpec(name="v", adaptation=adaptation_, targets=targets, settings=kind.settings(**settings))


def test_import_is_torch_free():
    code = "import sys, robustlora.models.adaptation, robustlora.config; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr or "importing adaptation/config pulled in torch"


def test_full_trains_everything_and_none_nothing():
    model = adaptation.prepare(build_model(NUM_CLASSES, SIZE), spec("full"))
    trainable, total = count_parameters(model)
    assert trainable == total > 10_000_000
    model = adaptation.prepare(build_model(NUM_CLASSES, SIZE), spec("none"))
    assert count_parameters(model)[0] == 0
    model = adaptation.prepare(build_model(NUM_CLASSES, SIZE), spec("none"), train_head=True)
    assert count_parameters(model)[0] == HEAD  # a fresh head is trained in every kind


def test_lora_trains_only_its_factors_and_freezes_batchnorm():
    fresh = build_model(NUM_CLASSES, SIZE)
    expected = expected_lora_param_count(fresh, ["fc", "conv1"], rank=8)
    model = adaptation.prepare(fresh, spec("lora", ("fc", "conv1"), rank=8))
    assert count_parameters(model)[0] == expected == 8 * (NUM_CLASSES + 512) + 8 * (64 + 3 * 7 * 7)
    model.train()
    assert isinstance(model.bn1, EvalBatchNorm2d) and not model.bn1.training


def test_unknown_lora_target_is_a_model_error():
    with pytest.raises(ModelError, match=r"^lora target 'conv0' not found; layers with weights: conv1, "):
        adaptation.prepare(build_model(NUM_CLASSES, SIZE), spec("lora", ("conv0",)))


@pytest.mark.parametrize("kind, targets", [("lora", ("fc", "layer1.*.conv*")), ("full", ()), ("none", ())])
def test_rebuild_loads_what_prepare_trained(kind, targets):
    torch.manual_seed(0)
    s = spec(kind, targets, **({"rank": 2, "alpha": 0.5} if kind == "lora" else {}))
    trained = adaptation.prepare(build_model(NUM_CLASSES, SIZE), s)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained: LoRA's A is no longer zero
    meta = json.loads(json.dumps(adaptation.checkpoint_meta(s)))  # what a checkpoint stores
    loaded = adaptation.rebuild(build_model(NUM_CLASSES, SIZE), meta)
    loaded.load_state_dict(trained.state_dict())  # strict: the same architecture, key for key
    x = torch.rand(4, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.eval()(x), trained.eval()(x))


def test_checkpoint_meta_records_the_resolved_settings():
    meta = adaptation.checkpoint_meta(spec("lora", ("fc",), rank=8, lr=0.1))
    assert meta == {"name": "v", "adaptation": "lora", "targets": ["fc"], "lr": 0.1, "weight_decay": 0.0,
                    "rank": 8, "alpha": 1.0}


def test_rebuild_refuses_unknown_or_incomplete_meta():
    with pytest.raises(ModelError, match=r"models/x.pt: unknown adaptation 'prefix' \(known: full, lora, none\)"):
        adaptation.rebuild(build_model(NUM_CLASSES, SIZE), {"adaptation": "prefix"}, "models/x.pt")
    with pytest.raises(ModelError, match="LoRA checkpoint without rank, alpha"):
        adaptation.rebuild(build_model(NUM_CLASSES, SIZE), {"adaptation": "lora", "targets": ["fc"]})


def test_describe_and_batchnorm():
    assert adaptation.describe(spec("lora", ("fc", "conv1"))) == "LoRA r=4, α=1 on fc, conv1"
    named = spec("lora", ("fc", "conv1")).model_copy(update={"target_set": "fc+conv1"})
    assert adaptation.describe(named) == "LoRA r=4, α=1 on fc+conv1 (fc, conv1)"
    assert adaptation.checkpoint_meta(named)["target_set"] == "fc+conv1"
    assert "target_sets" not in adaptation.checkpoint_meta(named)  # the sets are params, not the model
    assert adaptation.describe(spec("full")) == "full fine-tuning (BatchNorm statistics re-estimated)"
    assert adaptation.describe(spec("full", train_batchnorm=False)) == "full fine-tuning, BatchNorm frozen"
    assert adaptation.describe(spec("none")) == "no adaptation (pretrained weights)"
    assert [adaptation.trains_batchnorm(s) for s in (spec("full"), spec("full", train_batchnorm=False),
                                                      spec("lora", ("fc",)), spec("none"))] == [True, False, False, False]
    assert [k.trains for k in KINDS.values()] == [True, True, False]
    assert KINDS["full"].settings is FullSettings and KINDS["lora"].settings is LoraSettings


def test_every_kind_params_knows_has_its_behaviour():
    # params validates against KIND_SCHEMAS (config may not import models); each entry has its class in KINDS
    assert list(KINDS) == list(KIND_SCHEMAS) == ["full", "lora", "none"]
    for name, kind in KINDS.items():
        assert kind.schema is KIND_SCHEMAS[name]
        assert (kind.name, kind.settings, kind.takes_targets, kind.trains) == (
            name, KIND_SCHEMAS[name].settings, KIND_SCHEMAS[name].takes_targets, KIND_SCHEMAS[name].trains)
    assert spec("lora", ("fc",)).kind is KIND_SCHEMAS["lora"] and not spec("none").kind.trains
