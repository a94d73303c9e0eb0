"""The split label pipeline (label_split: decode tasks -> model actors [-> crop tasks beside GPU labelers] ->
commit on the driver) through real Ray with the OpenMMLab labeler on CPU (self-made weights,
tests/openmmlab_weights.py): the same hands as the actor path for the same weights, CPU-shaped and GPU-shaped, a killed job re-run, and labelers the cluster cannot hold failing in
bounded time naming the flag."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from builders import kill_and_rerun
from conftest import REPO, hand_ids, real_data
from simhand_ray import storage
from simhand_ray.config import FilterConfig, LabelConfig, LabelerConfig

pytest.importorskip("simhand_ray.mining.labelers.openmmlab")
pytestmark = pytest.mark.slow

NO_FILTER = FilterConfig(min_det_score=0, min_keypoint_score=0, min_box_side=0, min_keypoints_inside=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from openmmlab_weights import write_checkpoints
    return write_checkpoints(str(tmp_path_factory.mktemp("weights")))


@pytest.fixture(scope="module")
def sample_dir(sample_video_dir):
    """The sample video and photos, plus an image that does not decode."""
    (sample_video_dir / "broken.jpg").write_bytes(b"not an image")
    return sample_video_dir


def labeler(weights, **kw) -> LabelerConfig:
    return LabelerConfig(backend="openmmlab", det_checkpoint=weights["det"], pose_checkpoint=weights["pose_wrapped"],
                         max_hands=2, device="cpu", **kw)


def run(inputs, output, **kw):
    from simhand_ray.mining.label_stage import run_label_stage
    return run_label_stage(LabelConfig(inputs=tuple(map(str, inputs)), output=str(output), **kw), progress=False)


GPU_SHAPED_RUN = """
import json, logging, sys
import ray
from simhand_ray.config import LabelConfig, LabelerConfig, FilterConfig
from simhand_ray.mining.label_stage import run_label_stage
logging.basicConfig(level=logging.INFO)
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
inputs, output, det, pose = sys.argv[1:5]
lab = LabelerConfig(backend="openmmlab", det_checkpoint=det, pose_checkpoint=pose, max_hands=2, device="cpu",
                    batch_size=4, gpus_per_labeler=0.5, cpus_per_labeler=0.5)
no_filter = FilterConfig(min_det_score=0, min_keypoint_score=0, min_box_side=0, min_keypoints_inside=0)
s = run_label_stage(LabelConfig(inputs=(inputs,), output=output, segment_frames=100, filter=no_filter, labeler=lab,
                                decode_cpus=0.5), progress=False)
print("SUMMARY " + json.dumps(s))
"""


def test_crops_run_in_cpu_tasks_only_beside_gpu_labelers(ray_cluster, weights):
    from simhand_ray.mining.label_split import split_dataset

    def plan(gpus):
        cfg = LabelConfig(inputs=("x",), output="unused", labeler=labeler(weights, gpus_per_labeler=gpus))
        return repr(split_dataset([{"work_id": "w", "payload": "{}"}], cfg, 1))   # lazy: nothing runs

    assert "crop_frames" not in plan(0) and "ModelLabelWorker" in plan(0)
    assert "MapBatches(crop_frames)\n+- MapBatches(ModelLabelWorker)" in plan(0.5)


def test_split_pipeline_gives_the_hands_of_the_actor_path(ray_cluster, sample_dir, weights, tmp_path):
    common = dict(segment_frames=100, filter=NO_FILTER, labeler=labeler(weights, batch_size=4))
    split = run([sample_dir], tmp_path / "split", label_pipeline="split", **common)
    actors = run([sample_dir], tmp_path / "actors", label_pipeline="actors", **common)
    ids = hand_ids(tmp_path / "split")
    assert ids == hand_ids(tmp_path / "actors")
    # GPU-shaped: two labelers sharing a (logical) GPU, the model on CPU, crops in CPU tasks; a Ray of its own
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-c", GPU_SHAPED_RUN, str(sample_dir), str(tmp_path / "gpu"),
                          weights["det"], weights["pose_wrapped"]], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "split pipeline, 2 labeler actors, each {CPU: 0.5, GPU: 0.5}" in res.stderr, res.stderr[-3000:]
    gpu = json.loads(res.stdout.split("SUMMARY ", 1)[1])
    assert hand_ids(tmp_path / "gpu") == ids
    for key in ("frames_kept", "hands_kept", "rejects"):
        assert gpu[key] == actors[key], key
    assert len(ids) == 2 * (9 + 2)                  # 2 hands in each of the 9 kept frames and the 2 images
    for key in ("frames_kept", "frames_decoded", "hands_found", "hands_kept", "rejects", "work_items_run"):
        assert split[key] == actors[key], key
    assert split["rejects"] == {"unreadable_image": 1} and split["work_items_run"] == 3
    a = pq.read_table(tmp_path / "split" / "hands").sort_by("hand_id")
    b = pq.read_table(tmp_path / "actors" / "hands").sort_by("hand_id")
    np.testing.assert_allclose(np.array(a["keypoints"].to_pylist()), np.array(b["keypoints"].to_pylist()), atol=1e-3)
    np.testing.assert_allclose(np.array(a["box"].to_pylist()), np.array(b["box"].to_pylist()), atol=1e-3)
    assert a["crop_box"].equals(b["crop_box"])
    # item files hold their rows in frame order, as the actor path writes them
    for part in sorted((tmp_path / "split" / "hands").glob("*.parquet")):
        t = pq.read_table(part)
        order = list(zip(t["uri"].to_pylist(), t["frame_index"].to_pylist(), t["hand_index"].to_pylist()))
        other = pq.read_table(tmp_path / "actors" / "hands" / part.name)
        assert order == list(zip(other["uri"].to_pylist(), other["frame_index"].to_pylist(),
                                 other["hand_index"].to_pylist()))
    rejects = storage.read_parquet(str(tmp_path / "split" / "rejects")).to_pylist()
    assert [os.path.basename(r["uri"]) for r in rejects] == ["broken.jpg"]


def _mine_cmd(inputs, output, weights, *extra):
    cmd = [sys.executable, str(REPO / "jobs" / "mine.py"), "--stage", "label", "--output", str(output),
           "--every-n", "10", "--segment-frames", "30", "--labeler", "openmmlab", "--det-checkpoint", weights["det"],
           "--pose-checkpoint", weights["pose"], "--max-hands", "2", "--labeler-batch-size", "4",
           "--label-pipeline", "split", *extra]
    for i in inputs:
        cmd += ["--input", str(i)]
    return cmd


def test_killed_split_job_resumes_with_the_same_hands(ray_cluster, weights, tmp_path):
    run = kill_and_rerun(lambda inputs, output: _mine_cmd(inputs, output, weights), tmp_path)
    out, reference = run["out"], run["reference"]
    assert hand_ids(out) == hand_ids(reference) and len(hand_ids(out)) > 0
    assert run["items"] == 4 + 5
    a = pq.read_table(out / "hands").sort_by("hand_id")
    b = pq.read_table(reference / "hands").sort_by("hand_id")
    assert a["crop_box"].equals(b["crop_box"])
    np.testing.assert_allclose(np.array(a["keypoints"].to_pylist()), np.array(b["keypoints"].to_pylist()), atol=1e-3)


def test_gpus_the_cluster_lacks_fail_in_bounded_time_naming_the_flag(ray_cluster, sample_dir, weights, tmp_path):
    from simhand_ray.mining.label_stage import ClusterTooSmallError

    t = time.monotonic()   # a joined cluster (the session's): the autoscaler is asked, then the wait ends
    with pytest.raises(ClusterTooSmallError, match=r"after waiting 2 s.*--gpus-per-labeler 1 .*fits no node"):
        run([sample_dir], tmp_path / "joined", resource_wait_s=2, labeler=labeler(weights, gpus_per_labeler=1))
    assert time.monotonic() - t < 60
    with pytest.raises(ClusterTooSmallError, match=r"3 labeler actors x --cpus-per-labeler 1 \+ --decode-cpus 1"):
        run([sample_dir], tmp_path / "cpus", resource_wait_s=0, num_workers=3, label_pipeline="split",
            labeler=labeler(weights))


def test_a_local_ray_fails_at_once_on_gpus_it_lacks(weights, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t = time.monotonic()
    res = subprocess.run(_mine_cmd([real_data("images", "handSrc.jpg")], tmp_path / "out", weights,
                                   "--gpus-per-labeler", "0.5", "--num-cpus", "1"),
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "--gpus-per-labeler 0.5" in res.stderr and "fits no node" in res.stderr and "after waiting" not in res.stderr
    assert time.monotonic() - t < 120
