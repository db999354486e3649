"""End to end, the team setup on real servers: a queued `dvc exp run` sweep on two workers against an MLflow tracking
server on PostgreSQL with its artifacts on S3 (moto's server), then the sweep pushed to a DVC remote on the same S3
and pulled, byte-identical, into a fresh clone (README's *Scale beyond one box*; the servers: tests/servers.py). On a
copy of the tiny study of tests/e2e.py, so this module runs beside tests/test_pipeline.py on the other xdist worker."""

import filecmp
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import servers
from conftest import ROOT
from e2e import CROSS_ARM, _ran, environment, sh, study


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return study(tmp_path_factory, "sweep")


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The team's servers (tests/servers.py): PostgreSQL, an S3-compatible store (moto) and an MLflow tracking
    server on the two, as README's *Scale beyond one box* starts them, on free ports. Started in a background thread
    so that they come up while `repo` builds the tiny study (or waits for the other xdist worker to); `server` waits
    for them. Without PostgreSQL the module fails, saying what .ci/run installs."""
    try:
        servers.postgres_bin()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    started = servers.Team(tmp_path_factory.mktemp("server"), environment())
    pool = ThreadPoolExecutor(1)
    future = pool.submit(started.start)
    yield started, future
    started.stop_waiting()
    try:
        future.result(timeout=180)
    except Exception:  # reported by `server`
        pass
    pool.shutdown()
    started.stop()


@pytest.fixture(scope="module")
def server(team, repo):  # after repo: the servers start while the study builds
    started, future = team
    try:
        return future.result(timeout=600).uri
    except Exception as error:
        pytest.fail(f"the team's servers did not start: {error}", pytrace=False)


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


def _dvc(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else args


def test_readme_team_section_shows_the_commands_the_team_test_runs():
    """README's *Scale beyond one box* gives the exact command lines tests/servers.py runs (with its ports)."""
    section = (ROOT / "README.md").read_text().split("### Scale beyond one box", 1)[1].split("\n## ", 1)[0]
    section = re.sub(r"\\\n\s*", "", section)  # a command continued over lines is one line
    values = servers.README_PORTS | {"pgdata": "pgdata"}
    expected = [template.format(**values) for template in [*servers.COMMANDS.values(), *servers.DVC_COMMANDS]]
    expected += [f"{k}={v.format(**values)}" for k, v in (servers.S3_ENV | servers.SERVER_ENV).items()]
    assert not [line for line in expected if line not in section], section


def test_queued_rank_sweep_on_two_workers_logs_into_a_tracking_server(server, team, repo, request):
    import mlflow
    import pandas as pd

    root, env, _ = repo
    started, _ = team
    # one thread per worker (e2e.environment(): OMP_NUM_THREADS=1): two torch processes with 2 threads each on 2 cores
    # run many times slower
    assert env["OMP_NUM_THREADS"] == "1"
    # the workers know the tracking server only (it proxies artifacts to S3); DVC's remote needs the bucket's keys
    env = env | {"MLFLOW_TRACKING_URI": server}
    s3 = env | started.s3_env
    for command in servers.DVC_COMMANDS:  # the team's DVC remote, committed, before the sweep
        sh(_dvc(shlex.split(command.format(**started.ports))), root, env)
    sh(["git", "commit", "-qm", "team remote", ".dvc/config"], root, env)
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
    printed = set()  # the link to the runs table the report stage prints
    for name in states:  # each experiment re-ran the swept arm and what follows it, nothing else
        log = sh([sys.executable, "-m", "dvc", "queue", "logs", name], root, env)
        printed |= set(re.findall(r"MLflow runs: (\S+)", log))
        assert _ran(log) == {"train@lora_fc", "attack@lora_fc", "report"} | CROSS_ARM, log[-3000:]
        # the cross-arm stages re-attack the changed arm only; Square, whose budget changed, every arm
        for attack in ("hopskipjump", "boundary", "zoo"):
            assert (f"{attack}: reused the unchanged rows of pretrained seed 0, baseline seed 0, lora_fc_conv1 seed 0"
                    in log), log[-3000:]
        assert "square: reused" not in log
        assert all("lora_fc seed" not in line for line in log.splitlines() if "reused the unchanged rows" in line)

    # share both sweep points while the server and the sweep report are checked: their git refs to the git remote
    # (a bare repository here), their outputs to the DVC remote on S3 (`dvc exp push` holds DVC's lock;
    # `dvc exp show`, which stages/sweep.py runs, takes none)
    origin, clone = root.parent / "origin.git", root.parent / "clone"
    sh(["git", "init", "-q", "--bare", str(origin)], root, env)
    sh(["git", "remote", "add", "origin", str(origin)], root, env)
    sh(["git", "push", "-q", "origin", "main"], root, env)
    began = time.monotonic()
    pushing = subprocess.Popen(_dvc(["dvc", "exp", "push", "origin", *states]), cwd=root, env=s3, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: pushing.poll() is None and pushing.kill())  # a check below failed

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

    # the link the report stage prints to the runs table (MLflow 3's UI opens on a GenAI home): the served UI routes
    # it, and the REST API behind it knows the experiment
    link = f"{server}/#/experiments/{experiment.experiment_id}/runs"
    assert printed == {link}, printed
    assert _ui_route_resolves(server, link) == "robustlora"

    # what a team does with the sweep once shared: keep the chosen point as a branch; a fresh clone of that branch
    # pulls byte-identical results from S3
    out, _ = pushing.communicate(timeout=600)
    assert pushing.returncode == 0, out[-4000:]
    waited = time.monotonic()
    chosen = next(name for name, top in tops.items() if top.data.params["variants.lora_fc.rank"] == "8")
    sh(_dvc(["dvc", "exp", "branch", chosen, "lora-fc-rank-8"]), root, env)
    sh(["git", "push", "-q", "origin", "lora-fc-rank-8"], root, env)
    shared = sh(["git", "ls-remote", str(origin), "refs/exps/*"], root, env)
    assert all(re.search(rf"refs/exps/.*/{name}$", shared, re.M) for name in states), shared
    sh(["git", "clone", "-q", "-b", "lora-fc-rank-8", str(origin), str(clone)], root.parent, env)
    assert not (clone / ".dvc" / "config.local").exists()  # its own cache: everything comes from S3
    sh(_dvc(["dvc", "pull"]), clone, s3)
    pulled = _same_as_the_run(clone, _cache_dir(root))
    assert {"models/lora_fc/seed_0.pt", "models/lora_fc/seed_1.pt", "reports/report.md",
            "results/attack/lora_fc.parquet"} <= pulled, sorted(pulled)
    print(f"exp push: {waited - began:.1f} s beside the checks; branch, clone, pull and compare: "
          f"{time.monotonic() - waited:.1f} s, {len(pulled)} files pulled")

    # every run and metric is in the server, equal to the pulled files; the report's artifacts are in the bucket
    assert all(r.data.metrics for r in runs if r.info.status == "FINISHED"), [
        r.info.run_name for r in runs if r.info.status == "FINISHED" and not r.data.metrics]
    top = tops[chosen]
    summary = json.loads((clone / "metrics" / "summary.json").read_text())
    headline = {f"{arm}/{key}": value for arm, row in summary.items() if isinstance(row, dict)
                for key, value in row.items() if isinstance(value, (int, float))}
    assert headline and all(top.data.metrics[k] == pytest.approx(v, abs=1e-6) for k, v in headline.items())
    arm = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id
               and r.data.tags.get("level") == "arm")
    trained = json.loads((clone / "metrics" / "train" / "lora_fc.json").read_text())
    for seed in (r for r in runs if r.data.tags.get("mlflow.parentRunId") == arm.info.run_id):
        assert seed.data.metrics["val_accuracy"] == pytest.approx(
            trained["seeds"][seed.data.tags["seed"]]["val_accuracy"], abs=1e-6)
    report = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id
                  and r.info.run_name.startswith("report"))
    listed = {a.path for a in client.list_artifacts(report.info.run_id, "report")}
    assert {"report/report.md", "report/findings.json", "report/comparisons.csv", "report/figures"} <= listed, listed
    assert client.list_artifacts(report.info.run_id, "report/figures")
    downloaded = mlflow.artifacts.download_artifacts(run_id=report.info.run_id, artifact_path="report/report.md",
                                                     dst_path=str(root.parent / "artifact"), tracking_uri=server)
    assert filecmp.cmp(downloaded, clone / "reports" / "report.md", shallow=False)
    stored = _bucket_keys(started, "mlflow/")
    assert any(k.endswith(f"/{report.info.run_id}/artifacts/report/report.md") for k in stored), sorted(stored)[:20]
    assert any(k.startswith("dvc/files/md5/") for k in _bucket_keys(started, "dvc/"))


def _ui_route_resolves(server: str, link: str) -> str:
    """The experiment's name that `link` (<server>/#/experiments/<id>/runs) shows: the UI the server serves is a hash
    router with that route, and the REST API it calls returns the experiment."""
    index = urllib.request.urlopen(f"{server}/", timeout=30).read().decode()
    bundle = re.search(r'src="([^"]*static/js/main\.[0-9a-f]+\.js)"', index).group(1)
    code = urllib.request.urlopen(f"{server}/{bundle.lstrip('./')}", timeout=60).read().decode()
    assert '"/experiments/:experimentId/runs"' in code and "createHashRouter" in code
    found = re.fullmatch(re.escape(server) + r"/#/experiments/(\w+)/runs", link)
    assert found, link
    with urllib.request.urlopen(f"{server}/ajax-api/2.0/mlflow/experiments/get?experiment_id={found.group(1)}",
                                timeout=30) as answer:
        return json.load(answer)["experiment"]["name"]


def _cache_dir(root):
    """The study's DVC cache (tests/e2e.py: cache.dir in .dvc/config.local, shared with the queue's executors)."""
    local = (root / ".dvc" / "config.local").read_text()
    return Path(re.search(r"dir = (.+)", local).group(1).strip())


def _same_as_the_run(clone, cache) -> set[str]:
    """The files DVC pulled into the clone (every file of every output in its dvc.lock that is in its cache, not in
    git): each has the lock's md5 and the same bytes as the object the run stored in the study's cache. Returns
    their paths."""
    import hashlib

    def obj(root, md5):
        return root / "files" / "md5" / md5[:2] / md5[2:]

    own, pulled = clone / ".dvc" / "cache", []
    for stage in yaml.safe_load((clone / "dvc.lock").read_text())["stages"].values():
        for out in stage.get("outs", []):
            if not obj(own, out["md5"]).is_file():  # cache: false: the file comes from git
                continue
            if out["md5"].endswith(".dir"):
                entries = json.loads(obj(own, out["md5"]).read_text())
                pulled += [(f"{out['path']}/{e['relpath']}", e["md5"]) for e in entries]
            else:
                pulled.append((out["path"], out["md5"]))
    for path, md5 in pulled:
        data = (clone / path).read_bytes()
        assert hashlib.md5(data).hexdigest() == md5 and obj(cache, md5).read_bytes() == data, path
    return {path for path, _ in pulled}


def _bucket_keys(started, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=started.s3_env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=servers.BUCKET, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


