"""Tests for robustlora.models.lora: exactness at init, ΔW shape/rank, merging, PEFT equivalence, freezing, targets."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn as nn
from torchvision.models import resnet18

from robustlora.models.lora import (
    EvalBatchNorm2d,
    LoRAConv2d,
    LoRALayer,
    LoRALinear,
    apply_lora,
    count_parameters,
    expected_lora_param_count,
    freeze_batchnorm,
    lora_parameters,
    merge_lora,
    resolve_targets,
)

RESNET_TARGETS = ["fc", "conv1", "layer1.0.conv2"]


class Tiny(nn.Module):
    """A conv and a linear layer under the names LoRA targets them by."""

    def __init__(self, conv: nn.Conv2d | None = None) -> None:
        super().__init__()
        self.conv = conv or nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18(num_classes=10)


def _randomise_factors(model: nn.Module, seed: int = 1, std: float = 0.05) -> None:
    """Non-zero A (and fresh B) so ΔW ≠ 0; at init A = 0 hides most bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# --- exactness at init -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,bias",
    [(1, 1, 0, 1, False), (3, 1, 1, 1, True), (3, 2, 2, 2, False), (7, 2, 3, 1, False), (3, 1, "same", 2, True)],
)
def test_wrapped_conv_equals_base_at_init(kernel, stride, padding, dilation, bias) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    model = nn.Sequential(conv)
    x = torch.rand(2, 3, 17, 17)
    expected = model(x)
    apply_lora(model, ["0"], rank=2, alpha=4.0)
    assert isinstance(model[0], LoRAConv2d)
    assert torch.equal(model(x), expected)


def test_wrapped_linear_equals_base_at_init() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 7))
    x = torch.randn(5, 3, 12)  # extra leading dims pass through like nn.Linear
    expected = model(x)
    apply_lora(model, ["0"], rank=3, alpha=0.5)
    assert isinstance(model[0], LoRALinear)
    assert torch.equal(model(x), expected)
    assert torch.count_nonzero(model[0].lora_A) == 0 and torch.count_nonzero(model[0].lora_B) > 0


def test_same_seed_same_factors() -> None:
    factors = []
    for _ in range(2):
        model = apply_lora(_resnet(), RESNET_TARGETS, rank=4, alpha=1.0)
        factors.append([p.detach().clone() for p in lora_parameters(model)])
    assert all(torch.equal(a, b) for a, b in zip(*factors))


# --- ΔW --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Linear(32, 24), nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)])
@pytest.mark.parametrize("rank", [1, 4])
def test_delta_weight_shape_and_rank(layer: nn.Module, rank: int) -> None:
    # float64 so round-off cannot pass for extra rank
    model = apply_lora(nn.Sequential(copy.deepcopy(layer).double()), ["0"], rank=rank, alpha=2.0)
    _randomise_factors(model)
    wrapped = model[0]
    delta = wrapped.delta_weight()
    assert delta.shape == layer.weight.shape
    assert wrapped.lora_A.shape == (layer.weight.shape[0], rank)
    assert wrapped.lora_B.shape == (rank, layer.weight[0].numel())
    assert torch.linalg.matrix_rank(delta.reshape(delta.shape[0], -1)).item() == rank
    # α scales ΔW exactly as written: ΔW = α·(A·B), no division by r
    expected = 2.0 * (wrapped.lora_A @ wrapped.lora_B)
    torch.testing.assert_close(delta.reshape(expected.shape), expected, rtol=0, atol=0)


# --- merging ---------------------------------------------------------------------------------------------------


def test_merged_equals_wrapped_and_is_plain() -> None:
    x = torch.rand(2, 3, 32, 32)
    model = _resnet().eval()
    plain_keys, base_out = set(model.state_dict()), model(x)
    apply_lora(model, RESNET_TARGETS, rank=4, alpha=2.0)
    _randomise_factors(model)
    before = copy.deepcopy(model.state_dict())
    wrapped_out = model(x)
    assert (wrapped_out - base_out).abs().max().item() > 1e-3  # ΔW is not a no-op

    merged = merge_lora(model).eval()
    assert (merged(x) - wrapped_out).abs().max().item() <= 1e-5
    assert not any(isinstance(m, (LoRALayer, EvalBatchNorm2d)) for m in merged.modules())
    assert type(merged.fc) is nn.Linear and type(merged.conv1) is nn.Conv2d and type(merged.bn1) is nn.BatchNorm2d
    assert set(merged.state_dict()) == plain_keys
    assert all(p.requires_grad for p in merged.parameters())
    merged.train()
    assert merged.bn1.training  # plain BatchNorm follows the model again
    # the input model is untouched
    assert isinstance(model.fc, LoRALinear) and not model.bn1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- PEFT equivalence ------------------------------------------------------------------------------------------


def test_matches_peft_for_linear_and_conv() -> None:
    from peft import LoraConfig, get_peft_model

    rank, lora_alpha = 4, 8
    torch.manual_seed(0)
    base = Tiny()
    ours = apply_lora(copy.deepcopy(base), ["conv", "fc"], rank=rank, alpha=lora_alpha / rank)
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=["conv", "fc"], lora_dropout=0.0)
    peft_model = get_peft_model(copy.deepcopy(base), config).eval()
    inner = peft_model.base_model.model

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in ["conv", "fc"]:
            peft_layer, our_layer = getattr(inner, name), getattr(ours, name)
            a, b = peft_layer.lora_A["default"].weight, peft_layer.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=g) * 0.1)
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            # study A = PEFT lora_B.weight (Cout×r), study B = PEFT lora_A.weight flattened (r×Cin·Kh·Kw)
            our_layer.lora_A.copy_(b.reshape(b.shape[0], rank))
            our_layer.lora_B.copy_(a.reshape(rank, -1))
            torch.testing.assert_close(
                our_layer.delta_weight(), peft_layer.get_delta_weight("default"), rtol=0, atol=1e-6
            )

    x = torch.rand(3, 3, 8, 8)
    ours.eval()
    out_ours, out_peft = ours(x), peft_model(x)
    assert (out_ours - out_peft).abs().max().item() <= 1e-5
    assert (out_ours - base(x)).abs().max().item() > 1e-3  # the factors really changed the output


# --- freezing and training -------------------------------------------------------------------------------------


def test_only_lora_factors_get_gradients() -> None:
    model = apply_lora(_resnet(), RESNET_TARGETS, rank=4, alpha=1.0)
    factors = lora_parameters(model)
    assert len(factors) == 2 * len(RESNET_TARGETS)
    assert all(p.requires_grad for p in factors)
    factor_ids = {id(p) for p in factors}
    base_params = [p for p in model.parameters() if id(p) not in factor_ids]
    assert base_params and not any(p.requires_grad for p in base_params)

    model.train()
    model(torch.rand(2, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    assert all(p.grad is None for p in base_params)
    assert all(p.grad is not None for p in factors)
    # at init A = 0, so only A gets a non-zero gradient (as in PEFT, where lora_B starts at zero)
    assert all(model.get_submodule(n).lora_A.grad.abs().sum() > 0 for n in RESNET_TARGETS)


def test_batchnorm_statistics_frozen_during_lora_training() -> None:
    model = apply_lora(_resnet(), RESNET_TARGETS, rank=4, alpha=1.0)
    probe = torch.rand(2, 3, 32, 32)
    model.eval()
    out_before = model(probe).detach()
    stats_before = _bn_state(model)
    assert stats_before

    model.train()
    assert model.training and not any(isinstance(m, nn.BatchNorm2d) and m.training for m in model.modules())
    opt = torch.optim.SGD(lora_parameters(model), lr=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, y = torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, 10, (2,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    stats_after = _bn_state(model)
    assert all(torch.equal(stats_before[k], stats_after[k]) for k in stats_before)
    model.eval()
    assert (model(probe) - out_before).abs().max().item() > 1e-4  # training did change the model


def test_freeze_batchnorm_only_freezes_frozen_norms() -> None:
    model = _resnet()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("layer4.1."))  # fine-tune the last block only
    frozen = freeze_batchnorm(model)
    assert "bn1" in frozen and "layer4.0.bn2" in frozen
    assert "layer4.1.bn1" not in frozen and "layer4.1.bn2" not in frozen
    model.train()
    assert not model.bn1.training
    assert model.get_submodule("layer4.1.bn1").training
    assert type(model.get_submodule("layer4.1.bn1")) is nn.BatchNorm2d


# --- targets ---------------------------------------------------------------------------------------------------


def test_exact_name_targets_only_that_module() -> None:
    model = apply_lora(_resnet(), ["conv1"], rank=2, alpha=1.0)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALayer)]
    assert wrapped == ["conv1"]  # the stem only, not layerX.Y.conv1 (PEFT's suffix matching would take all nine)
    assert type(model.layer1[0].conv1) is nn.Conv2d


def test_glob_targets_block_convs() -> None:
    names = resolve_targets(_resnet(), ["layer*.*.conv*"])
    assert len(names) == 16
    assert names[0] == "layer1.0.conv1" and names[-1] == "layer4.1.conv2"
    assert "conv1" not in names and not any("downsample" in n for n in names)
    model = apply_lora(_resnet(), ["layer*.*.conv*", "fc"], rank=2, alpha=1.0)
    assert sum(isinstance(m, LoRAConv2d) for m in model.modules()) == 16
    assert isinstance(model.fc, LoRALinear)


def test_unknown_target_lists_valid_layers() -> None:
    model = _resnet()
    listing = r"layers with weights: conv1, layer1\.0\.conv1, .*, layer4\.0\.downsample\.0, .*, fc$"
    with pytest.raises(ValueError, match=r"lora target 'conv0' not found; " + listing):
        apply_lora(model, ["conv0"], rank=2, alpha=1.0)
    with pytest.raises(ValueError, match=r"lora target 'block\*' not found"):
        apply_lora(model, ["block*"], rank=2, alpha=1.0)
    assert not any(isinstance(m, LoRALayer) for m in model.modules())  # nothing half-applied


def test_non_weight_layer_target_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"lora target 'bn1' is a BatchNorm2d, not Linear/Conv2d; layers with weights"):
        apply_lora(_resnet(), ["bn1"], rank=2, alpha=1.0)


def test_grouped_conv_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ValueError, match=r"lora target '0' is a grouped conv \(groups=2\)"):
        apply_lora(model, ["0"], rank=2, alpha=1.0)


def test_wrapping_twice_is_an_error_but_other_layers_can_follow() -> None:
    model = apply_lora(_resnet(), ["fc"], rank=2, alpha=1.0)
    with pytest.raises(ValueError, match=r"lora target 'fc' already has LoRA"):
        apply_lora(model, ["fc"], rank=2, alpha=1.0)
    apply_lora(model, ["conv1"], rank=2, alpha=1.0)
    assert len(lora_parameters(model)) == 4 and all(p.requires_grad for p in lora_parameters(model))


@pytest.mark.parametrize(
    "rank,alpha", [(0, 1.0), (-1, 1.0), (2.0, 1.0), (True, 1.0), (2, math.nan), (2, math.inf), (2, "1")]
)
def test_invalid_rank_or_alpha_is_an_error(rank, alpha) -> None:
    with pytest.raises(ValueError, match=r"lora (rank|alpha) must be"):
        apply_lora(_resnet(), ["fc"], rank=rank, alpha=alpha)


# --- parameter counts ------------------------------------------------------------------------------------------


def test_parameter_count_formula() -> None:
    model = _resnet()
    total_before = count_parameters(model)[1]
    expected = 4 * (10 + 512) + 4 * (64 + 3 * 7 * 7)
    assert expected_lora_param_count(model, ["fc", "conv1"], rank=4) == expected
    apply_lora(model, ["fc", "conv1"], rank=4, alpha=1.0)
    trainable, total = count_parameters(model)
    assert trainable == expected == sum(p.numel() for p in lora_parameters(model))
    assert total == total_before + expected
    assert expected_lora_param_count(model, ["fc", "conv1"], rank=4) == expected  # also on the wrapped model


# --- checkpoints -----------------------------------------------------------------------------------------------


def test_state_dict_round_trip() -> None:
    model = apply_lora(_resnet(seed=0), RESNET_TARGETS, rank=4, alpha=2.0)
    _randomise_factors(model)
    state = model.state_dict()
    assert {"fc.base.weight", "fc.base.bias", "fc.lora_A", "fc.lora_B", "conv1.base.weight"} <= set(state)
    assert {"bn1.running_mean", "bn1.num_batches_tracked"} <= set(state)  # frozen BatchNorm keeps its keys
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)

    fresh = apply_lora(_resnet(seed=1), RESNET_TARGETS, rank=4, alpha=2.0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


# --- precision and memory format -------------------------------------------------------------------------------


def test_bfloat16_autocast_and_channels_last() -> None:
    torch.manual_seed(0)
    model = apply_lora(Tiny(), ["conv", "fc"], rank=4, alpha=2.0)
    _randomise_factors(model)
    x = torch.rand(4, 3, 8, 8)
    ref = model(x)
    out_cl = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = model(x)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), ref, rtol=0.1, atol=0.1)


def test_factors_follow_base_dtype() -> None:
    torch.manual_seed(0)
    model = Tiny().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    expected = model(x)
    apply_lora(model, ["conv", "fc"], rank=2, alpha=1.0)
    assert all(p.dtype == torch.float64 for p in lora_parameters(model))
    assert torch.equal(model(x), expected)
