"""The MediaPipe labeler on real pictures: it finds the hands, and mirrored crops keep their keypoints."""
import numpy as np
import pytest

from conftest import real_data
from simhand_ray.config import CropConfig, LabelerConfig
from simhand_ray.mining.crops import crop_hand, mirror
from simhand_ray.mining.frames import Segment, decode_segment, read_image


@pytest.fixture(scope="module")
def labeler():
    from simhand_ray.mining.labelers.mediapipe import MediaPipeLabeler
    lab = MediaPipeLabeler(LabelerConfig())
    yield lab
    lab.close()


def test_finds_the_hand_in_handsrc(labeler):
    img = read_image(str(real_data("images", "handSrc.jpg")))
    hands, = labeler.label([img])
    assert len(hands) == 1
    h = hands[0]
    assert h.keypoints.shape == (21, 2) and h.keypoint_scores.shape == (21,)
    assert h.handedness in ("left", "right") and 0 < h.det_score <= 1
    # the hand fills most of this picture: its box is large, inside the image
    x0, y0, x1, y1 = h.box
    assert x1 - x0 > 300 and y1 - y0 > 300 and x0 >= -5 and x1 <= 645


def test_finds_hands_in_megamind_frames_and_none_in_a_building(labeler):
    path = str(real_data("videos", "Megamind.avi"))
    frames = dict(decode_segment(path, Segment(0, 270, None), every_n=30))
    found = labeler.label([frames[i] for i in (60, 90, 180)])
    assert all(len(h) >= 1 for h in found)
    building = read_image(str(real_data("images", "building.jpg")))
    assert labeler.label([building]) == [[]]


def test_mirrored_left_hand_crop_keypoints_land_where_the_labels_put_them(labeler):
    """Label a frame, crop a hand as a left hand (mirrored), then label the crop itself: MediaPipe's
    keypoints on the mirrored crop must agree with the stored (mirrored) keypoints."""
    img = read_image(str(real_data("images", "Back_Projection1_Source_Image.jpg")))
    hand, = labeler.label([img])[0]
    hand.handedness = "left"
    crop = crop_hand(img, hand, CropConfig())
    assert crop.mirrored
    relabeled, = labeler.label([crop.image])[0]
    err = np.linalg.norm(relabeled.keypoints - crop.keypoints, axis=1).mean()
    assert err < 8.0, f"mean keypoint disagreement {err:.1f} px on a 224 px crop"
    # and without the mirror the keypoints would be far off (the check can fail)
    _, unmirrored = mirror(crop.image, crop.keypoints)
    assert np.linalg.norm(relabeled.keypoints - unmirrored, axis=1).mean() > 3 * err


def run_script(src: str):
    """``python -c src`` from the repo root (a fresh process: what MediaPipe prints at start and exit shows);
    asserts it exits 0 and returns the finished process."""
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, "-c", src], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_a_process_that_exits_with_a_labeler_open_prints_no_trace():
    """A labeler actor (or script) that never closes its labeler: exit is quiet, not a MediaPipe traceback."""
    r = run_script("import numpy as np\n"
                   "from simhand_ray.config import LabelerConfig\n"
                   "from simhand_ray.mining.labelers import build_labeler\n"
                   "lab = build_labeler(LabelerConfig())\n"
                   "print(len(lab.label([np.zeros((64, 64, 3), np.uint8)])))\n")
    assert r.stdout.strip() == "1"
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_mediapipe_start_up_chatter_is_dropped_and_other_native_lines_pass():
    """A labeler that loads and finds a hand in a non-square frame prints none of MediaPipe's start-up lines;
    a line native code writes to stderr inside the filter that is not one of them still gets through."""
    r = run_script("import os, numpy as np\n"
                   "from simhand_ray.config import LabelerConfig\n"
                   "from simhand_ray.mining.frames import read_image\n"
                   "from simhand_ray.mining.labelers import build_labeler\n"
                   "from simhand_ray.mining.labelers.mediapipe import native_stderr_filtered\n"
                   f"img = read_image({str(real_data('images', 'handSrc.jpg'))!r})\n"
                   "wide = np.zeros((img.shape[0], img.shape[1] * 2, 3), np.uint8); wide[:, :img.shape[1]] = img\n"
                   "lab = build_labeler(LabelerConfig())\n"
                   "print(len(lab.label([wide])[0]))\n"
                   "with native_stderr_filtered():\n"
                   "    os.write(2, b'E0000 something a user must see\\n')\n")
    assert r.stdout.strip() == "1"
    for chatter in ("XNNPACK", "InitGoogle", "Feedback manager", "NORM_RECT"):
        assert chatter not in r.stderr, r.stderr
    assert "something a user must see" in r.stderr
