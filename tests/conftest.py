"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), one local Ray cluster per session,
and the real sample data.

Ray: one head per test session (2 CPUs, dashboard on, so ``ray job submit`` works against it), started by
``ray start`` on free ports (tests/ray_head.py) so it runs beside any other Ray here; teardown stops only its
processes (``ray stop`` is never called: it stops every Ray on the machine). Token auth is disabled for this local test cluster (RAY_AUTH_MODE=disabled)
so the jobs CLI needs no token file.
"""
from __future__ import annotations

import logging
import os
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from ray_head import free_port  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
TEST_DATA = REPO / "tests" / "data"
SHARED_REAL = REPO.parent / "shared" / "data" / "real"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def real_data(*parts: str) -> Path:
    """A file of the sample data: the copies bundled in the repo, else ../shared/data/real."""
    for root in (SAMPLE, TEST_DATA, SHARED_REAL):
        p = root.joinpath(*parts)
        if p.exists():
            return p
    pytest.skip(f"sample file {'/'.join(parts)} not available")


def load_job(name: str):
    """A job script (jobs/NAME.py) as a module, so its ``main(argv)`` runs in this process."""
    jobs = REPO / "jobs"
    if str(jobs) not in sys.path:
        sys.path.insert(0, str(jobs))
    spec = importlib.util.spec_from_file_location(f"job_{name}", jobs / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def hand_ids(output) -> set[str]:
    """The hand_ids of a label output, checked free of duplicates."""
    from simhand_ray import storage

    ids = storage.read_parquet(storage.join(str(output), "hands"), columns=["hand_id"])["hand_id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicate hand_ids"
    return set(ids)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1; AWS_* env vars point boto3, pyarrow and Ray workers at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from simhand_ray import storage
    storage._s3_filesystem.cache_clear()
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage._s3_filesystem.cache_clear()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the moto server; returns its s3:// URI."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    name = name.strip("-")
    client = boto3.client("s3", endpoint_url=s3_server)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://{name}"


SESSION_HEAD: dict = {}      # the session head's marker tag (tests/ray_head.py), for tests that look at its processes


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A Ray head of the session's own on free ports (``ray_head.LocalHead``: beside any other Ray on this
    machine), started after the S3 env so its workers inherit it; this process joins it as the driver.

    Yields the dashboard address that ``ray job submit --address`` takes.
    """
    import ray

    from ray_head import LocalHead

    head = LocalHead(num_cpus=2).start()
    SESSION_HEAD["tag"] = head.tag
    # Ray Train's controller queries the state API, which would otherwise auto-detect the cluster and
    # fail while a test's job runs a second local Ray (see jobs/_common.init_ray)
    env = {"RAY_API_SERVER_ADDRESS": head.dashboard}
    try:
        ray.init(address=head.address, runtime_env={"env_vars": env}, logging_level="WARNING")
        yield head.dashboard
    finally:
        ray.shutdown()
        head.stop()


@pytest.fixture(scope="module")
def sample_video_dir(tmp_path_factory):
    """A folder with the real sample clip, a real hand photo and a hand-free photo (one per test module)."""
    d = tmp_path_factory.mktemp("sample")
    shutil.copy(real_data("videos", "Megamind.avi"), d / "Megamind.avi")
    for name in ("handSrc.jpg", "fruits.jpg"):
        shutil.copy(real_data("images", name), d / name)
    return d


@pytest.fixture
def sample_images(tmp_path):
    """A folder with the real hand image and two hand-free images."""
    d = tmp_path / "images"
    d.mkdir()
    for name in ("handSrc.jpg", "fruits.jpg", "building.jpg"):
        shutil.copy(real_data("images", name), d / name)
    return d
