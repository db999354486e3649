"""Faults a user meets: damaged or missing checkpoints, a kill mid-training, a full disk, bad params and inputs.

Each must end in one line naming the culprit (file, params key, value) and leave no half-written output; a damaged
resume point is discarded and training goes on from the last good state, with the weights of an uninterrupted run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from robustlora.config import TrainConfig
from robustlora.data.dataset import Split
from robustlora.errors import DataError, ModelError, OutputError
from robustlora.models.resnet import build_model, load_checkpoint, load_variant, save_checkpoint
from robustlora.training.loop import fit, previous_resume_point
from tiny import TinyNet, make_data, stored

pytestmark = pytest.mark.usefixtures("single_thread")

CFG = TrainConfig(lr=0.05, batch_size=16, max_epochs=4, patience=10, device="cpu", crop_padding=2, eval_batch_size=64)
CPU = torch.device("cpu")
STABLE = ("epoch", "train_loss", "train_accuracy", "holdout_accuracy", "lr")  # history keys without wall-clock times


def _splits() -> tuple[Split, Split]:
    (x, y), (hx, hy) = make_data(48, seed=0, n_classes=2), make_data(16, seed=1, n_classes=2)
    return Split(stored(x), y), Split(stored(hx), hy)


def _model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(n_classes=2)


def _assert_same_run(a, b) -> None:
    assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
    assert [[h[k] for k in STABLE] for h in a.history] == [[h[k] for k in STABLE] for h in b.history]
    for k in a.best_state:
        assert torch.equal(a.best_state[k], b.best_state[k]), k


def run_stage(name, *args, cwd=ROOT):
    """A stage command in its own process (what `dvc repro` runs)."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=""))


@pytest.fixture
def stage(monkeypatch, capsys, tmp_path):
    """Run a stage command in this process, as its `__main__` does (``_common.run(app)`` with the arguments in
    sys.argv), from tmp_path: (exit code, stderr). Saves a process start (a torch import) per call."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "stages"))  # the stages import their `_common`
    monkeypatch.chdir(tmp_path)

    def call(name, *args):
        spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
        capsys.readouterr()
        try:
            module._common.run(module.app)
            code = 0
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err

    return call


def one_line(result) -> str:
    """The stage failed with exit code 1 and exactly one line on stderr; that line. ``result``: a finished process
    or (exit code, stderr)."""
    code, err = (result.returncode, result.stderr) if hasattr(result, "returncode") else result
    assert code == 1, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _write_params(path, raw):
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # params order matters (variants, messages)
    return path


# --- 1a: a damaged resume point ---------------------------------------------------------------------------------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):  # torch.load reads this without complaint: the digest must catch it
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# torch's own words for a broken file differ between versions and sizes: the type and the first sentence
TORCH_FAILED = r"truncated or not a checkpoint \((RuntimeError|OSError|EOFError|UnpicklingError): [^;\n]+\)"
DAMAGE = {  # how to damage a resume point, and (a regex of) what the line then says about it
    "truncated": (_truncate, TORCH_FAILED),
    "empty": (lambda p: p.write_bytes(b""), re.escape("truncated or not a checkpoint (EOFError: the file ends early)")),
    "flipped byte": (_flip_a_byte, re.escape("corrupt (its content does not match its digest)")),
    "foreign file": (lambda p: torch.save({"weights": torch.zeros(3)}, p),
                     re.escape("not a resume point (expected fingerprint, model, optimizer, generator, loop)")),
}


@pytest.fixture(scope="module")
def uninterrupted():
    train, holdout = _splits()
    return fit(_model(), train, holdout, CFG, device=CPU, progress=False)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_resume_point_is_discarded_and_training_resumes_from_the_previous_one(tmp_path, capsys, damage,
                                                                                        uninterrupted):
    train, holdout = _splits()
    ckpt = tmp_path / "checkpoints" / "seed_0.pt"
    fit(_model(), train, holdout, CFG, device=CPU, progress=False, checkpoint_path=ckpt, fingerprint="run",
        stop_after_epochs=2)
    prev = previous_resume_point(ckpt)
    assert prev.name == "seed_0.prev.pt" and ckpt.exists() and prev.exists()  # epoch 2, and epoch 1 behind it
    damage_it, why = DAMAGE[damage]
    damage_it(ckpt)
    capsys.readouterr()
    resumed = fit(TinyNet(n_classes=2), train, holdout, CFG, device=CPU, progress=False, checkpoint_path=ckpt,
                  fingerprint="run", desc="train lora_fc seed 0")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(f"train lora_fc seed 0: discarded {re.escape(str(ckpt))}: {why}; resuming from "
                        f"{re.escape(str(prev))} after epoch 1", line), line
    assert resumed.resumed_from_epoch == 1
    _assert_same_run(resumed, uninterrupted)


def test_with_no_intact_resume_point_training_starts_from_scratch(tmp_path, capsys, uninterrupted):
    train, holdout = _splits()
    ckpt = tmp_path / "seed_0.pt"
    fit(_model(), train, holdout, CFG, device=CPU, progress=False, checkpoint_path=ckpt, fingerprint="run",
        stop_after_epochs=2)
    prev = previous_resume_point(ckpt)
    _truncate(ckpt)
    _flip_a_byte(prev)
    capsys.readouterr()
    restarted = fit(_model(), train, holdout, CFG, device=CPU, progress=False, checkpoint_path=ckpt,
                    fingerprint="run", desc="pretrain")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(f"pretrain: discarded {re.escape(str(ckpt))}: {DAMAGE['truncated'][1]}; "
                        f"{re.escape(str(prev))}: {DAMAGE['flipped byte'][1]}; training from scratch", line), line
    assert restarted.resumed_from_epoch == 0
    _assert_same_run(restarted, uninterrupted)
    assert ckpt.exists() and prev.exists()  # the restarted run wrote its own, intact ones


def test_a_finished_run_leaves_no_resume_points(tmp_path):
    from robustlora.training.loop import discard_resume_point

    train, holdout = _splits()
    ckpt = tmp_path / "seed_0.pt"
    fit(_model(), train, holdout, CFG.model_copy(update={"max_epochs": 2}), device=CPU, progress=False,
        checkpoint_path=ckpt, fingerprint="run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0.prev.pt", "seed_0.pt"]  # no temp files
    discard_resume_point(ckpt)
    assert list(tmp_path.iterdir()) == []


# --- 2: SIGKILL mid-training, then the same command again -------------------------------------------------------------

def _train_slowly(cfg: TrainConfig, ckpt) -> None:
    """The training of _splits() and _model() with a resume point per epoch; each epoch takes a while, so a kill
    lands in the middle of the run, whichever epoch it is."""
    train, holdout = _splits()
    fit(_model(), train, holdout, cfg, device=CPU, progress=False, checkpoint_path=ckpt, fingerprint="run",
        on_epoch=lambda metrics: time.sleep(0.25))
    print("finished", flush=True)


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
    import multiprocessing

    train, holdout = _splits()
    cfg = CFG.model_copy(update={"max_epochs": 8})
    ckpt = tmp_path / "seed_0.pt"
    # a process of its own (forked: torch is imported already), killed as the OOM killer would kill it
    child = multiprocessing.get_context("fork").Process(target=_train_slowly, args=(cfg, ckpt))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not ckpt.exists() and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ckpt.exists() and child.is_alive(), "the training process wrote no resume point"
        os.kill(child.pid, signal.SIGKILL)  # right after the first epoch's resume point: mid-run
    finally:
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    killed_at = torch.load(ckpt, weights_only=True)["loop"]["epoch"]
    assert 1 <= killed_at < 8
    resumed = fit(TinyNet(n_classes=2), train, holdout, cfg, device=CPU, progress=False, checkpoint_path=ckpt,
                  fingerprint="run")
    assert resumed.resumed_from_epoch == killed_at and resumed.epochs_run == 8
    _assert_same_run(resumed, fit(_model(), train, holdout, cfg, device=CPU, progress=False))


# --- 1b: model files the attack stages read ---------------------------------------------------------------------------


def _model_file(tmp_path):
    path = tmp_path / "models" / "lora_fc" / "seed_0.pt"
    save_checkpoint(path, {"fc.weight": torch.zeros(4, 512), "fc.bias": torch.zeros(4)}, ["a", "b", "c", "d"])
    return path


@pytest.mark.parametrize("fault, message", [
    ("missing", re.escape("checkpoint not found")),
    ("truncated", TORCH_FAILED),
    ("empty", re.escape("truncated or not a checkpoint (EOFError: the file ends early)")),
    ("text", TORCH_FAILED),
    ("not a dict", re.escape("expected a dict with 'state_dict' and 'wnids' (as written by robustlora)")),
])
def test_a_broken_model_file_is_one_line_naming_it_and_the_stage_that_writes_it(tmp_path, fault, message):
    path = _model_file(tmp_path)
    if fault == "missing":
        path.unlink()
    elif fault == "truncated":
        _truncate(path)
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ModelError) as info:
        load_variant(path)
    assert re.fullmatch(f"{re.escape(str(path))}: {message}; re-run `dvc repro train@lora_fc`", str(info.value)), \
        str(info.value)
    with pytest.raises(ModelError) as info:  # any other model file: the same line, without a command to run
        load_checkpoint(path)
    assert re.fullmatch(f"{re.escape(str(path))}: {message}", str(info.value)), str(info.value)


def test_every_attack_stage_checks_all_its_model_files_before_attacking(tmp_path, monkeypatch):
    """attack, autoattack, blackbox, transfer and defences find their models through _attacks.model_file (each_model,
    each_model_rows): a missing one is a ModelError naming it and the train stage, before the first attack."""
    monkeypatch.syspath_prepend(str(ROOT / "stages"))
    import _attacks

    from robustlora.config import load_params

    p = load_params(ROOT / "params.yaml")
    models = tmp_path / "models"
    first = p.train.seeds[0]
    for name in p.variants:
        (models / name).mkdir(parents=True)
        (models / name / f"seed_{first}.pt").write_bytes(b"")  # present (not loaded: the attack below never runs)
    attacked = []
    with pytest.raises(ModelError) as info:
        list(_attacks.each_model_rows(p, models, cache=None, settings={}, image_ids=np.arange(3),
                                      attack=attacked.append))
    from robustlora.models.adaptation import training_seeds

    # the first seed file not made above: an arm that trains, its second training seed
    variant, seed = next((v, s) for v, spec in p.variants.items() for s in training_seeds(spec, p.train.seeds)[1:])
    assert str(info.value) == (f"{models}/{variant}/seed_{seed}.pt is missing: run `dvc repro train@{variant}` "
                               f"(train.seeds has seed {seed})")
    assert attacked == []
    for stage in ("attack", "autoattack", "blackbox", "transfer", "defences"):
        assert "_attacks.model_file" in (ROOT / "stages" / f"{stage}.py").read_text() or \
            "_attacks.each_model" in (ROOT / "stages" / f"{stage}.py").read_text(), stage


def _prepared(folder, n=6, size=8, classes=("n01", "n02")):
    """The cheapest prepared target domain: a few noise images per split, classes, manifest."""
    from robustlora import layout

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "holdout", "val"):
        images, labels = layout.split_arrays(folder, split)
        np.save(images, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        np.save(labels, np.arange(n, dtype=np.int64) % len(classes))
    (folder / layout.CLASSES).write_text(json.dumps({"wnids": list(classes), "words": ["", ""]}))
    (folder / layout.MANIFEST).write_text("split,index\n")
    return folder


def test_the_attack_stage_on_a_truncated_model_is_one_line(tmp_path, stage):
    path = _model_file(tmp_path)
    _truncate(path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["seeds"] = [0]
    params = _write_params(tmp_path / "params.yaml", raw)
    line = one_line(stage("attack", "lora_fc", "--prepared", _prepared(tmp_path / "prepared"), "--models",
                          path.parent, "--results", "r.parquet", "--metrics", "m.json", "--plots", "p.csv",
                          "--params", params))
    assert re.fullmatch(f"error: {re.escape(str(path))}: {TORCH_FAILED}; re-run `dvc repro train@lora_fc`", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "params.yaml", "prepared"]


# --- 3: a full disk ---------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at tmp_path/small (root only: mount fails loudly otherwise, this test must not be skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs to fill (run the tests as root): {done.stderr.strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_an_output_error_naming_the_file_and_leaves_nothing(small_disk):
    from robustlora.io import write_json

    (small_disk / "keep.json").write_text("{}")
    with pytest.raises(OutputError) as info:
        write_json(small_disk / "metrics" / "big.json", list(range(1_000_000)))
    assert str(info.value) == (f"{small_disk}/metrics/big.json: no space left on device (0.0 MiB free of 2.0 MiB); "
                               "free some space or write the output elsewhere, then re-run")
    assert sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*")) == ["keep.json", "metrics"]


def test_a_stage_writing_onto_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, small_disk, stage):
    """train@pretrained (no training: the cheapest stage that writes a model) puts its 45 MB model on 2 MiB."""
    prepared = _prepared(tmp_path / "prepared")
    backbone = tmp_path / "backbone.pt"
    torch.manual_seed(0)
    save_checkpoint(backbone, build_model(2, 16).state_dict(), ["n01", "n02"], source="pretrain")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["input_size"] = 16
    raw["train"]["device"] = "cpu"
    params = _write_params(tmp_path / "params.yaml", raw)
    out = small_disk / "models" / "pretrained"
    result = stage("train", "pretrained", "--prepared", prepared, "--backbone", backbone, "--out", out,
                   "--metrics", small_disk / "metrics.json", "--plots", small_disk / "plots", "--params", params)
    assert one_line(result) == (f"error: {out}/seed_0.pt: no space left on device (0.0 MiB free of 2.0 MiB); free "
                                "some space or write the output elsewhere, then re-run")
    assert [p.name for p in small_disk.rglob("*") if p.is_file()] == []  # the temp file is gone too


def test_images_decoded_onto_a_full_disk_are_one_line_naming_the_array_and_leave_nothing(tmp_path, small_disk):
    """The decoders write through memory maps, which die of SIGBUS on a full disk: the arrays' blocks are allocated
    first, so no room is an OutputError naming the array (here before any image is decoded)."""
    from test_data import make_archive

    from robustlora.data import dataset

    archive = make_archive(tmp_path / "a.zip")  # 64 px: 12 KiB an image, 9 train images
    (small_disk / "keep.bin").write_bytes(bytes(2 * 2 ** 20 - 64 * 1024))  # 64 KiB left
    out = small_disk / "prepared" / "target"
    with pytest.raises(OutputError) as info:
        dataset.prepare_domain(archive, out, classes=3, train_per_class=None, val_per_class=None, holdout=0.25,
                               workers=2, progress=False)
    assert re.fullmatch(rf"{out}/train_images\.npy: no space left on device \(0\.\d MiB free of 2\.0 MiB\); free some "
                        "space or write the output elsewhere, then re-run", str(info.value)), str(info.value)
    assert sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*")) == ["keep.bin", "prepared"]


# --- 4: bad params and inputs, one line each, before any work ---------------------------------------------------------


BAD_ATTACK_PARAMS = [  # key, value, the stage whose section it is and its arguments, the message (params.yaml: ...)
    ("attack.convergence.eps", ["3/255"], "attack", ["lora_fc", "--prepared", "p", "--models", "m", "--results", "r",
                                                      "--metrics", "m.json", "--plots", "p.csv"],
     "attack.convergence.eps must be values of attack.eps ({grid}), got 3/255"),
    ("autoattack.attacks", [], "autoattack", ["--prepared", "p", "--models", "m", "--results", "r", "--metrics", "m"],
     "autoattack.attacks must name at least one of apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square"),
    ("transfer.surrogates", ["pretrained", "lora_rank_4"], "transfer",
     ["--prepared", "p", "--models", "m", "--results", "r", "--metrics", "m"],
     "transfer.surrogates names no variant 'lora_rank_4' (have: {variants})"),
]


def _bad_params(folder, key, value, message):
    """params.yaml with ``key`` set to ``value`` in ``folder``, and the line the stages must print for it."""
    raw, default = (yaml.safe_load((ROOT / "params.yaml").read_text()) for _ in range(2))
    assert raw["autoattack"]["version"] == "custom"  # the attacks list matters (standard ignores it)
    section, *middle, leaf = key.split(".")
    node = raw[section]
    for part in middle:
        node = node[part]
    node[leaf] = value
    expected = message.format(grid=", ".join(default["attack"]["eps"]), variants=", ".join(default["variants"]))
    return _write_params(folder / "params.yaml", raw), f"error: params.yaml: {expected}"


@pytest.mark.parametrize("key, value, stage_name, args, message", BAD_ATTACK_PARAMS)
def test_a_bad_attack_param_stops_its_stage_and_the_first_stage_before_any_work(tmp_path, stage, key, value,
                                                                                 stage_name, args, message):
    """The whole of params.yaml is checked when any stage starts: the first stage of the pipeline (download) refuses
    it, before any work, and so does the stage whose section it is."""
    params, expected = _bad_params(tmp_path, key, value, message)
    for name, stage_args in ((stage_name, args), ("download", ["--out", "raw"])):
        assert one_line(stage(name, *stage_args, "--params", params)) == expected, name
    assert list(tmp_path.iterdir()) == [params]  # the stages run in tmp_path: nothing written


def test_the_download_command_refuses_a_bad_attack_param(tmp_path):
    """The same in a process of its own, as `dvc repro` runs it: exit code 1 and the one line, no traceback."""
    key, value, _, _, message = BAD_ATTACK_PARAMS[0]
    params, expected = _bad_params(tmp_path, key, value, message)
    assert one_line(run_stage("download", "--out", tmp_path / "raw", "--params", params, cwd=tmp_path)) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("content, message", [
    (None, "{path}: file not found (write it with `dvc exp show --json > {path}`)"),
    ("{'rev': 1}", "{path}: not JSON from `dvc exp show --json` (Expecting property name enclosed in double quotes: "
                   "line 1 column 2 (char 1))"),
    ('{"workspace": {}}', "{path}: not the output of `dvc exp show --json` (a list of commits, each a mapping), got "
                          "dict; write it with `dvc exp show --json > {path}`"),
    ("[1, 2]", "{path}: not the output of `dvc exp show --json` (a list of commits, each a mapping), got a list of "
               "int; write it with `dvc exp show --json > {path}`"),
])
def test_sweep_with_a_missing_or_foreign_exp_json_is_one_line(tmp_path, stage, content, message):
    path = tmp_path / "exp.json"
    if content is not None:
        path.write_text(content)
    assert one_line(stage("sweep", "--exp-json", path, "--out", tmp_path / "sweep")) == \
        "error: " + message.format(path=path)
    assert not (tmp_path / "sweep").exists()


def _corrupt_crc(archive, member):
    """Flip a byte of ``member``'s stored data: zipfile's CRC check fails when it is read."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["not a jpeg", "bad crc"])
def test_a_corrupt_member_with_several_decoding_workers_is_one_line_and_leaves_nothing(tmp_path, monkeypatch,
                                                                                         damage):
    from test_data import WNIDS, make_archive

    from robustlora.data import dataset

    monkeypatch.setattr(dataset, "DECODE_CHUNK", 4)  # 24 images: 6 chunks over 2 worker processes (forked)
    bad = f"tiny-imagenet-200/train/{WNIDS[1]}/images/{WNIDS[1]}_3.JPEG"
    archive = make_archive(tmp_path / "a.zip", corrupt=bad if damage == "not a jpeg" else None, train=6)
    if damage == "bad crc":
        _corrupt_crc(archive, bad)
    out = tmp_path / "prepared" / "target"
    with pytest.raises(DataError) as info:
        dataset.prepare_domain(archive, out, classes=3, train_per_class=None, val_per_class=None, holdout=0.25,
                               workers=2, progress=False)
    line = str(info.value)
    assert len(line.splitlines()) == 1
    if damage == "not a jpeg":
        assert line.startswith(f"{archive}: corrupt image {bad}: cannot identify image file"), line
    else:
        assert line == f"{archive}: corrupt member {bad}: Bad CRC-32 for file '{bad}'"
    assert list((tmp_path / "prepared").iterdir()) == []  # neither the folder nor its temp sibling


def test_resume_points_are_spaced_in_time_and_a_finished_run_is_read_back_not_retrained(tmp_path, uninterrupted):
    """A resume point at most every resume_every_s (each costs ~0.4 s for ResNet18), the finished state always: a
    stage killed while training its next seed resumes this one by reading it back."""
    train, holdout = _splits()
    ckpt = tmp_path / "seed_0.pt"
    first = fit(_model(), train, holdout, CFG, device=CPU, progress=False, checkpoint_path=ckpt, fingerprint="run",
                resume_every_s=3600.0)
    assert ckpt.exists() and not previous_resume_point(ckpt).exists()  # only the finished state was written
    _assert_same_run(first, uninterrupted)
    epochs = []
    again = fit(_model(), train, holdout, CFG, device=CPU, progress=False, checkpoint_path=ckpt, fingerprint="run",
                on_epoch=epochs.append)
    assert epochs == [] and again.resumed_from_epoch == first.epochs_run  # nothing trained twice
    _assert_same_run(again, uninterrupted)
