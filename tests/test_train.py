import pytest
import torch

from robustlora.config import TrainConfig
from robustlora.data.dataset import Split
from robustlora.models.lora import apply_lora
from robustlora.models.resnet import accuracy, build_model
from robustlora.training.loop import augment, draw_augmentation, fit

CFG = TrainConfig(lr=0.05, batch_size=16, max_epochs=4, patience=10, device="cpu", crop_padding=2, eval_batch_size=64)


def toy_split(n: int, seed: int) -> Split:
    """Two classes a CNN separates easily: bright top half vs bright bottom half (survives horizontal flips)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, 16, 16, 3, generator=g) * 60).to(torch.uint8)
    for i, y in enumerate(labels):
        images[i, (0 if y == 0 else 8):(8 if y == 0 else 16)] += 150
    return Split(images, labels)


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(2, input_size=16)


def test_fit_learns_and_reports(tmp_path):
    train, holdout = toy_split(64, 0), toy_split(32, 1)
    seen = []
    model = make_model()
    result = fit(model, train, holdout, CFG, device=torch.device("cpu"), progress=False, on_epoch=seen.append)
    assert result.epochs_run == 4 and len(result.history) == 4 and [m["epoch"] for m in seen] == [1, 2, 3, 4]
    model.load_state_dict(result.best_state)
    assert accuracy(model, holdout) == pytest.approx(result.best_holdout_accuracy)
    assert result.best_holdout_accuracy > 0.8
    assert result.images_per_second > 0


def test_same_seed_same_weights():
    train, holdout = toy_split(48, 0), toy_split(16, 1)
    a = fit(make_model(), train, holdout, CFG, device=torch.device("cpu"), progress=False)
    b = fit(make_model(), train, holdout, CFG, device=torch.device("cpu"), progress=False)
    for k in a.best_state:
        assert torch.equal(a.best_state[k], b.best_state[k]), k
    c = fit(make_model(), train, holdout, CFG.model_copy(update=dict(seed=1)), device=torch.device("cpu"),
            progress=False)
    assert not torch.equal(a.best_state["fc.weight"], c.best_state["fc.weight"])


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    train, holdout = toy_split(48, 0), toy_split(16, 1)
    full = fit(make_model(), train, holdout, CFG, device=torch.device("cpu"), progress=False)
    ckpt = tmp_path / "ckpt.pt"
    first = fit(make_model(), train, holdout, CFG, device=torch.device("cpu"), progress=False, checkpoint_path=ckpt,
                fingerprint="run", stop_after_epochs=2)
    assert first.epochs_run == 2 and ckpt.exists()
    # a fresh process would rebuild the model from scratch (another init) and resume from the checkpoint
    resumed = fit(make_model(seed=123), train, holdout, CFG, device=torch.device("cpu"), progress=False,
                  checkpoint_path=ckpt, fingerprint="run")
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for k in full.best_state:
        assert torch.equal(full.best_state[k], resumed.best_state[k]), k
    # a checkpoint of another configuration is not resumed from
    other = fit(make_model(), train, holdout, CFG, device=torch.device("cpu"), progress=False, checkpoint_path=ckpt,
                fingerprint="another run")
    assert other.resumed_from_epoch == 0


def test_resume_fingerprint_is_unchanged_and_reads_files_by_content(tmp_path):
    from robustlora.training.study import resume_fingerprint

    (tmp_path / "f.bin").write_bytes(b"weights")
    cfg = {"lr": 0.1, "targets": ["fc"]}
    # the values of the earlier implementation: checkpoints written before still resume
    assert resume_fingerprint(cfg, "not a file", str(tmp_path / "f.bin")) == "6ae9a91cc7e08aa1"
    assert resume_fingerprint(cfg, "not a file", "weights") == "59ac523433593347"
    (tmp_path / "g.bin").write_bytes(b"weights")  # another path, the same bytes: the same run
    assert resume_fingerprint(cfg, "not a file", tmp_path / "g.bin") == "6ae9a91cc7e08aa1"


def test_early_stopping_keeps_the_best_epoch():
    train, holdout = toy_split(32, 0), toy_split(16, 1)
    cfg = CFG.model_copy(update=dict(max_epochs=30, patience=2, lr=0.2))
    result = fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False)
    accs = [h["holdout_accuracy"] for h in result.history]
    assert result.epochs_run < 30
    assert result.best_holdout_accuracy == max(accs) and accs[result.best_epoch - 1] == max(accs)
    assert all(a <= max(accs) for a in accs[result.best_epoch:]) and len(accs) - result.best_epoch == 2


def test_lora_training_moves_only_factors_and_keeps_batchnorm_statistics():
    train, holdout = toy_split(48, 0), toy_split(16, 1)
    model = apply_lora(make_model(), ["fc", "conv1"], rank=2, alpha=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, train, holdout, CFG.model_copy(update=dict(max_epochs=2)), device=torch.device("cpu"),
                 train_batchnorm=False, progress=False)
    after = result.best_state
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), changed
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert torch.equal(before["layer4.1.bn2.num_batches_tracked"], after["layer4.1.bn2.num_batches_tracked"])


def test_full_finetuning_with_frozen_batchnorm_statistics():
    train, holdout = toy_split(32, 0), toy_split(16, 1)
    model = make_model()
    before = model.bn1.running_var.clone()
    fit(model, train, holdout, CFG.model_copy(update=dict(max_epochs=1)), device=torch.device("cpu"),
        train_batchnorm=False, progress=False)
    assert torch.equal(before, model.bn1.running_var)
    fit(model, train, holdout, CFG.model_copy(update=dict(max_epochs=1)), device=torch.device("cpu"), progress=False)
    assert not torch.equal(before, model.bn1.running_var)


def test_augment_crops_and_flips_deterministically():
    x = torch.arange(2 * 4 * 4 * 1, dtype=torch.uint8).view(2, 4, 4, 1)
    a = draw_augmentation(2, 1, True, torch.Generator().manual_seed(0))
    b = draw_augmentation(2, 1, True, torch.Generator().manual_seed(0))
    assert a.shape == (2, 3) and torch.equal(a, b)
    assert int(a[:, :2].min()) >= 0 and int(a[:, :2].max()) <= 2
    # no padding, no flip -> the input unchanged
    assert torch.equal(augment(x, 0, draw_augmentation(2, 0, False, torch.Generator())), x)
    # offset (1, 1) with padding 1 is the identity crop; (0, 0) shifts the image down-right by one pixel
    same = augment(x, 1, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert torch.equal(same[0], x[0]) and torch.equal(same[1], x[1].flip(1))
    shifted = augment(x, 1, torch.tensor([[0, 0, 0], [2, 2, 0]]))
    assert torch.equal(shifted[0, 1:, 1:], x[0, :-1, :-1]) and int(shifted[0, 0].sum()) == 0
    assert torch.equal(shifted[1, :-1, :-1], x[1, 1:, 1:]) and int(shifted[1, -1].sum()) == 0


def test_model_without_trainable_parameters_is_refused():
    model = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, toy_split(8, 0), toy_split(4, 1), CFG, device=torch.device("cpu"), progress=False)


# ----------------------------------------------------------------------------- adversarial fine-tuning

AT = {"eps": 8 / 255, "steps": 2}


def _at_cfg(**update):
    from robustlora.config import AdversarialSettings

    return CFG.model_copy(update=dict(max_epochs=3, adversarial=AdversarialSettings(**(AT | update))))


def test_adversarial_fit_crafts_in_eval_mode_and_trains_in_train_mode():
    """Per batch: `steps` forwards with BatchNorm in eval mode (the attack), then one in train mode (the loss)."""
    train, holdout = toy_split(32, 0), toy_split(16, 1)
    model = make_model()
    modes = []
    model.bn1.register_forward_pre_hook(lambda m, _: modes.append(m.training) if torch.is_grad_enabled() else None)
    cfg = _at_cfg(select="clean").model_copy(update=dict(max_epochs=1, batch_size=16))
    fit(model, train, holdout, cfg, device=torch.device("cpu"), progress=False)
    # 2 batches, then the holdout's PGD accuracy (1 batch, eval mode); clean evaluation runs without grad
    assert modes == [False, False, True] * 2 + [False, False]


def test_adversarial_fit_selects_on_holdout_robust_accuracy_and_resumes_exactly(tmp_path):
    from robustlora.training.loop import adversarial_config, robust_accuracy

    train, holdout = toy_split(48, 0), toy_split(16, 1)
    cfg = _at_cfg()
    full = fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False)
    robust = [h["holdout_robust_accuracy"] for h in full.history]
    assert full.best_holdout_accuracy == max(robust) and robust[full.best_epoch - 1] == max(robust)
    model = make_model()
    model.load_state_dict(full.best_state)
    assert robust_accuracy(model, holdout, adversarial_config(cfg.adversarial), 64, torch.device("cpu"),
                           seed=cfg.seed) == full.best_holdout_accuracy
    assert all(h["holdout_robust_accuracy"] <= h["holdout_accuracy"] for h in full.history)
    ckpt = tmp_path / "ckpt.pt"
    fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False, checkpoint_path=ckpt,
        fingerprint="at", stop_after_epochs=1)
    resumed = fit(make_model(seed=5), train, holdout, cfg, device=torch.device("cpu"), progress=False,
                  checkpoint_path=ckpt, fingerprint="at")
    assert resumed.resumed_from_epoch == 1
    for k in full.best_state:
        assert torch.equal(full.best_state[k], resumed.best_state[k]), k
    standard = fit(make_model(), train, holdout, CFG.model_copy(update=dict(max_epochs=3)), device=torch.device("cpu"),
                   progress=False)
    assert not torch.equal(standard.best_state["fc.weight"], full.best_state["fc.weight"])
