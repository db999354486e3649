"""End to end: the real `dvc repro` and `dvc exp run` on a tiny config in a temporary git repository."""

import hashlib
import json
import sqlite3
import sys

import pytest

from e2e import BLACKBOX, CROSS_ARM, SEEDS, VARIANTS, _ran, sh, study
from robustlora.analysis.findings import VERDICTS


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return study(tmp_path_factory, "pipeline")


def test_repro_runs_every_stage_and_writes_the_report(repo):
    root, env, log = repo
    expected = ({"download", "preprocess", "validate", "pretrain"} | {f"{s}@{v}" for s in ("train", "attack") for v in VARIANTS}
                | CROSS_ARM | {"report"})
    assert _ran(log) == expected
    report = (root / "reports" / "report.md").read_text()
    assert report.index("## Findings") < report.index("Table 1")  # the report opens with its findings
    assert "lora_fc_conv1" in report and "Sanity checks" in report
    assert "## Beyond FGSM and PGD" in report and "AutoAttack" in report and "HopSkipJump" in report
    assert "Transfer: PGD examples" in report and "the model returns logits" in report
    for name in ("attacks_vs_pgd.csv", "success_vs_queries.csv", "transfer_matrix.csv"):
        assert (root / "reports" / name).stat().st_size > 0
    findings = json.loads((root / "reports" / "findings.json").read_text())
    assert findings, "no findings computed"
    assert {f["verdict"] for f in _findings(findings)} <= set(VERDICTS)
    assert report.index("## Scope of the data") < report.index("## Findings")  # what the figures hold for, first
    assert list((root / "reports" / "figures").glob("*.png"))
    validation = json.loads((root / "metrics" / "validation.json").read_text())
    assert validation["success"] is True
    train = json.loads((root / "metrics" / "train" / "lora_fc.json").read_text())
    assert sorted(train["seeds"]) == ["0", "1"]
    assert train["seeds"]["0"]["trainable_params"] == 4 * (3 + 512)  # rank·(Cout + Cin) for fc 512 -> 3 classes
    assert {"val_accuracy", "best_epoch", "epochs_run", "train_seconds"} <= set(train["mean"]) & set(train["std"])
    assert sorted(p.name for p in (root / "models" / "lora_fc").glob("*.pt")) == ["seed_0.pt", "seed_1.pt"]
    assert sorted(p.name for p in (root / "plots" / "train" / "lora_fc").glob("*.csv")) == ["seed_0.csv", "seed_1.csv"]
    attack = json.loads((root / "metrics" / "attack" / "baseline.json").read_text())
    assert set(attack["pgd"]) == {"eps_2", "eps_8", "eps_0.5"} and set(attack["fgsm"]) == {"eps_2", "eps_8"}
    assert set(attack["pgd"]["eps_8"]["asr"]) == {"mean", "std"} and sorted(attack["seeds"]) == ["0", "1"]
    # nothing changed -> nothing to do
    assert "Data and pipelines are up to date" in sh([sys.executable, "-m", "dvc", "status"], root, env)


def _findings(findings):
    return findings["findings"] if isinstance(findings, dict) and "findings" in findings else findings


def test_per_image_results_cover_every_seed_attack_and_image(repo):
    import pandas as pd

    root, _, _ = repo
    for variant in VARIANTS:
        rows = pd.read_parquet(root / "results" / "attack" / f"{variant}.parquet")
        seeds = [0] if variant == "pretrained" else SEEDS
        assert sorted(rows["seed"].unique()) == seeds
        # FGSM at 2 ε and PGD at full_eps (8/255) on all 10 images, PGD at 2/255 and the sanity ε on the first 6
        # (attack.grid_images), the same images for every seed; PGD's convergence check on the first 4, of the first
        # seed (attack.convergence.all_seeds: false)
        assert len(rows) == len(seeds) * (10 * 3 + 6 * 2) + 4
        main = rows[rows["attack"] != "pgd_strong"]
        images = main.groupby(["attack", "eps", "seed"])["image"].apply(lambda s: tuple(sorted(s)))
        assert images.groupby(level=["attack", "eps"]).nunique().eq(1).all()
        assert sorted(images.map(len).unique()) == [6, 10]
        assert set(images[images.map(len) == 6].index.get_level_values("attack")) == {"pgd"}
        robust = rows["clean_correct"] & rows["adv_correct"]
        assert (robust <= rows["clean_correct"]).all()


def test_attacks_beyond_pgd_have_per_image_rows_for_every_model(repo):
    import pandas as pd

    root, _, _ = repo
    models = {(v, s) for v in VARIANTS for s in ([0] if v == "pretrained" else SEEDS)}
    aa = pd.read_parquet(root / "results" / "autoattack.parquet")
    assert set(zip(aa["variant"], aa["seed"])) == models and set(aa["eps"].round(6)) == {round(8 / 255, 6), 1.0}
    assert aa.groupby(["variant", "seed", "eps"]).size().eq(6).all()
    first_seeds = {(v, 0) for v in VARIANTS}  # the decision-based attacks and ZOO: each arm's first seed (params)
    for attack in BLACKBOX:
        rows = pd.read_parquet(root / "results" / "blackbox" / f"{attack}.parquet")
        expected = models if attack == "square" else first_seeds
        assert set(zip(rows["variant"], rows["seed"])) == expected and set(rows["attack"]) == {attack}
        assert (rows["linf"] <= rows["eps"] + 1e-6).all()
        fooled = rows["clean_correct"] & ~rows["adv_correct"]
        assert rows.loc[fooled, "queries"].gt(0).all() and rows.loc[~fooled, "queries"].isna().all()
    transfer = pd.read_parquet(root / "results" / "transfer.parquet")
    assert set(transfer["attack"]) == {f"transfer_{v}" for v in VARIANTS}
    assert set(zip(transfer["variant"], transfer["seed"])) == models
    attack = pd.read_parquet(root / "results" / "attack" / "baseline.parquet")
    strong = attack.query("attack == 'pgd_strong'")
    # the convergence check runs on the first 4 attacked images, and so does everything beyond PGD on its first N
    assert sorted(strong["image"].unique()) == sorted(attack["image"].unique())[:4] and len(strong) == 4
    assert set(strong["seed"]) == {0}
    assert sorted(aa["image"].unique()) == sorted(attack["image"].unique())[:6]


def test_defences_evaluate_every_model_and_the_switching_system(repo):
    import pandas as pd

    root, _, _ = repo
    train = json.loads((root / "metrics" / "train" / "lora_fc_conv1_at.json").read_text())
    assert {"holdout_robust_accuracy", "train_seconds"} <= set(train["seeds"]["0"])  # adversarial fine-tuning
    history = pd.read_csv(root / "plots" / "train" / "lora_fc_conv1_at" / "seed_0.csv")
    assert (history["holdout_robust_accuracy"] <= history["holdout_accuracy"]).all()
    squeeze = pd.read_parquet(root / "results" / "defences" / "squeeze.parquet")
    models = {(v, s) for v in VARIANTS for s in ([0] if v == "pretrained" else SEEDS)}
    assert set(zip(squeeze["variant"], squeeze["seed"])) == models
    assert squeeze.groupby(["variant", "seed", "attack"]).size().eq(4).all()
    assert set(squeeze["attack"]) == {"fgsm", "pgd", "adaptive"} and (squeeze["holdout_fpr"] <= 0.05).all()
    # against classifier + detector the adaptive attack is never weaker than PGD, image by image
    wide = squeeze.pivot_table(index=["variant", "seed", "image"], columns="attack",
                               values=["adv_correct", "adv_flagged"], aggfunc="first")
    evades = {a: ~wide[("adv_correct", a)].astype(bool) & ~wide[("adv_flagged", a)].astype(bool)
              for a in ("pgd", "adaptive")}
    assert (evades["adaptive"] >= evades["pgd"]).all()
    switching = pd.read_parquet(root / "results" / "defences" / "switching.parquet")
    assert set(switching["seed"]) == set(SEEDS) and set(switching["system"]) == {"lora_fc_conv1+lora_fc_conv1_at"}
    wide = switching.pivot_table(index=["seed", "image"], columns="attack", values="adv_correct", aggfunc="first")
    assert (wide["worst"] == wide.drop(columns="worst").all(axis=1)).all()
    cost = json.loads((root / "metrics" / "defences.json").read_text())["switching_cost"]
    assert cost["n_adapters"] == 2 and cost["switch_s"]["median"] > 0 and cost["bank_bytes"] < cost["full_models_bytes"]
    report = (root / "reports" / "report.md").read_text()
    assert "## Defences" in report and "### Feature squeezing" in report and "### Dynamic adapter switching" in report
    assert "PGD-AT ε=4/255, 1 step of 1.25·ε, random start" in report and "defences_tradeoff.png" in report
    assert (root / "reports" / "figures" / "defences_tradeoff.png").stat().st_size > 0


def test_dvc_metrics_show_lists_accuracy_and_success_rates(repo):
    root, env, _ = repo
    shown = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env, stdout_only=True))
    data = next(iter(shown.values()))["data"]
    assert "val_accuracy" in data["metrics/train/lora_fc.json"]["data"]["mean"]
    assert "mean" in data["metrics/attack/lora_fc.json"]["data"]["pgd"]["eps_2"]["asr"]


def _runs_by_name(db):
    """FINISHED runs by their name without the experiment label ('lora_fc · workspace@abc1234' -> 'lora_fc')."""
    rows = db.execute("select name, run_uuid from runs where status = 'FINISHED'").fetchall()
    return {name.split(" · ")[0]: run for name, run in rows}


def test_mlflow_groups_seed_runs_under_their_arm_under_the_experiment(repo):
    root, env, _ = repo
    db = sqlite3.connect(root / "mlflow.db")
    runs = _runs_by_name(db)
    commit = sh(["git", "rev-parse", "HEAD~1"], root, env, stdout_only=True).strip()  # `dvc repro` ran here
    label = f"workspace@{commit[:7]}"
    expected = set(VARIANTS) | {f"{v}/seed_{s}" for v in VARIANTS[1:] for s in SEEDS} | {"pretrain", "report", label}
    assert expected <= set(runs)

    def tags_of(run):
        return dict(db.execute("select key, value from tags where run_uuid = ?", (run,)).fetchall())

    top = runs[label]  # one parent run per DVC experiment (here: the workspace at that commit)
    assert tags_of(top)["level"] == "experiment" and tags_of(top)["git.commit"] == commit
    for name in [*VARIANTS, "pretrain", "report"]:
        assert tags_of(runs[name])["mlflow.parentRunId"] == top, name
    parent = runs["lora_fc"]
    for seed in SEEDS:
        child = runs[f"lora_fc/seed_{seed}"]
        tags = tags_of(child)
        assert tags["mlflow.parentRunId"] == parent and tags["seed"] == str(seed)
        assert tags.get("stage") == "train@lora_fc" and len(tags.get("git.commit", "")) == 40
        keys = {k for (k,) in db.execute("select distinct key from metrics where run_uuid = ?", (child,))}
        assert {"holdout_accuracy", "val_accuracy", "epoch/holdout_accuracy", "epoch/train_loss", "pgd/eps_2/asr",
                "fgsm/eps_8/robust_accuracy", "clean_accuracy"} <= keys
        steps = [s for (s,) in db.execute(
            "select step from metrics where run_uuid = ? and key = 'epoch/holdout_accuracy' order by step", (child,))]
        assert steps[0] == 1 and steps == sorted(steps)
        # the dataset is an input of every training run: its name, the manifest's md5 and its source
        ((name, digest, source),) = db.execute(
            "select d.name, d.digest, d.dataset_source from datasets d join inputs i on i.source_id = d.dataset_uuid "
            "where i.destination_id = ?", (child,)).fetchall()
        assert "synthetic" in name and "target" in name and "synthetic" in source
        manifest = root / "data" / "prepared" / "target" / "manifest.csv"
        assert digest == hashlib.md5(manifest.read_bytes()).hexdigest()
    params = dict(db.execute("select key, value from params where run_uuid = ?", (parent,)).fetchall())
    assert params["variant.settings.rank"] == "4" and params["variant.name"] == "lora_fc"
    assert params["data.source"] == "synthetic"
    keys = {k for (k,) in db.execute("select distinct key from metrics where run_uuid = ?", (parent,))}
    assert {"mean/val_accuracy", "std/val_accuracy", "mean/pgd/eps_8/asr"} <= keys
    # the experiment run carries params.yaml and the report's headline figures, to compare experiments in the UI
    top_params = dict(db.execute("select key, value from params where run_uuid = ?", (top,)).fetchall())
    assert top_params["lora.rank"] == "4"
    top_metrics = {k for (k,) in db.execute("select distinct key from metrics where run_uuid = ?", (top,))}
    assert {"lora_fc/pgd_robust_acc", "lora_fc/pgd_robust_acc_lo", "baseline/clean_acc_hi"} <= top_metrics
    (kind,) = db.execute("select value from experiment_tags where key = 'mlflow.experimentKind'").fetchone()
    assert kind == "custom_model_development"  # the UI opens on the runs, not on GenAI traces


def test_summary_metrics_have_readable_names_and_intervals(repo):
    import pandas as pd

    root, env, _ = repo
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    for arm in VARIANTS:
        row = summary[arm]
        for key in ("clean_acc", "pgd_robust_acc", "pgd_asr", "fgsm_asr", "autoattack_robust_acc"):
            assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"], (arm, key)
        assert row["n_seeds"] == (1 if arm == "pretrained" else len(SEEDS)) and row["n_images"] == 10
    assert summary["lora_fc"]["trainable_params"] == 4 * (3 + 512) and summary["eps_255"] == 8
    pgd = pd.read_parquet(root / "results" / "attack" / "lora_fc.parquet").query("attack == 'pgd'")
    pgd = pgd[(pgd["eps"] - 8 / 255).abs() < 1e-6]
    assert summary["lora_fc"]["pgd_robust_acc"] == pytest.approx((pgd["clean_correct"] & pgd["adv_correct"]).mean())
    shown = sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env, stdout_only=True)
    states = json.loads(shown[shown.index("["):])
    data = states[-1]["data"]["metrics"]["metrics/summary.json"]["data"]
    assert data["lora_fc"]["pgd_robust_acc"] == summary["lora_fc"]["pgd_robust_acc"]


def test_a_dvc_remote_gives_a_second_machine_the_results_without_recomputing(repo, tmp_path):
    root, env, _ = repo
    remote = tmp_path / "remote"
    sh([sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "shared", str(remote)], root, env)
    sh([sys.executable, "-m", "dvc", "push"], root, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    sh([sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "shared", str(remote)], clone, env)
    sh([sys.executable, "-m", "dvc", "pull"], clone, env)
    for path in ("models/lora_fc/seed_1.pt", "results/attack/baseline.parquet", "results/blackbox/square.parquet",
                 "reports/report.md"):
        assert (clone / path).read_bytes() == (root / path).read_bytes(), path
    assert "Data and pipelines are up to date" in sh([sys.executable, "-m", "dvc", "status"], clone, env)
    log = sh([sys.executable, "-m", "dvc", "repro"], clone, env)
    assert not _ran(log), log[-2000:]  # nothing recomputed on the second machine


def test_temporary_experiment_logs_into_the_users_store(repo):
    root, env, _ = repo
    db = sqlite3.connect(root / "mlflow.db")
    before = db.execute("select count(*) from runs").fetchone()[0]
    # a temporary experiment (in a temp copy of the repo) logs its report run into the user's own store
    log = sh([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "report.n_boot=150"], root, env)
    assert _ran(log) == {"report"}
    runs = db.execute("select r.name, p.value from runs r join params p on p.run_uuid = r.run_uuid "
                      "where p.key = 'report.n_boot' and r.status = 'FINISHED'").fetchall()
    assert ("report", "150") in {(name.split(" · ")[0], value) for name, value in runs} and db.execute("select count(*) from runs").fetchone()[0] > before
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))


def _kill_when(args, root, env, ready, timeout=300) -> str:
    """Start ``args`` (a `dvc repro`) in its own process group, SIGKILL the whole group (DVC and the stage it runs)
    the moment ``ready()`` holds, and return what it printed; fails when it ended before that."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"{' '.join(map(str, args))} ended before the kill:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
    return out


def test_a_stage_killed_mid_training_or_mid_attack_resumes_under_dvc_repro_to_the_same_outputs(tmp_path_factory):
    """SIGKILL to `dvc repro` and its stage (as a dying job or a pulled plug does) mid-training and mid-attack; the
    next `dvc repro` resumes from the resume point or the finished seeds' rows, and ends with the model files and
    results of the uninterrupted run (the shared study's)."""
    root, env, _ = study(tmp_path_factory, "killed")
    env = env | {"ROBUSTLORA_RESUME_EVERY_S": "0"}  # a resume point after every epoch: the tiny runs are 2 epochs
    # --force on the rerun too: this study ran these stages before, so DVC would restore their outputs from its run
    # cache (`--no-run-cache` still does); a run killed the first time has no such entry and runs again, as here
    dvc = [sys.executable, "-m", "dvc", "repro", "--single-item"]
    rerun = [*dvc, "--force"]
    model = root / "models" / "lora_fc" / "seed_0.pt"
    trained = model.read_bytes()
    resume_point = root / "checkpoints" / "lora_fc" / "seed_0.pt"
    _kill_when([*dvc, "--force", "train@lora_fc"], root, env, resume_point.is_file)
    log = sh([*rerun, "train@lora_fc"], root, env)
    assert "train lora_fc seed 0: resuming from" in log, log[-3000:]
    assert model.read_bytes() == trained  # the same weights, and no timing in the file: the same bytes
    assert not resume_point.exists()  # outputs written: the resume points are gone

    results = root / "results" / "attack" / "baseline.parquet"
    uninterrupted = results.read_bytes()
    spill = root / "checkpoints" / "rows" / "results" / "attack" / "baseline"
    # a spilled seed's file (not the hidden temp file it is written to, which a kill can leave behind)
    _kill_when([*dvc, "--force", "attack@baseline"], root, env,
               lambda: any(not p.name.startswith(".") for p in spill.glob("*.parquet")))
    log = sh([*rerun, "attack@baseline"], root, env)
    assert "resumed: the rows of baseline seed 0 were finished by a run that was stopped" in log, log[-3000:]
    assert results.read_bytes() == uninterrupted and not spill.exists()
    # the same results, so no stage after attack@baseline sees a change in them (the forced retrain above is a new
    # training run, with new MLflow run keys in models/lora_fc: the stages reading that folder do)
    status = sh([sys.executable, "-m", "dvc", "status"], root, env)
    assert "attack@baseline" not in status and "results/attack" not in status, status
