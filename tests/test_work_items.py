"""work_items: the typed work item survives its JSON payload; videos split at keyframes into items named after
their file; images join one chunk for good; a video reached by another route keeps the ids it was labeled under."""
import shutil

import pytest

from conftest import real_data
from simhand_ray.config import LabelConfig
from simhand_ray.mining.inputs import InputFile, expand_inputs
from simhand_ray.mining.work_items import WorkItem, chunk_metadata, plan_images, plan_video


def _image(name: str) -> InputFile:
    return InputFile(f"/data/{name}", "src", name, "image", f"key-{name}")


def test_every_kind_of_work_item_round_trips_through_json():
    video = InputFile("/data/v.mp4", "src", "v.mp4", "video", "k1")
    items = [WorkItem("k1-0000000154", "video", video, start=154, end=270, seek_ts=(308, 300), declared=270),
             WorkItem("k1-0000000000", "video", video, start=0, end=None),          # length unknown
             WorkItem("k1-reject", "reject", video, reason="not_a_video", detail="no video stream"),
             WorkItem("img-x", "images", images=(_image("a.jpg"), _image("b.jpg")))]
    for item in items:
        assert WorkItem.from_json(item.to_json()) == item
    assert items[0].frame_range == (154, 270) and items[1].frame_range == (0, -1)
    assert items[2].frame_range == items[3].frame_range == (-1, -1)
    assert chunk_metadata(items[3]) == {"images": [
        {"uri": "/data/a.jpg", "source": "src", "video_id": "a.jpg", "kind": "image", "key": "key-a.jpg"},
        {"uri": "/data/b.jpg", "source": "src", "video_id": "b.jpg", "kind": "image", "key": "key-b.jpg"}]}
    assert chunk_metadata(items[0]) is None
    with pytest.raises(ValueError, match="kind"):
        WorkItem("x", "segment", video)
    with pytest.raises(ValueError, match="images work item has no file"):
        WorkItem("x", "images", video)


def test_videos_split_at_keyframes_and_unreadable_ones_become_rejects(tmp_path):
    shutil.copy(real_data("videos", "Megamind.avi"), tmp_path / "clip.avi")
    (tmp_path / "text.mp4").write_text("not a video")
    clip, text = expand_inputs((str(tmp_path),))
    items = plan_video(clip, LabelConfig(segment_frames=100))
    assert [(i.kind, i.start, i.end) for i in items] == [("video", 0, 154), ("video", 154, 270)]
    assert [i.work_id for i in items] == [f"{clip.key}-0000000000", f"{clip.key}-0000000154"]
    assert items[0].seek_ts is None and items[1].seek_ts is not None and items[1].declared == 270
    [whole] = plan_video(clip, LabelConfig())                     # short enough: one item, no scan
    assert (whole.start, whole.end) == (0, 270)
    [bad] = plan_video(text, LabelConfig())
    assert bad.kind == "reject" and bad.work_id == f"{text.key}-reject" and bad.reason == "not_a_video"


def test_images_join_one_chunk_for_good():
    files = [_image(f"{c}.jpg") for c in "abcde"]
    first = plan_images(files[:3], per_item=2)
    assert [[f.video_id for f in it.images] for it in first] == [["a.jpg", "b.jpg"], ["c.jpg"]]
    assert plan_images(files[:3], per_item=2) == first                         # named after their images
    # a.jpg and b.jpg are done, c.jpg's chunk was started: it is redone as it was, d and e form a new chunk
    again = plan_images(files, 2, done={"key-a.jpg", "key-b.jpg"}, started={first[1].work_id: [files[2]]})
    assert again[0] == first[1]
    assert [[f.video_id for f in it.images] for it in again[1:]] == [["d.jpg", "e.jpg"]]
