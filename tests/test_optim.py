"""robustlora.training.optim.SGD: torch.optim.SGD's arithmetic bit for bit, its state_dict, and no torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from robustlora.training.optim import SGD


def _problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    return x, y


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 6, generator=g).requires_grad_()
    b = torch.randn(3, generator=g).requires_grad_()
    frozen_out = torch.randn(3, generator=g).requires_grad_()  # gets no gradient: skipped, as torch skips it
    return [w, b, frozen_out]


def _run(opt, params, steps: int, start: int = 0) -> None:
    x, y = _problem()
    for i in range(start, start + steps):
        if isinstance(opt, SGD):  # a schedule, as the training loop sets it per epoch
            opt.lr = 0.1 / (1 + i)
        else:
            opt.param_groups[0]["lr"] = 0.1 / (1 + i)
        loss = F.cross_entropy(x @ params[0].T + params[1], y) + (params[0] ** 3).sum() * 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("settings", [
    dict(momentum=0.9, weight_decay=5e-4),
    dict(momentum=0.9, weight_decay=0.0, nesterov=True),
    dict(momentum=0.5, dampening=0.3, weight_decay=1e-2),
    dict(momentum=0.0, weight_decay=5e-4),
])
def test_same_parameters_as_torch_sgd_bit_for_bit(settings):
    ours, theirs = _params(), _params()
    _run(SGD(ours, lr=0.1, **settings), ours, 25)
    _run(torch.optim.SGD(theirs, lr=0.1, **settings), theirs, 25)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert torch.equal(ours[2], _params()[2])  # no gradient, no update (weight decay included)


def test_state_dict_resumes_exactly_and_loads_torch_state():
    settings = dict(momentum=0.9, weight_decay=5e-4)
    straight = _params()
    _run(SGD(straight, lr=0.1, **settings), straight, 10)
    first = _params()
    opt = SGD(first, lr=0.1, **settings)
    _run(opt, first, 4)
    saved = opt.state_dict()
    assert set(saved["state"]) == {0, 1} and saved["param_groups"][0]["params"] == [0, 1, 2]
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt2 = SGD(resumed, lr=0.5, **settings)
    opt2.load_state_dict(saved)
    assert opt2.lr == opt.lr
    _run(opt2, resumed, 6, start=4)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    # torch.optim.SGD's state dict loads into ours (and ours into torch's): either continues the other's run
    theirs = _params()
    torch_opt = torch.optim.SGD(theirs, lr=0.1, **settings)
    _run(torch_opt, theirs, 4)
    mixed = [p.detach().clone().requires_grad_() for p in theirs]
    ours = SGD(mixed, lr=0.1, **settings)
    ours.load_state_dict(torch_opt.state_dict())
    _run(ours, mixed, 6, start=4)
    for a, b in zip(straight, mixed):
        assert torch.equal(a, b)
    back = [p.detach().clone().requires_grad_() for p in first]
    torch_back = torch.optim.SGD(back, lr=0.1, **settings)
    torch_back.load_state_dict(saved)
    _run(torch_back, back, 6, start=4)
    for a, b in zip(straight, back):
        assert torch.equal(a, b)


def test_bad_settings_and_states_are_refused():
    with pytest.raises(ValueError, match="SGD lr must be a finite number >= 0, got -1"):
        SGD(_params(), lr=-1)
    with pytest.raises(ValueError, match="SGD momentum must be a finite number"):
        SGD(_params(), lr=0.1, momentum=float("nan"))
    with pytest.raises(ValueError, match="nesterov needs a momentum > 0"):
        SGD(_params(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    opt = SGD(_params(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="the state has 2 parameters, the optimizer 3"):
        opt.load_state_dict({"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]})
    with pytest.raises(ValueError, match=r"momentum buffer 0 has shape \(2,\), its parameter \(3, 6\)"):
        opt.load_state_dict({"state": {0: {"momentum_buffer": torch.zeros(2)}},
                             "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]})


def test_training_through_the_library_never_imports_torch_dynamo(tmp_path):
    """The issue-19 start-up cost: torch._dynamo (~2.5 s) must not be imported by training, adversarial training
    included, nor by checkpointing and resuming (a fresh interpreter, so no other test's import counts)."""
    script = textwrap.dedent(f"""
        import sys
        import torch
        from robustlora.config import AdversarialSettings, TrainConfig
        from robustlora.data.dataset import Split
        from robustlora.models.resnet import build_model
        from robustlora.training.loop import fit
        g = torch.Generator().manual_seed(0)
        split = Split((torch.rand(8, 16, 16, 3, generator=g) * 255).to(torch.uint8), torch.arange(8) % 2)
        torch.manual_seed(0)
        for schedule, adversarial in (("plateau", None), ("cosine", AdversarialSettings(steps=1, select_steps=1))):
            cfg = TrainConfig(lr=0.01, batch_size=4, max_epochs=2, device="cpu", schedule=schedule,
                              adversarial=adversarial)
            ckpt = {str(tmp_path)!r} + "/" + schedule + ".pt"
            fit(build_model(2, input_size=16), split, split, cfg, device=torch.device("cpu"), progress=False,
                checkpoint_path=ckpt, fingerprint="x", stop_after_epochs=1)
            fit(build_model(2, input_size=16), split, split, cfg, device=torch.device("cpu"), progress=False,
                checkpoint_path=ckpt, fingerprint="x")
        print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "no dynamo"
