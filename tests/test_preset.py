"""tools/preset.py: a params overlay (configs/paper.yaml) as one `dvc exp run -S ...`, checked before it runs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import preset  # noqa: E402


def test_the_paper_overlay_loads_on_top_of_params_and_sets_every_leaf():
    args = preset.set_args(ROOT / "configs" / "paper.yaml")
    sets = dict(a.split("=", 1) for a in args[1::2])
    assert args[::2] == ["-S"] * len(sets)
    assert sets["data.source"] == "tiny-imagenet" and sets["model.input_size"] == "64"
    assert sets["attack.n_images"] == "10000" and sets["autoattack.version"] == "standard"
    assert sets["train.seeds"] == "[0, 1, 2, 3, 4]" and sets["attack.grid_images"] == "null"
    overlay = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    assert len(sets) == len(list(preset.leaves(overlay)))


def test_unknown_keys_and_bad_values_are_refused_in_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack:\n  n_imagez: 5\n")
    with pytest.raises(SystemExit, match=r"^error: .*bad.yaml: unknown params key 'attack.n_imagez'$"):
        preset.set_args(bad)
    bad.write_text("attack:\n  n_images: -5\n")
    with pytest.raises(SystemExit, match=r"attack.n_images must be"):
        preset.set_args(bad)


def test_dry_run_prints_the_dvc_command():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "preset.py"), "configs/paper.yaml", "-n", "paper",
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.startswith("-m dvc exp run -n paper -S data.source=tiny-imagenet ")


def test_a_new_variant_is_added_whole_with_a_plus(tmp_path: Path):
    params = tmp_path / "params.yaml"
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["variants"].pop("lora_fc_conv1_at", None)
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    overlay = tmp_path / "at.yaml"
    overlay.write_text("variants:\n  lora_fc_conv1_at: {adaptation: lora, targets: [fc, conv1]}\n")
    assert preset.set_args(overlay, params) == ["-S", "+variants.lora_fc_conv1_at={adaptation: lora, targets: [fc, conv1]}"]
