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
    # patience 10 never ran out in 4 epochs: the cap ended the run
    assert result.stop_reason == "max_epochs" and not result.stopped_early


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
    assert result.stop_reason == "patience" and result.stopped_early


def test_lr_factor_schedules():
    from robustlora.training.loop import lr_factor

    cfg = CFG.model_copy(update=dict(max_epochs=5, warmup_epochs=1, schedule="cosine"))
    assert [lr_factor(e, cfg) for e in range(5)] == pytest.approx([0.5, 1.0, 0.8535534, 0.5, 0.1464466])
    step = cfg.model_copy(update=dict(schedule="step", step_size=2, gamma=0.5))
    assert [lr_factor(e, step) for e in range(5)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5])
    plateau = cfg.model_copy(update=dict(schedule="plateau"))  # no tie to max_epochs: the decays so far
    assert [lr_factor(e, plateau) for e in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert lr_factor(40, plateau, decay=0.01) == 0.01 and lr_factor(0, plateau, decay=0.01) == 0.5


def test_plateau_schedule_decays_on_a_plateau_and_patience_ends_the_run(tmp_path):
    """A model that cannot change (lr ~ 0, frozen BatchNorm) has a flat holdout score from epoch 1 on: the lr decays
    by gamma every decay_patience epochs and early stopping, not the cap of 30, ends the run; resumption is exact."""
    train, holdout = toy_split(32, 0), toy_split(16, 1)
    cfg = CFG.model_copy(update=dict(lr=1e-30, max_epochs=30, patience=5, decay_patience=2, gamma=0.5,
                                     schedule="plateau", warmup_epochs=0))
    result = fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False, train_batchnorm=False)
    assert len({h["holdout_accuracy"] for h in result.history}) == 1
    assert [h["lr"] / 1e-30 for h in result.history] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25])
    assert (result.epochs_run, result.best_epoch, result.stop_reason) == (6, 1, "patience") and result.stopped_early
    ckpt = tmp_path / "ckpt.pt"
    fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False, train_batchnorm=False,
        checkpoint_path=ckpt, fingerprint="p", stop_after_epochs=4)
    resumed = fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False,
                  train_batchnorm=False, checkpoint_path=ckpt, fingerprint="p")
    assert resumed.resumed_from_epoch == 4 and resumed.stop_reason == "patience"
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in result.history]


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
    # 2 batches, then on the holdout (1 batch, eval mode) the selection PGD (select_steps 10) and the training
    # attack (2 steps); clean evaluation runs without grad
    assert modes == [False, False, True] * 2 + [False] * 10 + [False, False]


def test_adversarial_fit_selects_on_multistep_pgd_not_the_training_attack():
    """At ε = 0.3 one training step (1.25·ε from a random start) leaves every holdout image correct after epoch 1,
    while PGD-10 (0.25·ε steps, the strongest iterate) fools half or more: the selection score is PGD-10's."""
    from robustlora.training.loop import adversarial_config, robust_accuracy, selection_attack

    train, holdout = toy_split(48, 0), toy_split(16, 1)
    cfg = _at_cfg(eps=0.3, steps=1, rel_step_size=1.25).model_copy(update=dict(max_epochs=1))
    result = fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False)
    (epoch,) = result.history
    robust = epoch["holdout_robust_accuracy"]
    assert epoch["holdout_train_attack_accuracy"] == 1.0 and robust <= 0.5
    assert result.best_holdout_accuracy == robust
    model = make_model()
    model.load_state_dict(result.best_state)
    at, sel = adversarial_config(cfg.adversarial), selection_attack(cfg.adversarial)
    assert (sel.steps, sel.step, sel.random_start) == (10, pytest.approx(0.075), True)
    assert robust_accuracy(model, holdout, sel, 64, torch.device("cpu"), seed=cfg.seed, keep="best") == robust
    assert robust_accuracy(model, holdout, at, 64, torch.device("cpu"), seed=cfg.seed) == 1.0


def test_adversarial_fit_selects_on_holdout_robust_accuracy_and_resumes_exactly(tmp_path):
    from robustlora.training.loop import robust_accuracy, selection_attack

    train, holdout = toy_split(48, 0), toy_split(16, 1)
    cfg = _at_cfg()
    full = fit(make_model(), train, holdout, cfg, device=torch.device("cpu"), progress=False)
    robust = [h["holdout_robust_accuracy"] for h in full.history]
    assert full.best_holdout_accuracy == max(robust) and robust[full.best_epoch - 1] == max(robust)
    model = make_model()
    model.load_state_dict(full.best_state)
    assert robust_accuracy(model, holdout, selection_attack(cfg.adversarial), 64, torch.device("cpu"),
                           seed=cfg.seed, keep="best") == full.best_holdout_accuracy
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


def test_selection_settings_are_validated():
    from pydantic import ValidationError

    from robustlora.config import AdversarialSettings

    with pytest.raises(ValidationError, match="select_steps"):
        AdversarialSettings(select_steps=0)
    with pytest.raises(ValidationError, match="select_rel_step_size"):
        AdversarialSettings(select_rel_step_size=0)
    assert (AdversarialSettings().select_steps, AdversarialSettings().select_rel_step_size) == (10, 0.25)


def test_train_variant_reports_what_ended_training(tmp_path):
    """The train metrics say whether early stopping (patience) or the cap (max_epochs) ended each run."""
    import numpy as np

    from robustlora import layout
    from robustlora.config import ModelConfig, VariantSpec
    from robustlora.io import write_json
    from robustlora.models.resnet import save_checkpoint
    from robustlora.training.study import train_variant

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    write_json(prepared / layout.CLASSES, {"wnids": ["n0", "n1"]})
    for name, (split, seed) in {"train": (16, 0), "holdout": (8, 1), "val": (8, 2)}.items():
        s = toy_split(split, seed)
        images, labels = layout.split_arrays(prepared, name)
        np.save(images, s.images.numpy())
        np.save(labels, s.labels.numpy())
    backbone = tmp_path / "backbone.pt"
    save_checkpoint(backbone, make_model().state_dict(), ["n0", "n1"])
    spec = VariantSpec(name="lora_fc", adaptation="lora", targets=("fc",))
    kwargs = dict(backbone_path=backbone, prepared_dir=prepared, model_cfg=ModelConfig(input_size=16), seed=0)
    capped, _ = train_variant(spec, CFG.model_copy(update=dict(max_epochs=1)), out_path=tmp_path / "a.pt", **kwargs)
    assert (capped["epochs_run"], capped["stop_reason"], capped["stopped_early"]) == (1, "max_epochs", False)
    flat = CFG.model_copy(update=dict(lr=1e-30, max_epochs=20, patience=1, schedule="plateau"))
    stopped, history = train_variant(spec, flat, out_path=tmp_path / "b.pt", **kwargs)
    assert (stopped["epochs_run"], stopped["stop_reason"], stopped["stopped_early"]) == (2, "patience", True)
    assert len(history) == 2
    untrained, _ = train_variant(VariantSpec(name="p", adaptation="none"), None, out_path=tmp_path / "c.pt", **kwargs)
    assert untrained["epochs_run"] == 0 and "stop_reason" not in untrained
