"""frames: segmented decoding equals decoding all; keyframe mode yields the true indices; bad inputs."""

import numpy as np
import pytest

from conftest import real_data
from simhand_ray.mining.frames import (DecodeStats, InputError, Segment, decode_segment, plan_segments,
                                       probe_video, read_image)

WHOLE = Segment(0, None, None)   # the whole video


@pytest.mark.parametrize("name", ["Megamind.avi", "Megamind_bugy.avi"])
def test_segments_decode_exactly_what_one_pass_decodes(name):
    path = str(real_data("videos", name))
    every = {i: f for i, f in decode_segment(path, WHOLE, 1)}
    assert sorted(every) == list(range(270))
    info = probe_video(path, scan=True)
    assert info.packets == info.declared_frames == 270
    segs = plan_segments(info, segment_frames=60)
    assert len(segs) >= 3 and segs[0].start == 0 and segs[-1].end == 270
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    got = {}
    for seg in segs:
        for i, f in decode_segment(path, seg, every_n=30):
            assert i not in got
            got[i] = f
    assert sorted(got) == list(range(0, 270, 30))
    for i, f in got.items():
        np.testing.assert_array_equal(f, every[i])


def test_keyframe_mode_yields_keyframes_at_their_display_index():
    path = str(real_data("videos", "Megamind.avi"))
    every = {i: f for i, f in decode_segment(path, WHOLE, 1)}
    stats = DecodeStats()
    keys = dict(decode_segment(path, WHOLE, 30, mode="keyframes", stats=stats))
    assert sorted(keys) == list(probe_video(path, scan=True).keyframes) == [0, 1, 98, 154, 200]
    for i, f in keys.items():  # the frame really is frame i of the video (its pts would say otherwise)
        np.testing.assert_array_equal(f, every[i])
    assert stats.kept == stats.decoded == 5


def test_truncated_video_yields_fewer_frames_without_error(tmp_path):
    src = real_data("videos", "Megamind.avi")
    cut = tmp_path / "cut.avi"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(str(cut), scan=False)
    stats = DecodeStats()
    frames = list(decode_segment(str(cut), Segment(0, info.declared_frames, None), 30, stats=stats))
    assert info.declared_frames == 270
    assert 0 < stats.decoded < 270 and len(frames) == stats.kept


def test_bad_inputs_raise_input_error_with_reason(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(InputError) as e:
        probe_video(str(fake), scan=False)
    assert e.value.reason == "not_a_video"
    with pytest.raises(InputError) as e:
        probe_video(str(tmp_path / "missing.mp4"), scan=False)
    assert e.value.reason == "missing"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    half = tmp_path / "half.jpg"
    full = real_data("images", "handSrc.jpg").read_bytes()
    half.write_bytes(full[: len(full) // 2])
    for p in (empty, half):
        with pytest.raises(InputError) as e:
            read_image(str(p))
        assert e.value.reason == "unreadable_image"
    img = read_image(str(real_data("images", "handSrc.jpg")))
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8


def test_plan_segments_unscanned_is_one_segment():
    path = str(real_data("videos", "Megamind.avi"))
    segs = plan_segments(probe_video(path, scan=False), segment_frames=60)
    assert segs == [Segment(0, 270, None)]
    assert plan_segments(probe_video(path, scan=True), 60, max_frames=100)[-1].end == 100
