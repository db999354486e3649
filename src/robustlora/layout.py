"""Every file name inside an output folder, in one place.

dvc.yaml names the folders (``models/lora_fc``, ``data/raw``, ``results/defences``, ...) and passes them to the stage
commands; what lies inside a folder is named here and nowhere else, so a stage, the library and a notebook always
agree on where a seed's model or a run id is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# data/raw: the archives the download stage writes
TARGET_ARCHIVE = "tiny-imagenet-200.zip"  # Tiny ImageNet's own name; the synthetic target domain uses it too
SOURCE_ARCHIVE = "source.zip"  # the synthetic source domain the backbone is pretrained on
SYNTHETIC_DESCRIPTION = "synthetic.json"  # what the synthetic generator was asked for (the default data)
# data/prepared/<domain>: what the preprocess stage writes per domain
MANIFEST = "manifest.csv"
CLASSES = "classes.json"  # the wnids in label order, and their words
DATA_INFO = "info.json"  # image size, counts, the archive's digest
# results/defences: the defences stage's per-image tables
SQUEEZE_RESULTS = "squeeze.parquet"
SWITCHING_RESULTS = "switching.parquet"
# reports/: what the report stage writes
REPORT = "report.md"
FINDINGS = "findings.json"
FIGURES = "figures"  # the PNGs, linked from report.md as figures/<name>.png
COMPARISONS = "comparisons.csv"
VERSUS_PGD = "attacks_vs_pgd.csv"
QUERY_CURVES = "success_vs_queries.csv"
TRANSFER_MATRIX = "transfer_matrix.csv"
# resumable training state lives outside DVC's outputs, so a killed stage resumes where it stopped
CHECKPOINTS = "checkpoints"
VARIANT_RUN = "run.json"  # models/<variant>/: the MLflow run id of the variant's parent run


def split_arrays(prepared_dir: Path, split: str) -> tuple[Path, Path]:
    """data/prepared/<domain>/<split>_images.npy (uint8, N x H x W x 3) and <split>_labels.npy (int64, N)."""
    return Path(prepared_dir) / f"{split}_images.npy", Path(prepared_dir) / f"{split}_labels.npy"


def per_name(folder: Path, name: str, suffix: str) -> Path:
    """<folder>/<name><suffix>: one file per variant or attack, e.g. results/attack/lora_fc.parquet,
    results/blackbox/square.parquet, metrics/train/lora_fc.json."""
    return Path(folder) / f"{name}{suffix}"


def seed_model(variant_dir: Path, seed: int) -> Path:
    """models/<variant>/seed_<s>.pt: one training seed's model."""
    return Path(variant_dir) / f"seed_{seed}.pt"


def model_variant(path: Path) -> str | None:
    """The variant whose folder holds ``path`` when it is named like a seed's model (:func:`seed_model`), else None."""
    path = Path(path)
    return path.parent.name if re.fullmatch(r"seed_\d+\.pt", path.name) and path.parent.name else None


def seed_run(variant_dir: Path, seed: int) -> Path:
    """models/<variant>/seed_<s>.run.json: the MLflow run id of that seed's training run."""
    return Path(variant_dir) / f"seed_{seed}.run.json"


def variant_run(variant_dir: Path) -> Path:
    """models/<variant>/run.json: the MLflow run id of the variant's parent run."""
    return Path(variant_dir) / VARIANT_RUN


def seed_history(plots_dir: Path, seed: int) -> Path:
    """plots/train/<variant>/seed_<s>.csv: one seed's per-epoch curves."""
    return Path(plots_dir) / f"seed_{seed}.csv"


def pretrain_checkpoint(root: Path) -> Path:
    """<repo>/checkpoints/pretrain.pt: the backbone's resumable training state."""
    return Path(root) / CHECKPOINTS / "pretrain.pt"


def train_checkpoint(root: Path, variant: str, seed: int) -> Path:
    """<repo>/checkpoints/<variant>/seed_<s>.pt: one seed's resumable training state."""
    return Path(root) / CHECKPOINTS / variant / f"seed_{seed}.pt"


def row_checkpoints(root: Path, results: Path) -> Path:
    """<repo>/checkpoints/rows/<results path without its suffix>/: the per-model rows a killed attack stage had
    finished (robustlora.evaluation.rowcache.RowCache's spill folder), e.g. checkpoints/rows/results/autoattack/. A
    results path outside the repository gets a folder named by a digest of its absolute path."""
    root, results = Path(root).resolve(), Path(results).resolve()
    try:
        part = results.relative_to(root).with_suffix("")
    except ValueError:
        part = Path("elsewhere") / hashlib.sha256(str(results).encode()).hexdigest()[:16]
    return root / CHECKPOINTS / "rows" / part
