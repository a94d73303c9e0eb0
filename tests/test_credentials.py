"""No S3 credential passes through Ray: not its runtime_env, job records, logs, the dashboard, nor the outputs.

A job runs the label stage from and to the moto S3 server with recognisable credentials (moto takes any):
- with a local Ray the job starts itself (``jobs/_common.init_ray`` without RAY_ADDRESS, its own RAY_TMPDIR),
  whose workers must still read S3: they inherit the driver's environment, which is checked from inside a
  worker;
- as a driver connected to the session's cluster (RAY_ADDRESS, as under ``ray job submit``), whose workers
  use their own node's credentials.
Then Ray's whole temp dir / the session's logs, the jobs API (state API and dashboard ``/api/jobs/``), the
job's console output and every output object are searched for the secret and the key id.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import REPO, real_data
from simhand_ray import storage

pytestmark = pytest.mark.slow

#: run in the job's process after ``mine.main``: a worker of the job's Ray reports its credentials
WORKER_ENV = """
import os, sys
sys.path.insert(0, os.path.join({repo!r}, "jobs"))
import mine, ray
rc = mine.main(sys.argv[1:])
got = ray.get(ray.remote(lambda: os.environ.get("AWS_SECRET_ACCESS_KEY")).remote())
print("WORKER-SECRET-MATCHES", got == os.environ["AWS_SECRET_ACCESS_KEY"])
sys.exit(rc)
"""


def canary_env(**extra) -> tuple[dict[str, str], list[str]]:
    """This process's environment with fresh recognisable credentials; returns it and the strings to look for."""
    tag = uuid.uuid4().hex[:12].upper()
    secret, key_id, token = f"SIMHAND-CANARY-{tag}", f"SIMHANDKEYID{tag}", f"SIMHAND-TOKEN-{tag}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token, **extra)
    return env, [secret, key_id, token]


def leaks_in_tree(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` (binary ones too) that hold any of ``needles``."""
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
            except OSError:       # sockets, files removed meanwhile
                continue
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


def leaks_in_outputs(prefix: str, needles: list[str]) -> tuple[list[str], int]:
    """Objects under an s3:// prefix that hold any of ``needles``, and how many objects there are."""
    fs, path = storage.resolve(prefix)
    import pyarrow.fs as pafs

    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
    found = []
    for info in infos:
        data = storage.read_bytes(f"s3://{info.path}")
        found += [f"s3://{info.path}: {n}" for n in needles if n.encode() in data]
    return found, len(infos)


@pytest.fixture
def s3_image(s3_bucket) -> str:
    uri = storage.join(s3_bucket, "in", "handSrc.jpg")
    storage.write_bytes_atomic(uri, real_data("images", "handSrc.jpg").read_bytes())
    return storage.join(s3_bucket, "in")


def test_local_ray_job_keeps_credentials_out_of_ray(s3_image, s3_bucket):
    ray_tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))   # short: Ray's socket paths must fit 107 bytes
    try:
        env, needles = canary_env(RAY_TMPDIR=str(ray_tmp))
        out = storage.join(s3_bucket, "out-local")
        cmd = [sys.executable, "-c", WORKER_ENV.format(repo=str(REPO)), "--stage", "label", "--input", s3_image,
               "--output", out, "--num-cpus", "2", "--num-workers", "1"]
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        log = res.stdout + res.stderr
        assert res.returncode == 0, log[-3000:]
        assert "WORKER-SECRET-MATCHES True" in res.stdout, log[-3000:]   # a local Ray's workers inherit them
        assert list(ray_tmp.glob("ray/session_*/logs")), f"no Ray session under {ray_tmp}"
        assert leaks_in_tree(ray_tmp, needles) == []
        assert not [n for n in needles if n in log]
        found, n_objects = leaks_in_outputs(out, needles)
        assert n_objects > 0 and found == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_job_on_a_cluster_keeps_credentials_out_of_ray(ray_cluster, s3_image, s3_bucket):
    """A driver on the session's cluster (RAY_ADDRESS, what ``ray job submit`` gives a job) with credentials of
    its own: its workers use the cluster's, and the jobs API and the cluster's logs never see the driver's."""
    import ray
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_jobs

    env, needles = canary_env(RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    out = storage.join(s3_bucket, "out-cluster")
    cmd = [sys.executable, os.path.join(REPO, "jobs", "mine.py"), "--stage", "label", "--input", s3_image,
           "--output", out, "--num-workers", "1"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert not [n for n in needles if n in log]
    jobs = list_jobs(address=ray_cluster, detail=True, limit=1000)
    assert any("mine.py" in str(j.entrypoint) or "mine.py" in str(j) for j in jobs), "the job is not listed"
    api = urllib.request.urlopen(f"{ray_cluster}/api/jobs/", timeout=30).read().decode()
    for where, text in (("ray.util.state.list_jobs", str(jobs)), ("/api/jobs/", api),
                        ("JobSubmissionClient.list_jobs", str(JobSubmissionClient(ray_cluster).list_jobs()))):
        assert not [n for n in needles if n in text], f"credentials in {where}"
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    assert logs.is_dir() and leaks_in_tree(logs, needles) == []
    found, n_objects = leaks_in_outputs(out, needles)
    assert n_objects > 0 and found == []
