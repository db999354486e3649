"""End to end: a queued `dvc exp run` sweep on two workers against an MLflow tracking server (a copy of the tiny
study of tests/e2e.py, so this module runs beside tests/test_pipeline.py on the other xdist worker)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from e2e import CROSS_ARM, _ran, environment, sh, study


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return study(tmp_path_factory, "sweep")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An MLflow tracking server (SQLite backend, local artifact root) on a free port, as the README starts it, minus
    MLflow's job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION: seven huey consumer processes that tracking never uses,
    ~45 CPU-seconds to start on the cores the sweep needs). In its own process group, so that teardown ends the
    server's workers too."""
    env = environment() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # started while the study may be building
    where = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = open(where / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{where / 'mlflow.db'}", "--artifacts-destination", str(where / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None, (where / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        raise AssertionError("the MLflow server did not answer in 2 min:\n" + (where / "server.log").read_text()[-3000:])
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)  # the group: the CLI, uvicorn and its worker
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True


def _wait_for_queue(root, env, minutes: int = 15) -> str:
    """`dvc queue status` once nothing is queued or running. Cheaply: DVC starts each queue worker through dvc-task,
    which records it in .dvc/tmp/exps/celery/<worker>.json (its pid, then its return code), and a worker exits once
    the queue is empty; those files are read every second, while `dvc queue status` (about 2 CPU-seconds, which the
    two workers need) runs once they all exited, and every 30 s as a backstop should they never show up."""
    workers = root / ".dvc" / "tmp" / "exps" / "celery"
    deadline = time.monotonic() + 60 * minutes
    asked, status = time.monotonic(), ""
    while time.monotonic() < deadline:
        infos = []
        for path in workers.glob("dvc-exp-worker-*.json"):
            try:
                infos.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # being written: look again in a second
                infos.append({"pid": None, "returncode": None, "busy": True})
        exited = bool(infos) and all(i.get("returncode") is not None or not (i.get("busy") or _alive(i.get("pid")))
                                     for i in infos)
        if exited or time.monotonic() - asked > 30:
            status = sh([sys.executable, "-m", "dvc", "queue", "status"], root, env)
            if not any(word in status for word in ("Queued", "Running")):
                return status
            asked = time.monotonic()
            if exited:  # workers gone but tasks left (should not happen): ask DVC again, not every second
                time.sleep(4)
        time.sleep(1)
    raise AssertionError(f"the queue did not finish in {minutes} minutes:\n{status}")


def test_queued_rank_sweep_on_two_workers_logs_into_a_tracking_server(server, repo):
    import mlflow
    import pandas as pd

    root, env, _ = repo
    # one thread per worker (e2e.environment(): OMP_NUM_THREADS=1): two torch processes with 2 threads each on 2 cores
    # run many times slower
    assert env["OMP_NUM_THREADS"] == "1"
    env = env | {"MLFLOW_TRACKING_URI": server}
    # a Hydra sweep over one arm's rank ('+': a key params.yaml does not have yet; the other arms are reused, which
    # keeps the test short), with a smaller Square budget: Square alone of the black-box attacks is re-run for every arm
    sh([sys.executable, "-m", "dvc", "exp", "run", "--queue", "-S", "+variants.lora_fc.rank=2,8",
        "-S", "blackbox.square.queries=6"], root, env)
    sh([sys.executable, "-m", "dvc", "exp", "run", "--queue", "--name", "broken", "-S", "lora.rank=0"], root, env)
    sh([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], root, env)
    status = _wait_for_queue(root, env)
    sh([sys.executable, "-m", "dvc", "queue", "stop"], root, env)
    rows = [line.split() for line in status.splitlines()]
    states = {cols[1]: cols[-1] for cols in rows if len(cols) >= 4 and cols[-1] in ("Success", "Failed")}
    failed = {name: sh([sys.executable, "-m", "dvc", "queue", "logs", name], root, env)[-3000:]
              for name, state in states.items() if state == "Failed" and name != "broken"}
    assert states.pop("broken", None) == "Failed" and sorted(states.values()) == ["Success", "Success"], (status, failed)
    for name in states:  # each experiment re-ran the swept arm and what follows it, nothing else
        log = sh([sys.executable, "-m", "dvc", "queue", "logs", name], root, env)
        assert _ran(log) == {"train@lora_fc", "attack@lora_fc", "report"} | CROSS_ARM, log[-3000:]
        # the cross-arm stages re-attack the changed arm only; Square, whose budget changed, every arm
        for attack in ("hopskipjump", "boundary", "zoo"):
            assert (f"{attack}: reused the unchanged rows of pretrained seed 0, baseline seed 0, lora_fc_conv1 seed 0"
                    in log), log[-3000:]
        assert "square: reused" not in log
        assert all("lora_fc seed" not in line for line in log.splitlines() if "reused the unchanged rows" in line)

    # the server has one parent run per experiment, named by experiment and swept value, the arm x seed runs below
    client = mlflow.MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("robustlora")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    tops = {r.data.tags["dvc.experiment"]: r for r in runs if r.data.tags.get("level") == "experiment"}
    assert set(tops) == set(states), sorted(tops)
    for name, top in tops.items():
        rank = top.data.params["variants.lora_fc.rank"]
        swept = f"blackbox.square.queries=6, variants.lora_fc.rank={rank}"
        assert top.info.run_name == f"{name} {swept}" and top.data.tags["swept.variants.lora_fc.rank"] == rank
        assert top.data.tags["dvc.exp_name"] == name and len(top.data.tags["dvc.exp_baseline_rev"]) == 40
        assert "lora_fc/pgd_robust_acc" in top.data.metrics
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
        # the swept arm, the report and the defences stage's switching system (its cost measured again)
        assert sorted(r.info.run_name.split(" · ")[0] for r in children) == ["lora_fc", "report", "switching"]
        for arm in (r for r in children if r.data.tags.get("level") == "arm"):
            assert arm.info.run_name.endswith(f" · {name} {swept}")
            assert arm.data.params["variant.settings.rank"] == rank and arm.info.status == "FINISHED"
            seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == arm.info.run_id]
            assert sorted(r.data.tags["seed"] for r in seeds) == ["0", "1"]
            for seed in seeds:
                assert seed.info.status == "FINISHED"
                assert {"val_accuracy", "pgd/eps_8/asr", "autoattack/eps_8/robust_accuracy",
                        "square/eps_8/asr"} <= set(seed.data.metrics)
                assert client.get_run(seed.info.run_id).inputs.dataset_inputs, "dataset not logged"
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))

    # the sweep report: every experiment (the baseline commit too) with its rank, the failed one with its log
    sh([sys.executable, "stages/sweep.py", "--out", "reports/sweep"], root, env)
    table = pd.read_csv(root / "reports" / "sweep" / "sweep.csv")
    lora = table[table["arm"] == "lora_fc"]
    assert sorted(lora["rank"]) == [2, 4, 8] and (lora["trainable_params"] == lora["rank"] * (3 + 512)).all()
    assert set(table["experiment"]) == set(states) | {"main"}
    text = (root / "reports" / "sweep" / "sweep.md").read_text()
    failed = text.split("broken", 1)[1]
    assert "lora.rank must be" in failed or "rank must be" in failed, failed[:2000]  # its log tail says why
    assert list((root / "reports" / "sweep" / "figures").glob("*.png"))


