"""The outbox (robustlora.tracking.outbox): stages record, the report stage logs every stage's record in one process;
nothing recorded is lost to a tracking outage, and nothing is logged twice."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from robustlora import tracking
from robustlora.tracking import outbox
from robustlora.tracking.record import publish_pending

_ENV = ["MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "DVC_ROOT",
        "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", outbox.EACH_STAGE_ENV]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def _client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root.resolve()}/mlflow.db")


def _runs(root: Path) -> dict[str, object]:
    client = _client(root)
    exp = client.get_experiment_by_name("boxed")
    if exp is None:
        return {}
    return {r.info.run_name.split(" · ")[0]: r for r in client.search_runs([exp.experiment_id], max_results=500)}


def _train(root: Path, models: Path) -> tracking.Recorder:
    """What a train stage records: an arm run with one seed run (epochs), key files written beside the model."""
    rec = tracking.Recorder("boxed", repo_root=root)
    arm = rec.run("lora_fc", {"variant": {"rank": 4}}, {"stage": "train@lora_fc", "level": "arm"})
    seed = rec.run("lora_fc/seed_0", {"seed": 0}, {"level": "seed"}, parent=arm)
    for epoch, loss in ((1, 0.5), (2, 0.25)):
        seed.log_epoch({"epoch": epoch, "train_loss": loss})
    seed.write_key(models / "seed_0.run.json")
    seed.end()
    arm.write_key(models / "run.json")
    arm.end()
    return rec


def _attack(root: Path, models: Path, asr: float = 0.5) -> tracking.Recorder:
    rec = tracking.Recorder("boxed", repo_root=root)
    rec.into(models / "seed_0.run.json", {"pgd/asr": asr})
    return rec


def _report(root: Path) -> tracking.Recorder:
    rec = tracking.Recorder("boxed", repo_root=root)
    run = rec.run("report", {"report": {"eps": "4/255"}}, {"stage": "report"})
    run.log_metrics({"findings": 3})
    run.end()
    rec.log_to_experiment({"lora_fc/pgd_robust_acc": 0.25})
    return rec


def test_stages_record_and_the_report_logs_every_record_in_order(tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    assert _train(tmp_path, models).finish("train@lora_fc") is None
    assert _attack(tmp_path, models).finish("attack@lora_fc") is None
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith("MLflow: recorded in ") and "python stages/publish.py" in line
                                 for line in out)
    assert not (tmp_path / "mlflow.db").exists()  # nothing was logged, mlflow not even imported for it
    assert [p.name.split("-", 2)[2] for p in outbox.pending(tmp_path)] == ["train@lora_fc.json",
                                                                           "attack@lora_fc.json"]

    uri = _report(tmp_path).finish("report", flush=True)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and outbox.pending(tmp_path) == []
    runs = _runs(tmp_path)
    assert set(runs) == {"lora_fc", "lora_fc/seed_0", "report", "workspace@nogit"}
    seed = runs["lora_fc/seed_0"]
    # the attack's figures went into the training run its key file named, recorded before the run existed
    assert seed.data.metrics == {"epoch/train_loss": 0.25, "pgd/asr": 0.5}
    assert seed.data.tags["mlflow.parentRunId"] == runs["lora_fc"].info.run_id
    key = json.loads((models / "seed_0.run.json").read_text())["run_key"]
    assert seed.data.tags["robustlora.run_key"] == key
    history = _client(tmp_path).get_metric_history(seed.info.run_id, "epoch/train_loss")
    assert seed.info.start_time <= min(m.timestamp for m in history)  # the times recorded, not the report's
    top = runs["workspace@nogit"]
    assert top.data.metrics == {"lora_fc/pgd_robust_acc": 0.25}
    assert runs["report"].data.tags["mlflow.parentRunId"] == top.info.run_id


def test_a_stage_that_runs_again_replaces_its_waiting_record(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _train(tmp_path, models).finish("train@lora_fc")
    _attack(tmp_path, models, 0.5).finish("attack@lora_fc")
    _attack(tmp_path, models, 0.75).finish("attack@lora_fc")  # re-run: its outputs, and its record, replaced
    _train(tmp_path, models).finish("train@baseline")  # another stage's record stays
    names = [p.name.split("-", 2)[2] for p in outbox.pending(tmp_path)]
    assert names == ["train@lora_fc.json", "attack@lora_fc.json", "train@baseline.json"]
    publish_pending(tmp_path)
    seeds = [r for n, r in _runs(tmp_path).items() if n == "lora_fc/seed_0"]
    assert len(seeds) == 1


def _dead_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on: the server went away
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_outage_fails_only_the_report_in_one_line_and_the_records_wait(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    port = _dead_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    _train(tmp_path, models).finish("train@lora_fc")  # the server is down: training is not affected
    _attack(tmp_path, models).finish("attack@lora_fc")
    with pytest.raises(tracking.TrackingError) as err:
        _report(tmp_path).finish("report", flush=True)
    assert str(err.value).startswith(f"tracking server http://127.0.0.1:{port}: not reachable")
    assert "\n" not in str(err.value)
    waiting = outbox.pending(tmp_path)
    assert len(waiting) == 3 and json.loads(waiting[0].read_text())["tried"] is True
    assert "3 recorded stage(s) wait in" in outbox.waiting_line(tmp_path)

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the server is back (here: the local store)
    assert publish_pending(tmp_path)[0] == 3 and outbox.pending(tmp_path) == []
    runs = _runs(tmp_path)
    assert runs["lora_fc/seed_0"].data.metrics == {"epoch/train_loss": 0.25, "pgd/asr": 0.5}
    assert "report" in runs and outbox.waiting_line(tmp_path) is None


def test_logging_cut_short_is_completed_without_a_second_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    models = tmp_path / "models"
    models.mkdir()
    _train(tmp_path, models).finish("train@lora_fc")
    real = MlflowClient.create_run

    def failing(self, *args, **kwargs):
        if kwargs.get("run_name", "").startswith("lora_fc/seed_0"):
            raise MlflowException("INTERNAL_ERROR: disk I/O error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", failing)
    with pytest.raises(tracking.TrackingError, match="disk I/O error"):
        publish_pending(tmp_path)
    assert set(_runs(tmp_path)) == {"lora_fc", "workspace@nogit"}  # the arm's run was created before it failed
    monkeypatch.setattr(MlflowClient, "create_run", real)
    assert publish_pending(tmp_path)[0] == 1
    runs = _client(tmp_path).search_runs([_client(tmp_path).get_experiment_by_name("boxed").experiment_id])
    assert sorted(r.info.run_name.split(" · ")[0] for r in runs) == ["lora_fc", "lora_fc/seed_0", "workspace@nogit"]
    seed = next(r for r in runs if r.info.run_name.startswith("lora_fc/seed_0"))
    assert len(_client(tmp_path).get_metric_history(seed.info.run_id, "epoch/train_loss")) == 2


def test_each_stage_logs_at_once_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(outbox.EACH_STAGE_ENV, "1")
    models = tmp_path / "models"
    models.mkdir()
    assert _train(tmp_path, models).finish("train@lora_fc") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert "lora_fc/seed_0" in _runs(tmp_path) and outbox.pending(tmp_path) == []


def test_the_report_logs_its_own_experiment_and_leaves_the_others_waiting(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("DVC_EXP_NAME", "other-exp")
    _train(tmp_path, models).finish("train@lora_fc")  # a queued experiment whose report failed
    monkeypatch.setenv("DVC_EXP_NAME", "this-exp")
    _report(tmp_path).finish("report", flush=True)
    assert set(_runs(tmp_path)) == {"report", "this-exp"}
    assert "1 recorded stage(s) wait in" in capsys.readouterr().out
    assert publish_pending(tmp_path)[0] == 1
    runs = _runs(tmp_path)
    assert runs["lora_fc"].data.tags["dvc.experiment"] == "other-exp" and "other-exp" in runs  # as recorded


def test_an_entry_another_worker_takes_while_listing_is_skipped_not_an_error(tmp_path: Path, monkeypatch) -> None:
    """Queue workers list the outbox and read each entry; one another worker claims (renames) in between is gone by
    then: not an unreadable entry (this failed a 4-worker run once)."""
    folder = outbox.outbox_dir(tmp_path)
    folder.mkdir(parents=True)
    taken, kept = folder / "00000000000000000001-1-train.json", folder / "00000000000000000002-2-train.json"
    for path in (taken, kept):
        path.write_text(json.dumps({"version": outbox.VERSION, "stage": "train", "group": "g"}))
    read = outbox.read_entry

    def claimed_first(path):
        if path == taken:
            path.rename(path.with_name(path.name + f"{outbox.CLAIM}1"))  # as publish_pending claims it
        return read(path)

    monkeypatch.setattr(outbox, "read_entry", claimed_first)
    assert outbox.pending(tmp_path) == [kept]


def test_an_unreadable_entry_is_one_line_naming_it(tmp_path: Path) -> None:
    folder = outbox.outbox_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "00000000000000000001-1-train.json").write_text("{not json")
    with pytest.raises(tracking.TrackingError, match="00000000000000000001-1-train.json: not an outbox entry"):
        outbox.pending(tmp_path)


_WORKER = """
import os, sys, time
from pathlib import Path
from robustlora import tracking
root, i, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rec = tracking.Recorder("boxed", repo_root=root)
for arm in ("lora_fc",):
    parent = rec.run(arm, {"rank": i}, {"level": "arm"})
    for seed in range(2):
        run = rec.run(f"{arm}/seed_{seed}", {"seed": seed}, {"level": "seed"}, parent=parent)
        for epoch in range(1, 6):
            run.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch + i})
        run.end()
    parent.end()
rec.log_to_experiment({"worker": float(i)})
rec.finish(f"train@w{i}")
while not go.exists():  # start logging together
    time.sleep(0.01)
rec = tracking.Recorder("boxed", repo_root=root)
r = rec.run("report", {}, {"stage": "report"}); r.log_metrics({"findings": i}); r.end()
print(rec.finish("report", flush=True))
"""


def test_four_queue_workers_logging_at_once_into_a_new_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    """`dvc queue start -j 4` on the default store: four report stages log their experiments into one SQLite file at
    the same moment, the first ones creating the store and the experiment; every run and metric arrives once."""
    import os
    import subprocess
    import sys
    import time

    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(i), str(go)], cwd=tmp_path,
                              env={**env, "DVC_EXP_NAME": f"exp-{i}"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.monotonic() + 120
    while len(outbox.pending(tmp_path)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("boxed").experiment_id], max_results=1000)
    names = sorted(r.info.run_name for r in runs)
    expected = [[f"exp-{i}"] + [f"{n} · exp-{i}" for n in ("lora_fc", "report", "lora_fc/seed_0", "lora_fc/seed_1")]
                for i in range(4)]
    assert names == sorted(sum(expected, [])) and outbox.pending(tmp_path) == []
    for run in runs:
        if "/seed_" in run.info.run_name:
            assert len(client.get_metric_history(run.info.run_id, "epoch/train_loss")) == 5, run.info.run_name


def test_the_report_prints_the_direct_link_to_the_runs_table(tmp_path: Path, capsys) -> None:
    """MLflow 3's UI opens on its GenAI home and an experiment on a traces overview: the report says where the runs
    table is, by a route the installed UI has."""
    import mlflow

    _report(tmp_path).finish("report", flush=True)
    out = capsys.readouterr().out
    experiment = _client(tmp_path).get_experiment_by_name("boxed")
    uri = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert (f"MLflow runs: http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs "
            f"(after `mlflow ui --backend-store-uri {uri}`)") in out
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    assert any('experiments/:experimentId/runs"' in p.read_text(errors="ignore") for p in bundle.glob("*.js"))
    from robustlora.tracking.store import runs_view_link

    assert runs_view_link("no such experiment", uri) is None
