"""Tests for robustlora.defences.switching: per-input routing equals separate models, in-place switching, shared
backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlora.errors import ModelError
from robustlora.models.lora import apply_lora
from robustlora.models.resnet import build_model
from robustlora.defences.switching import (AdapterBank, SwitchingClassifier, adapter_from_state_dict, lora_keys,
                                           switch_cost)

NUM_CLASSES, SIZE = 5, 16
TARGETS = ["fc", "conv1"]
NAMES = ["clean", "pgd", "trades"]


def _wrapped(seed: int = 0) -> nn.Module:
    """The shared backbone: same seed -> same weights, so variants differ only in their LoRA factors."""
    torch.manual_seed(seed)
    return apply_lora(build_model(NUM_CLASSES, SIZE), TARGETS, rank=2, alpha=2.0).eval()


def _variant_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A 'separately trained' variant's state_dict: the backbone's, with seeded random non-zero factors."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, shape in lora_keys(model).items():
        state[k] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.fixture(scope="module")
def setup() -> tuple[AdapterBank, dict[str, nn.Module], dict[str, dict[str, torch.Tensor]]]:
    model = _wrapped()
    states = {name: _variant_state(model, seed) for seed, name in enumerate(NAMES, start=1)}
    bank = AdapterBank(model, {n: adapter_from_state_dict(s, model, n) for n, s in states.items()})
    refs = {}
    for n, s in states.items():  # a separate model per variant, loaded from its full state_dict
        refs[n] = _wrapped()
        refs[n].load_state_dict(s)
    return bank, refs, states


def _inputs(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


ROUTE = torch.tensor([0, 1, 2, 1, 0, 2])


def test_mixed_route_equals_separate_models(setup) -> None:
    bank, refs, _ = setup
    x = _inputs()
    with torch.no_grad():
        out = bank(x, ROUTE)
        for k, name in enumerate(NAMES):
            rows = ROUTE == k
            # same group composition as the bank's forward -> bit-identical
            assert torch.equal(out[rows], refs[name](x[rows]))
            # whole batch through the reference: only the batch composition differs (eval mode) -> float rounding
            torch.testing.assert_close(out[rows], refs[name](x)[rows], atol=1e-6, rtol=0)
        # the adapters really differ, so routing matters
        assert not torch.allclose(refs["clean"](x), refs["pgd"](x), atol=1e-4)
        assert torch.equal(bank(x, "pgd"), refs["pgd"](x))


def test_use_switches_in_place_without_touching_backbone(setup) -> None:
    bank, refs, states = setup
    model = bank.model
    ptrs = {k: p.data_ptr() for k, p in model.named_parameters()}
    lora = set(lora_keys(model))
    backbone = {k: v.clone() for k, v in model.state_dict().items() if k not in lora}
    x = _inputs(4, seed=1)
    for name in ["trades", "clean", "pgd"]:
        bank.use(name)
        assert bank.active == name
        assert {k: p.data_ptr() for k, p in model.named_parameters()} == ptrs
        now = model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in backbone.items())
        assert all(torch.equal(now[k], states[name][k]) for k in lora)
        with torch.no_grad():
            assert torch.equal(model(x), refs[name](x))
    with pytest.raises(ModelError, match="adapter 'fgsm' is not in the bank; adapters: clean, pgd, trades"):
        bank.use("fgsm")


def test_adapter_from_state_dict_refuses_a_different_backbone(setup) -> None:
    bank, _, states = setup
    state = dict(states["clean"])
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"] + 1e-3
    with pytest.raises(ModelError, match=r"^other: backbone differs from the bank's at 'layer1.0.conv1.weight'"):
        adapter_from_state_dict(state, bank.model, "other")
    head = dict(states["clean"])
    head["fc.base.bias"] = head["fc.base.bias"] + 1  # a variant that trained its head cannot share the backbone
    with pytest.raises(ModelError, match="'fc.base.bias'"):
        adapter_from_state_dict(head, bank.model)
    plain = {k: v for k, v in states["clean"].items() if not k.startswith("fc.lora")}
    with pytest.raises(ModelError, match="missing key 'fc.lora_A'"):
        adapter_from_state_dict(plain, bank.model)
    wrong_rank = {k: torch.zeros(s[0], 3) if k.endswith("lora_A") else torch.zeros(3, s[1])
                  for k, s in lora_keys(bank.model).items()}
    with pytest.raises(ModelError, match=r"adapter 'r3': 'conv1.lora_A' has shape \(64, 3\)"):
        AdapterBank(bank.model, {"r3": wrong_rank})


def test_gradients_flow_for_mixed_route_and_mode_is_kept(setup) -> None:
    bank, refs, _ = setup
    model = bank.model
    model.train()  # BatchNorm stays frozen (apply_lora), so outputs stay per-input
    modes = [m.training for m in model.modules()]
    try:
        x = _inputs(seed=2).requires_grad_(True)
        bank(x, ROUTE).logsumexp(1).sum().backward()
        assert [m.training for m in model.modules()] == modes and model.training
        assert all(p.grad is None for p in model.parameters())  # adapters are substituted, not trained
        for k, name in enumerate(NAMES):
            rows = ROUTE == k
            xr = x.detach()[rows].requires_grad_(True)
            refs[name](xr).logsumexp(1).sum().backward()
            assert x.grad[rows].abs().sum() > 0
            torch.testing.assert_close(x.grad[rows], xr.grad, atol=1e-6, rtol=1e-5)
    finally:
        model.eval()
    with pytest.raises(ModelError, match="route index 3 out of range"):
        bank(x, torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ModelError, match=r"route has shape \(2,\)"):
        bank(x, torch.tensor([0, 1]))


def test_switching_classifier_routes_and_records(setup) -> None:
    bank, refs, _ = setup
    x = _inputs()
    x[::2] *= 0.2  # dark inputs -> adapter 0, bright ones -> adapter 2

    def router(images: torch.Tensor) -> torch.Tensor:
        return torch.where(images.mean((1, 2, 3)) > 0.3, 2, 0)

    clf = SwitchingClassifier(bank, router)
    assert clf.route_counts() == {"clean": 0, "pgd": 0, "trades": 0}
    with torch.no_grad():
        out = clf(x)
    expected = torch.tensor([0, 2, 0, 2, 0, 2])
    assert torch.equal(clf.last_route, expected)
    assert clf.route_counts() == {"clean": 3, "pgd": 0, "trades": 3}
    with torch.no_grad():
        assert torch.equal(out, bank(x, expected))
        assert torch.equal(out[1::2], refs["trades"](x[1::2]))


def test_switch_cost_measures_and_restores(setup) -> None:
    bank, _, _ = setup
    bank.use("pgd")
    before = {k: v.clone() for k, v in bank.model.state_dict().items()}
    cost = switch_cost(bank, _inputs(2), repeats=2)
    for key in ("switch_s", "merged_s", "reload_s", "bank_bytes", "full_models_bytes"):
        assert cost[key] > 0, key
    for key in ("switch_s", "merged_s", "reload_s"):  # the mean of the repeats, each kept
        assert len(cost[f"{key}_runs"]) == 2 and cost[key] == pytest.approx(sum(cost[f"{key}_runs"]) / 2)
    assert cost["n_adapters"] == 3 and cost["batch_size"] == 2
    assert cost["bank_bytes"] < cost["full_models_bytes"]
    one_model = sum(p.numel() * 4 for p in bank.model.parameters() if p.requires_grad is False)
    assert cost["full_models_bytes"] == 3 * one_model  # merged models carry the backbone's weights only
    assert bank.active == "pgd"
    assert all(torch.equal(v, before[k]) for k, v in bank.model.state_dict().items())


def test_a_fresh_head_travels_with_its_adapter() -> None:
    """model.head: new trains a head in every LoRA variant, so two adapters of one backbone differ in `fc`: refused as
    a shared backbone (naming the key and the remedy), switched like PEFT's modules_to_save when the head is saved
    with each adapter; every route then equals that variant's own model."""
    model = _wrapped()
    states = {}
    for seed, name in enumerate(("standard", "robust"), start=1):
        state = _variant_state(model, seed)
        g = torch.Generator().manual_seed(10 + seed)
        state["fc.base.weight"] = torch.randn(state["fc.base.weight"].shape, generator=g) * 0.1  # its own head
        state["fc.base.bias"] = torch.randn(state["fc.base.bias"].shape, generator=g) * 0.1
        states[name] = state
    with pytest.raises(ModelError, match=r"robust: backbone differs from the bank's at 'fc.base.(weight|bias)'.*"
                                         r"modules_to_save=\('fc',\)"):
        adapter_from_state_dict(states["robust"], model, "robust")
    base = _wrapped()
    base.load_state_dict(states["standard"])
    adapters = {n: adapter_from_state_dict(s, base, n, modules_to_save=("fc",)) for n, s in states.items()}
    assert {"fc.base.weight", "fc.base.bias", "fc.lora_A"} <= set(adapters["robust"])
    bank = AdapterBank(base, adapters, modules_to_save=("fc",))
    x = _inputs()
    route = torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        out = bank(x, route)
        for i, name in enumerate(("standard", "robust")):
            ref = _wrapped()
            ref.load_state_dict(states[name])
            torch.testing.assert_close(out[route == i], ref(x[route == i]))
        bank.use("robust")
        torch.testing.assert_close(base(x), bank(x, "robust"))  # use() copied the head in too
    with pytest.raises(ModelError, match="modules_to_save: the model has no module 'head'"):
        AdapterBank(base, adapters, modules_to_save=("head",))
