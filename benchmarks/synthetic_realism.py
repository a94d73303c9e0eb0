"""How real do the synthetic hands look to a real hand detector? MediaPipe on synthetic frames vs the truth.

Renders a few synthetic videos (the library path the synth job uses), decodes them back with PyAV (so
the frames carry the same H.264 artefacts the mine job sees), labels every --every-th frame with the
project's MediaPipe labeler and compares with the ground truth (simhand_ray.labeler_check):
detection rate (true hands matched within 0.5 box sizes of mean joint error), the matched hands' mean
joint error normalised by the true box's longer side, in pixels, and PCK@0.1 box.

    .venv/bin/python benchmarks/synthetic_realism.py [--videos 10 --frames-per-video 30 --every 3] [--json FILE]

Two detection rates: over the clearly visible hands (at least --min-visible of 21 joints visible and
inside the frame, default 15) and over every labelled hand (cut off by the frame edge, self-occluded
fists, hidden behind an occluder...). False positives are predictions that match no labelled hand.
Last line: ``detection_rate_visible=R``.
"""
from __future__ import annotations

import json
import os
import tempfile

import av
import numpy as np
from harness import REPO, bench_parser, write_result

from simhand_ray.config import LabelerConfig, SynthConfig
from simhand_ray.drawing import draw_hand
from simhand_ray.labeler_check import compare, match_hands
from simhand_ray.mining.labelers.base import FrameRef
from simhand_ray.synthetic import background, montage
from simhand_ray.synthetic import video as V
HAND_FREE = [os.path.join(REPO, "data", "sample", "images", n) for n in ("building.jpg", "fruits.jpg")]


def decode(uri: str, every: int) -> list[tuple[int, np.ndarray]]:
    with av.open(uri) as c:
        return [(i, f.to_ndarray(format="rgb24")) for i, f in enumerate(c.decode(video=0)) if i % every == 0]


def main(argv=None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--videos", type=int, default=10)
    p.add_argument("--frames-per-video", type=int, default=30)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--min-visible", type=int, default=15)
    p.add_argument("--backgrounds", nargs="*", default=[f for f in HAND_FREE if os.path.exists(f)])
    p.add_argument("--sheet", default="", help="write a PNG of frames with MediaPipe (white) vs truth drawn")
    a = p.parse_args(argv)

    from simhand_ray.mining.labelers.groundtruth import GroundTruthLabeler
    from simhand_ray.mining.labelers.mediapipe import MediaPipeLabeler

    photos = background.decode_images([open(f, "rb").read() for f in a.backgrounds])
    cfg = SynthConfig(videos=a.videos, frames_per_video=a.frames_per_video, seed=a.seed)
    mp = MediaPipeLabeler(LabelerConfig())
    truth_labeler = GroundTruthLabeler(LabelerConfig(backend="groundtruth"))
    preds, truths, visible, sheet = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cfg.videos):
            res = V.make_video(cfg, i, tmp, photos)
            for frame_index, frame in decode(res.video_uri, a.every):
                [truth] = truth_labeler.label([frame], [FrameRef(res.video_uri, res.video_id, frame_index)])
                [pred] = mp.label([frame], [])
                preds.append(pred)
                truths.append(truth)
                visible.append([h for h in truth if h.keypoint_scores.sum() >= a.min_visible])
                if a.sheet and len(sheet) < 36:
                    img = frame
                    for h in visible[-1]:
                        img = draw_hand(img, h.keypoints, h.keypoint_scores)
                    matched = {pi for _, pi, _ in match_hands(pred, truth)}
                    for pi, h in enumerate(pred):
                        img = draw_hand(img, h.keypoints, None if pi in matched else np.zeros(21))
                    sheet.append(img)
    mp.close()
    every = compare(preds, truths)
    clear = compare(preds, visible)
    out = {"frames": len(preds), "visible_hands": clear.__dict__,
           "all_hands": every.__dict__, "false_positives": every.false_positives,
           "backgrounds": [os.path.basename(f) for f in a.backgrounds], "min_visible": a.min_visible}
    del out["visible_hands"]["false_positives"], out["all_hands"]["false_positives"]
    print(json.dumps(out, indent=2))
    if a.sheet:
        with open(a.sheet, "wb") as f:
            f.write(montage.encode_png(montage.montage(sheet, 6)))
    write_result(out, a.json, ("detection_rate_visible", clear.detection_rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
