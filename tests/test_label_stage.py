"""The label stage end to end through real Ray: sample data, local vs S3, bad inputs, kill + re-run, job
submit, ids stable across runs with other inputs; its stage manifest against a concurrent job and older outputs."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from builders import kill_and_rerun
from conftest import REPO, hand_ids, real_data
from simhand_ray import schema, storage
from simhand_ray.config import LabelConfig
from simhand_ray.mining.crops import decode_jpeg
from simhand_ray.stage import MANIFEST, StageManifest, StageMismatch

pytestmark = pytest.mark.slow


def run_stage(inputs, output, **kw):
    from simhand_ray.mining.label_stage import run_label_stage
    return run_label_stage(LabelConfig(inputs=tuple(map(str, inputs)), output=str(output), **kw), progress=False)




def test_local_and_s3_outputs_hold_the_same_hands(ray_cluster, sample_video_dir, tmp_path, s3_bucket, monkeypatch):
    """Local output with videos planned in driver threads; S3 output with them planned in Ray tasks (as
    for a large input): the same hands."""
    from simhand_ray.mining import work_items

    local = run_stage([sample_video_dir], tmp_path / "out", segment_frames=100)
    monkeypatch.setattr(work_items, "INLINE_PLAN_MAX_VIDEOS", 0)
    remote = run_stage([sample_video_dir], f"{s3_bucket}/out", segment_frames=100)
    monkeypatch.undo()
    ids = hand_ids(tmp_path / "out")
    assert ids == hand_ids(f"{s3_bucket}/out")
    assert any(i.startswith("sample") and ":handSrc.jpg:" in i for i in ids)
    assert sum(":Megamind.avi:" in i for i in ids) >= 3
    assert local["frames_kept"] == remote["frames_kept"] == 9 + 2   # 270 frames / 30 + 2 images
    assert local["work_items"] == 2 + 1      # keyframes 0, 1, 98, 154, 200: segments [0, 154), [154, 270); 1 image chunk
    hands = storage.read_parquet(str(tmp_path / "out" / "hands"), schema=schema.HANDS)
    assert hands.schema.equals(schema.HANDS, check_metadata=False)
    kp = schema.keypoints_array(hands["keypoints"])
    assert kp.shape == (len(hands), 21, 2) and np.all((kp >= -1) & (kp <= 225))
    for jpeg in hands["crop_jpeg"].to_pylist():
        assert decode_jpeg(jpeg).shape == (224, 224, 3)
    manifest = StageManifest.require_complete(str(tmp_path / "out"), "label", "")
    assert manifest.record["settings"]["config"]["filter"]["min_det_score"] == 0.5   # thresholds recorded
    assert manifest.summary["work_items_run"] == 3
    # a re-run over a finished output does nothing and changes nothing
    again = run_stage([sample_video_dir], tmp_path / "out", segment_frames=100)
    assert again["work_items_run"] == 0 and hand_ids(tmp_path / "out") == ids
    # other settings into the same output: refused
    with pytest.raises(StageMismatch, match="other settings.*every_n: 30 -> 10"):
        run_stage([sample_video_dir], tmp_path / "out", segment_frames=100, every_n=10)


def test_bad_inputs_go_to_rejects_and_the_rest_is_labeled(ray_cluster, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    video = real_data("videos", "Megamind.avi").read_bytes()
    image = real_data("images", "handSrc.jpg").read_bytes()
    (d / "good.avi").write_bytes(video)
    (d / "truncated.avi").write_bytes(video[: len(video) // 2])
    (d / "notavideo.mp4").write_text("plain text with a video extension")
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(image[: len(image) // 3])
    (d / "good.jpg").write_bytes(image)
    shutil.copy(real_data("videos", "Megamind_bugy.avi"), d / "damaged_pictures.avi")
    manifest = tmp_path / "inputs.txt"
    manifest.write_text("\n".join([str(p) for p in sorted(d.iterdir())] + [str(d / "missing.avi")]))
    summary = run_stage([manifest], tmp_path / "out")
    rejects = storage.read_parquet(str(tmp_path / "out" / "rejects")).to_pylist()
    by_file = {os.path.basename(r["uri"]): r for r in rejects}
    assert by_file["truncated.avi"]["reason"] == "truncated" and "of 270 frames" in by_file["truncated.avi"]["detail"]
    assert by_file["notavideo.mp4"]["reason"] == "not_a_video"
    assert by_file["missing.avi"]["reason"] == "missing"
    assert by_file["empty.jpg"]["reason"] == by_file["truncated.jpg"]["reason"] == "unreadable_image"
    assert set(by_file) == {"truncated.avi", "notavideo.mp4", "missing.avi", "empty.jpg", "truncated.jpg"}
    ids = hand_ids(tmp_path / "out")
    for name in ("good.avi", "truncated.avi", "damaged_pictures.avi"):   # the truncated video's decoded frames are kept
        assert any(f":{name}:" in i for i in ids), name
    segments = storage.read_parquet(str(tmp_path / "out" / "segments")).to_pylist()
    damaged = [s for s in segments if s["video_id"] == "damaged_pictures.avi"]
    assert damaged[0]["frames_decoded"] == 270                         # decodes cleanly; pictures are just bad
    assert summary["rejects"] == {"truncated": 1, "not_a_video": 1, "missing": 1, "unreadable_image": 2}


def _mine_cmd(inputs, output):
    cmd = [sys.executable, str(REPO / "jobs" / "mine.py"), "--stage", "label", "--output", str(output),
           "--every-n", "3", "--segment-frames", "30"]
    for i in inputs:
        cmd += ["--input", str(i)]
    return cmd


def test_killed_job_resumes_with_the_same_hands(ray_cluster, tmp_path):
    run = kill_and_rerun(_mine_cmd, tmp_path, wait_s=240)
    out, reference = run["out"], run["reference"]
    assert hand_ids(out) == hand_ids(reference) and len(hand_ids(out)) > 0
    assert run["items"] == 4 + 5            # segments between keyframes at least 30 frames apart
    a = pq.read_table(out / "hands").sort_by("hand_id")
    b = pq.read_table(reference / "hands").sort_by("hand_id")
    assert a["keypoints"].equals(b["keypoints"]) and a["crop_jpeg"].equals(b["crop_jpeg"])


def test_ray_job_submit(ray_cluster, tmp_path):
    out = tmp_path / "submitted"
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address", ray_cluster,
           "--working-dir", str(REPO), "--", sys.executable, "jobs/mine.py", "--stage", "label",
           "--input", "data/sample/images", "--output", str(out)]
    for _ in range(30):  # the dashboard's job agent may still be starting on a loaded machine
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        if "No available agent" not in res.stderr:
            break
        time.sleep(2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout
    assert any(":handSrc.jpg:" in i for i in hand_ids(out))


def test_ids_stay_the_same_when_inputs_are_added_removed_or_reordered(ray_cluster, tmp_path):
    """One source over two folders whose names clean_id would fold, a name in both folders, a symlink and a
    link loop: every image is labeled once, each hand keeps its id whatever inputs later runs are given."""
    hand = real_data("images", "handSrc.jpg")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("hand one.jpg", "hand_one.jpg", "手.jpg"):
        shutil.copy(hand, a / name)
    os.symlink("hand_one.jpg", a / "alias.jpg")          # the same file twice
    os.symlink(".", a / "dot")                           # the folder inside itself
    for name in ("足.jpg", "hand_one.jpg"):              # hand_one.jpg: the same (source, video_id) as a's
        shutil.copy(hand, b / name)
    shutil.copy(real_data("images", "fruits.jpg"), b / "fruits.jpg")
    out, kw = tmp_path / "out", dict(source="s", images_per_item=2)
    # a run that fails on a missing input, with other settings, leaves nothing that blocks the next one
    with pytest.raises(Exception, match="input not found"):
        run_stage([a, tmp_path / "missing"], out, every_n=7, **kw)
    assert not storage.exists(str(out / MANIFEST))
    first = run_stage([a], out, **kw)
    ids_a = hand_ids(out)
    assert first["images"] == 3 and len(ids_a) % 3 == 0 and ids_a
    per_image = len(ids_a) // 3
    # one more input, given first: a's hands keep their ids, b's are added, none twice
    second = run_stage([b, a], out, **kw)
    ids_ab = hand_ids(out)
    assert ids_a < ids_ab and len(ids_ab) == 5 * per_image and second["work_items_run"] == 2
    assert len({i.split(":")[1] for i in ids_ab}) == 4    # hand_one.jpg of a and b: one video_id, two files
    # a chunk killed between its hands/ file and its marker is redone with its own images (its files
    # overwritten), though its input is no longer given
    marker = sorted((out / "segments").glob("img-*.parquet"))[0]
    members = {m["uri"] for m in json.loads(pq.read_schema(marker).metadata[b"images"])}
    marker.unlink()
    third = run_stage([b], out, **kw)
    assert third["work_items_run"] == 1 and hand_ids(out) == ids_ab and marker.exists()
    assert {u for u in pq.read_table(out / "hands", columns=["uri"])["uri"].to_pylist() if u in members}
    # a fresh output from the inputs in another order: the same ids
    run_stage([a, b], tmp_path / "fresh", **kw)
    assert hand_ids(tmp_path / "fresh") == ids_ab


@pytest.fixture(params=["local", "s3"])
def out_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_settings_check_is_atomic_against_a_concurrent_job(out_root):
    from builders import race
    from simhand_ray.mining.label_stage import open_output

    cfgs = [LabelConfig(output=out_root, every_n=n) for n in (10, 30)]
    results = race(8, lambda i: open_output(cfgs[i % 2]))
    passed = {i % 2 for i, r in enumerate(results) if isinstance(r, StageManifest)}
    refused = [r for r in results if not isinstance(r, StageManifest)]
    assert len(passed) == 1 and len(refused) == 4, results           # one settings wins, all of its jobs pass
    assert all(isinstance(r, StageMismatch) and "other settings" in str(r) for r in refused)
    stamp = StageManifest.read(out_root, "label")
    assert stamp.record["settings"]["config"]["every_n"] == cfgs[passed.pop()].every_n


def test_outputs_of_an_older_id_scheme_or_version_are_refused(tmp_path):
    from simhand_ray.mining.label_stage import ID_SCHEME, open_output

    cfg = LabelConfig(output=str(tmp_path / "scheme"))
    StageManifest.open(cfg.output, "label", {"config": cfg.result_dict(), "id_scheme": ID_SCHEME - 1})
    with pytest.raises(StageMismatch, match=f"id_scheme: {ID_SCHEME - 1} -> {ID_SCHEME}"):
        open_output(cfg)
    old = LabelConfig(output=str(tmp_path / "old"))    # the stamp an older version wrote
    storage.write_json_atomic(str(tmp_path / "old" / "label_manifest.json"), {"config": old.result_dict()})
    with pytest.raises(StageMismatch, match="older simhand-ray"):
        open_output(old)


def test_a_partly_labeled_video_keeps_its_ids_when_reached_by_another_route(ray_cluster, tmp_path):
    a, other = tmp_path / "a", tmp_path / "other"
    a.mkdir()
    other.mkdir()
    shutil.copy(real_data("videos", "Megamind.avi"), a / "clip.avi")
    os.symlink(a / "clip.avi", other / "renamed.avi")   # the same file, another source and name
    out = tmp_path / "out"
    run_stage([a], out, segment_frames=100)
    ids = hand_ids(out)
    assert ids and all(i.startswith("a:clip.avi:") for i in ids)
    assert any(int(i.split(":")[2]) >= 154 for i in ids)     # the last segment [154, 270) has hands to relabel
    markers = sorted((out / "segments").glob("*.parquet"))
    assert len(markers) == 2
    markers[-1].unlink()                                 # as if killed before the last segment committed
    again = run_stage([other], out, segment_frames=100)
    assert again["work_items_run"] == 1 and hand_ids(out) == ids
