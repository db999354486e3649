"""Throw-away team servers for the end-to-end sweep: PostgreSQL (Debian's `postgresql`: a cluster created in a temp
dir), an S3-compatible object store (moto in server mode) and an MLflow tracking server on the two, each on a free
port, as README's *Scale beyond one box* starts them (`COMMANDS`: one template per command, formatted with the
README's ports there and free ports here; tests/test_pipeline_sweep.py checks that the README shows them).

`Team(...).start()` blocks until all three answer (it runs in a background thread while the tiny study builds);
`stop()` ends every process group it started and removes the cluster. PostgreSQL refuses to run as root: as root,
its commands run as an unprivileged user (`postgres` from the package, else `nobody`)."""

import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BUCKET = "robustlora"
CI_INSTALLS = "apt-get install -y postgresql (.ci/run installs it when initdb is missing)"
README_PORTS = {"pg": 5432, "s3": 9000, "mlflow": 5000}
# the exact command lines, as README's team section shows them with README_PORTS and pgdata=pgdata
COMMANDS = {
    "initdb": "initdb -D {pgdata} -U mlflow -A trust -E UTF8 --locale=C --no-sync",
    "postgres": "postgres -D {pgdata} -p {pg} -k {pgdata} -c listen_addresses=127.0.0.1",
    "createdb": "createdb -h 127.0.0.1 -p {pg} -U mlflow mlflow",
    "s3": "moto_server -H 127.0.0.1 -p {s3}",
    "bucket": ("python -c \"import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{s3}')"
               f".create_bucket(Bucket='{BUCKET}')\""),
    "mlflow": ("mlflow server --backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:{pg}/mlflow "
               f"--artifacts-destination s3://{BUCKET}/mlflow "
               "--host 127.0.0.1 --port {mlflow} --workers 1"),
}
# the team's DVC remote on the same store (in .dvc/config, committed: every clone pushes and pulls there)
DVC_COMMANDS = [f"dvc remote add -d team s3://{BUCKET}/dvc", "dvc remote modify team endpointurl http://127.0.0.1:{s3}"]
# the object store's settings: for the MLflow server (its artifact destination) and for DVC (the remote); moto takes
# any key. The tracking clients need none: the server proxies artifacts.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:{s3}"}
# MLflow's job runner (seven huey consumer processes, ~45 CPU-seconds to start) is unused by tracking
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, postgres, createdb): Debian keeps them off PATH, under
    /usr/lib/postgresql/<version>/bin. Fails with what to install when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    path = found[-1] if found else shutil.which("initdb")
    if not path:
        raise RuntimeError(f"PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): "
                           f"{CI_INSTALLS}")
    return Path(path).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(name: str, **values) -> list[str]:
    return shlex.split(COMMANDS[name].format(**values))


def _unprivileged() -> dict:
    """Popen's arguments that drop root for PostgreSQL (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


class Team:
    """PostgreSQL, moto's S3 and an MLflow server on both; `uri`, `s3_env` once `start()` returned."""

    def __init__(self, where: Path, env: dict):
        self.where, self.env = Path(where), dict(env)
        self.ports = {"pg": free_port(), "s3": free_port(), "mlflow": free_port()}
        self.s3_env = {k: v.format(**self.ports) for k, v in S3_ENV.items()}
        self.uri = f"http://127.0.0.1:{self.ports['mlflow']}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.pgdata: Path | None = None
        self._stopping = threading.Event()

    # --- processes --------------------------------------------------------------------------------------------

    def _spawn(self, name, args, env, **kwargs) -> subprocess.Popen:
        """A server in its own process group (so that stop() ends its workers too), output to <where>/<name>.log."""
        self.logs[name] = self.where / f"{name}.log"
        with open(self.logs[name], "w") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kwargs)
        self.procs[name] = proc
        return proc

    def _run(self, name, args, env, **kwargs) -> None:
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, **kwargs)
        if result.returncode:
            raise RuntimeError(f"{shlex.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                               f"{result.stderr[-3000:]}")

    def log_tail(self, name, chars=3000) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace")[-chars:] if path and path.is_file() else ""

    def _wait(self, name, ready, seconds) -> None:
        """Until ready() holds, while the process lives; its log's tail in the error."""
        proc, deadline = self.procs[name], time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            try:
                if ready():
                    return
            except Exception:  # not yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer in {seconds} s:\n{self.log_tail(name)}")

    @staticmethod
    def _http_ok(url) -> bool:
        urllib.request.urlopen(url, timeout=2).close()
        return True

    # --- start and stop ---------------------------------------------------------------------------------------

    def start(self) -> "Team":
        """PostgreSQL and S3 side by side, then the MLflow server on them; returns once /health answers."""
        bindir = postgres_bin()
        pg_env = self.env | {"PATH": f"{bindir}{os.pathsep}{self.env['PATH']}", "LC_ALL": "C"}
        drop = _unprivileged()
        # the cluster outside pytest's temp tree (whose root is private to root): PostgreSQL's user must own it
        self.pgdata = Path(tempfile.mkdtemp(prefix="robustlora-pg-"))
        if drop:
            os.chown(self.pgdata, drop["user"], drop["group"])
        self._spawn("s3", command("s3", **self.ports), self.env)  # starts while initdb runs
        self._run("initdb", command("initdb", pgdata=self.pgdata), pg_env, cwd=self.pgdata, **drop)
        # test-only settings (not in the README's command): a throw-away cluster needs no durability
        self._spawn("postgres", command("postgres", pgdata=self.pgdata, **self.ports)
                    + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    pg_env, cwd=self.pgdata, **drop)

        def pg_ready():
            import psycopg2

            psycopg2.connect(host="127.0.0.1", port=self.ports["pg"], user="mlflow", dbname="postgres",
                             connect_timeout=2).close()
            return True

        self._wait("postgres", pg_ready, 60)
        self._run("createdb", command("createdb", **self.ports), pg_env)
        self._wait("s3", lambda: self._http_ok(f"http://127.0.0.1:{self.ports['s3']}/"), 60)
        self._run("bucket", command("bucket", **self.ports), self.env | self.s3_env)
        self._spawn("mlflow", command("mlflow", **self.ports), self.env | self.s3_env | SERVER_ENV, cwd=self.where)
        self._wait("mlflow", lambda: self._http_ok(f"{self.uri}/health"), 240)
        return self

    def stop_waiting(self) -> None:
        """Make a start() in progress give up waiting (it raises)."""
        self._stopping.set()

    def stop(self) -> None:
        """The MLflow server first (PostgreSQL's clients), then S3 and PostgreSQL (fast shutdown); groups killed
        when they do not end in 30 s; the cluster removed. After start() returned or raised."""
        self._stopping.set()
        for name, sig in (("mlflow", signal.SIGTERM), ("s3", signal.SIGTERM), ("postgres", signal.SIGINT)):
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:  # what is left of the group (workers, backends)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        if self.pgdata is not None:
            shutil.rmtree(self.pgdata, ignore_errors=True)
