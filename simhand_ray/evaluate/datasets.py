"""Readers of the published on-disk formats of the downstream 3D hand pose datasets (SPEC §4).

Every reader turns its dataset into the same small records, in SPEC joint order (wrist, thumb CMC..TIP,
index MCP..TIP, middle, ring, little), with 3D joints in **millimetres** in the camera frame:

- ``FreiHAND``: ``{split}_xyz.json`` (N x 21 x 3, metres), ``{split}_K.json`` (N x 3 x 3), images
  ``{split}/rgb/%08d.jpg``. The training split stores 4 versions of each of its 32,560 samples (green
  screen, homogenised, sample, auto backgrounds), image ``i`` showing sample ``i % 32560``. The evaluation
  split (``evaluation_xyz.json`` / ``evaluation_K.json`` / ``evaluation/rgb``) has one version. Joint order
  is already SPEC's; all hands are right hands.
- ``DexYCB`` (dex-ycb-toolkit layout): ``calibration/intrinsics/{serial}_640x480.yml`` (``color: fx fy ppx
  ppy``), ``{subject}/{sequence}/meta.yml`` (``num_frames``, ``mano_sides``, ...), frames
  ``{subject}/{sequence}/{serial}/color_%06d.jpg`` + ``labels_%06d.npz`` (``joint_3d`` (1, 21, 3) metres,
  ``joint_2d`` (1, 21, 2) pixels, all -1 where the hand is not annotated). Splits follow the toolkit's
  subject / camera / sequence rules; ``s1`` = unseen subjects (train 0-5 + 9, val 6, test 7-8, all 8
  cameras, all sequences). Joint order is MANO's, the same as SPEC's.
- ``AssemblyHands`` (assemblyhands-toolkit layout): ``annotations/{split}/assemblyhands_{split}_ego_data_
  {ver}.json`` (COCO: images with ``file_name seq_name camera frame_idx``, annotations with ``image_id``,
  ``bbox`` {"right"/"left": [x0, y0, x1, y1] or null}, ``joint_valid`` (42)),
  ``..._ego_calib_{ver}.json`` (``calibration[seq]["intrinsics"][cam]`` 3x3 and
  ``["extrinsics"]["%06d"][cam]`` 3x4 world->camera), ``..._joint_3d_{ver}.json``
  (``annotations[seq]["%06d"]["world_coord"]`` 42 x 3, mm); images under ``images/`` by ``file_name``.
  Its 42 joints are InterHand2.6M's: right 0-20 then left 21-41, each hand ordered thumb tip..base,
  index tip..base, middle, ring, little, wrist last; converted here. Hands with fewer than 10 valid
  joints are skipped, as the toolkit does, and so are the crops its ``invalid_{split}_ego.txt`` lists.
  Images name a camera ``HMC_<serial>``; its calibration keys are ``HMC_<serial>_mono10bit``.

Readers work on local paths and ``s3://`` URIs (through ``storage``). ``records()`` is cheap metadata
(what Ray Data rows carry); ``load(record)`` / iteration add the decoded RGB image.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
import pyarrow.fs as pafs
import yaml

from simhand_ray import storage
from simhand_ray.config import FINETUNE_DATASETS
from simhand_ray.schema import NUM_JOINTS

log = logging.getLogger(__name__)

FREIHAND_TRAIN_SAMPLES = 32560
FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")

DEXYCB_SUBJECTS = tuple(f"{d}-subject-{i:02d}" for i, d in enumerate(
    ("20200709", "20200813", "20200820", "20200903", "20200908",
     "20200918", "20200928", "20201002", "20201015", "20201022"), start=1))
DEXYCB_SERIALS = ("836212060125", "839512060362", "840412060917", "841412060263",
                  "932122060857", "932122060861", "932122061900", "932122062010")
DEXYCB_IMAGE_SIZE = (640, 480)

#: AssemblyHands (InterHand2.6M) single-hand index of each SPEC joint: wrist is 20, each finger is stored
#: tip first (thumb 0-3, index 4-7, middle 8-11, ring 12-15, little 16-19).
ASSEMBLYHANDS_TO_SPEC = np.array(
    [20] + [b + k for b in (0, 4, 8, 12, 16) for k in (3, 2, 1, 0)], dtype=np.int64)
ASSEMBLYHANDS_MIN_VALID = 10
CAMERA_SUFFIX = "_mono10bit"


@dataclass
class Record:
    """One hand of a dataset, without its pixels. Arrays: joints_3d (21, 3) mm camera frame, joints_2d
    (21, 2) pixels (OpenCV convention: pixel centres at integers, as K projects), K (3, 3), visible (21,).
    ``box`` (x0, y0, x1, y1) is the dataset's own hand box when it has one, kept for reference: crops
    are cut around the visible keypoints for every dataset alike (``preprocess``).
    """
    sample_id: str
    image_uri: str
    joints_3d: np.ndarray
    joints_2d: np.ndarray
    K: np.ndarray
    side: str = "right"
    visible: np.ndarray = field(default_factory=lambda: np.ones(NUM_JOINTS, bool))
    box: np.ndarray | None = None

    def to_row(self) -> dict:
        """A flat dict of arrays/strings for ``ray.data.from_items``."""
        box = self.box if self.box is not None else np.full(4, np.nan)
        return {"sample_id": self.sample_id, "image_uri": self.image_uri,
                "joints_3d": np.asarray(self.joints_3d, np.float32), "joints_2d": np.asarray(self.joints_2d, np.float32),
                "K": np.asarray(self.K, np.float32), "side": self.side,
                "visible": np.asarray(self.visible, bool), "box": np.asarray(box, np.float32)}


@dataclass
class Sample(Record):
    """A record with its image: (H, W, 3) RGB uint8."""
    image: np.ndarray | None = None


def project(joints_3d: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection. (J, 3) camera frame, (3, 3) -> (J, 2) pixels."""
    uvw = np.asarray(joints_3d, np.float64) @ np.asarray(K, np.float64).T
    return uvw[:, :2] / uvw[:, 2:3]


def read_image(uri: str) -> np.ndarray:
    """Decode an image file (path or s3://) to (H, W, 3) RGB uint8; grayscale files become 3 channels.

    Unlike ``mining.frames.read_image`` (photos from the wild: turned as their EXIF orientation says, as a viewer
    shows them), the stored pixels as they are: a benchmark's labels refer to those."""
    data = np.frombuffer(storage.read_bytes(uri), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image {uri}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_yaml(uri: str) -> dict:
    return yaml.safe_load(storage.read_bytes(uri).decode())


def _list_dirs(uri: str) -> list[str]:
    """Names of the sub-directories (or s3 common prefixes) directly under ``uri``, sorted."""
    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


class HandDataset:
    """Base of the readers: a list of ``Record`` plus image loading."""

    name = "dataset"

    def records(self) -> list[Record]:
        raise NotImplementedError

    def load(self, record: Record) -> Sample:
        fields = {k: getattr(record, k) for k in Record.__dataclass_fields__}
        return Sample(**fields, image=read_image(record.image_uri))

    def __len__(self) -> int:
        return len(self.records())

    def __iter__(self) -> Iterator[Sample]:
        for r in self.records():
            yield self.load(r)


class FreiHAND(HandDataset):
    """FreiHAND v2 (``training`` or ``evaluation`` split). ``versions`` picks training image versions
    (indices into ``FREIHAND_VERSIONS``); default: every version whose first image exists.
    """

    name = "freihand"

    def __init__(self, root: str, split: str = "training", versions: tuple[int, ...] | None = None,
                 max_samples: int = 0):
        if split not in ("training", "evaluation"):
            raise ValueError(f"FreiHAND split must be 'training' or 'evaluation', not {split!r}")
        self.root, self.split, self.max_samples = root, split, max_samples
        self._versions = versions
        self._records: list[Record] | None = None

    def image_uri(self, index: int) -> str:
        return storage.join(self.root, self.split, "rgb", f"{index:08d}.jpg")

    def versions(self, num_samples: int) -> tuple[int, ...]:
        if self.split == "evaluation":
            return (0,)
        if self._versions is not None:
            return tuple(self._versions)
        found = tuple(v for v in range(len(FREIHAND_VERSIONS)) if storage.exists(self.image_uri(v * num_samples)))
        if not found:
            raise FileNotFoundError(f"no FreiHAND images under {storage.join(self.root, self.split, 'rgb')}")
        return found

    def records(self) -> list[Record]:
        if self._records is None:
            xyz = np.asarray(storage.read_json(storage.join(self.root, f"{self.split}_xyz.json")), np.float64)
            Ks = np.asarray(storage.read_json(storage.join(self.root, f"{self.split}_K.json")), np.float64)
            if xyz.shape[1:] != (NUM_JOINTS, 3) or len(Ks) != len(xyz):
                raise ValueError(f"unexpected FreiHAND annotation shapes {xyz.shape}, {Ks.shape}")
            n = len(xyz)
            out = []
            for v in self.versions(n):
                for i in range(n):
                    index = v * n + i
                    # image `index` shows sample `index % n`: the versions share the annotation
                    out.append(Record(sample_id=f"freihand:{self.split}:{index:08d}",
                                      image_uri=self.image_uri(index), joints_3d=xyz[i] * 1000.0,
                                      joints_2d=project(xyz[i], Ks[i]), K=Ks[i]))
            if self.max_samples:
                out = out[: self.max_samples]
            self._records = out
            log.info("FreiHAND %s: %d records (%d samples)", self.split, len(out), n)
        return self._records


def dexycb_split(setup: str, split: str) -> tuple[list[int], list[int], list[int] | None]:
    """(subject indices, camera indices, sequence indices or None = all) of a DexYCB setup/split, as the
    toolkit defines them (s0 seen, s1 unseen subjects, s2 unseen cameras, s3 unseen objects)."""
    all_subj, all_cam = list(range(10)), list(range(8))
    rules = {
        ("s0", "train"): (all_subj, all_cam, [i for i in range(100) if i % 5 != 4]),
        ("s0", "val"): ([0, 1], all_cam, [i for i in range(100) if i % 5 == 4]),
        ("s0", "test"): (list(range(2, 10)), all_cam, [i for i in range(100) if i % 5 == 4]),
        ("s1", "train"): ([0, 1, 2, 3, 4, 5, 9], all_cam, None),
        ("s1", "val"): ([6], all_cam, None),
        ("s1", "test"): ([7, 8], all_cam, None),
        ("s2", "train"): (all_subj, list(range(6)), None),
        ("s2", "val"): (all_subj, [6], None),
        ("s2", "test"): (all_subj, [7], None),
        ("s3", "train"): (all_subj, all_cam, [i for i in range(100) if i // 5 not in (3, 7, 11, 15, 19)]),
        ("s3", "val"): (all_subj, all_cam, [i for i in range(100) if i // 5 in (3, 19)]),
        ("s3", "test"): (all_subj, all_cam, [i for i in range(100) if i // 5 in (7, 11, 15)]),
    }
    if (setup, split) not in rules:
        raise ValueError(f"unknown DexYCB setup/split {setup}/{split}")
    return rules[(setup, split)]


class DexYCB(HandDataset):
    """DexYCB, one setup/split (default s1 test). Frames whose hand is not annotated are skipped.

    Records need every frame's label file, so building them reads each ``labels_*.npz`` once (with a
    thread pool); subjects absent on disk are skipped with a warning so a partial download still works.
    """

    name = "dexycb"

    def __init__(self, root: str, setup: str = "s1", split: str = "test", max_samples: int = 0):
        self.root, self.setup, self.split, self.max_samples = root, setup, split, max_samples
        self._records: list[Record] | None = None

    def intrinsics(self, serial: str) -> np.ndarray:
        w, h = DEXYCB_IMAGE_SIZE
        c = _read_yaml(storage.join(self.root, "calibration", "intrinsics", f"{serial}_{w}x{h}.yml"))["color"]
        return np.array([[c["fx"], 0.0, c["ppx"]], [0.0, c["fy"], c["ppy"]], [0.0, 0.0, 1.0]])

    def _sequences(self, subject: str) -> list[str]:
        return [d for d in _list_dirs(storage.join(self.root, subject))
                if storage.exists(storage.join(self.root, subject, d, "meta.yml"))]

    def _camera_records(self, subject: str, seq: str, serial: str, num_frames: int, side: str,
                        K: np.ndarray) -> list[Record]:
        """The annotated frames of one sequence seen by one camera."""
        d = storage.join(self.root, subject, seq, serial)
        out = []
        for f in range(num_frames):
            label = np.load(io.BytesIO(storage.read_bytes(storage.join(d, f"labels_{f:06d}.npz"))))
            j3d = np.asarray(label["joint_3d"], np.float64).reshape(NUM_JOINTS, 3)
            if np.all(j3d == -1):       # the toolkit's marker of a frame without a hand annotation
                continue
            j2d = np.asarray(label["joint_2d"], np.float64).reshape(NUM_JOINTS, 2)
            out.append(Record(sample_id=f"dexycb:{subject}/{seq}/{serial}/{f:06d}",
                              image_uri=storage.join(d, f"color_{f:06d}.jpg"), joints_3d=j3d * 1000.0,
                              joints_2d=j2d, K=K, side=side))
        return out

    def records(self) -> list[Record]:
        if self._records is not None:
            return self._records
        subj_ind, cam_ind, seq_ind = dexycb_split(self.setup, self.split)
        serials = [DEXYCB_SERIALS[i] for i in cam_ind]
        Ks = {s: self.intrinsics(s) for s in serials}
        jobs = []
        for si in subj_ind:
            subject = DEXYCB_SUBJECTS[si]
            if not storage.exists(storage.join(self.root, subject)):
                log.warning("DexYCB: subject %s not found under %s, skipped", subject, self.root)
                continue
            seqs = self._sequences(subject)
            if seq_ind is not None:
                if len(seqs) != 100:
                    raise ValueError(f"DexYCB {self.setup} picks sequences by index: {subject} needs 100, has {len(seqs)}")
                seqs = [seqs[i] for i in seq_ind]
            for seq in seqs:
                meta = _read_yaml(storage.join(self.root, subject, seq, "meta.yml"))
                jobs += [(subject, seq, serial, int(meta["num_frames"]), str(meta["mano_sides"][0]),
                          Ks[serial]) for serial in serials]
        # one label file per frame: read them concurrently (I/O bound, often on object storage)
        with ThreadPoolExecutor(max_workers=16) as pool:
            parts = list(pool.map(lambda job: self._camera_records(*job), jobs))
        out = [r for part in parts for r in part]
        if self.max_samples:
            out = out[: self.max_samples]
        log.info("DexYCB %s/%s: %d records", self.setup, self.split, len(out))
        self._records = out
        return out


class AssemblyHands(HandDataset):
    """AssemblyHands, egocentric images of one split (train / val / test); one record per annotated hand."""

    name = "assemblyhands"

    def __init__(self, root: str, split: str = "test", version: str = "v1-1", modality: str = "ego",
                 max_samples: int = 0, min_valid: int = ASSEMBLYHANDS_MIN_VALID):
        self.root, self.split, self.version, self.modality = root, split, version, modality
        self.max_samples, self.min_valid = max_samples, min_valid
        self._records: list[Record] | None = None

    def _annotation(self, kind: str) -> dict:
        name = (f"assemblyhands_{self.split}_joint_3d_{self.version}.json" if kind == "joint_3d"
                else f"assemblyhands_{self.split}_{self.modality}_{kind}_{self.version}.json")
        return storage.read_json(storage.join(self.root, "annotations", self.split, name))

    def _invalid_crops(self) -> set[str]:
        """The toolkit's list of unusable crops (``invalid_{split}_{modality}.txt``: "file_name,hand" lines,
        hand 0 = right, 1 = left), when the annotation folder has one."""
        uri = storage.join(self.root, "annotations", self.split, f"invalid_{self.split}_{self.modality}.txt")
        if not storage.exists(uri):
            return set()
        return {line.strip() for line in storage.read_bytes(uri).decode().splitlines() if line.strip()}

    def records(self) -> list[Record]:
        if self._records is not None:
            return self._records
        data = self._annotation("data")
        calib = self._annotation("calib")["calibration"]
        joints = self._annotation("joint_3d")["annotations"]
        images = {im["id"]: im for im in data["images"]}
        invalid = self._invalid_crops()
        out: list[Record] = []
        for ann in data["annotations"]:
            img = images[ann["image_id"]]
            seq, frame = str(img["seq_name"]), f"{int(img['frame_idx']):06d}"
            cam = img["camera"] if str(img["camera"]).endswith(CAMERA_SUFFIX) else f"{img['camera']}{CAMERA_SUFFIX}"
            K = np.asarray(calib[seq]["intrinsics"][cam], np.float64)
            Rt = np.asarray(calib[seq]["extrinsics"][frame][cam], np.float64)
            world = np.asarray(joints[seq][frame]["world_coord"], np.float64).reshape(2 * NUM_JOINTS, 3)
            cam_xyz = world @ Rt[:, :3].T + Rt[:, 3]
            valid = np.asarray(ann["joint_valid"], np.float64).reshape(2 * NUM_JOINTS) > 0
            for hand_index, side in enumerate(("right", "left")):
                box = (ann.get("bbox") or {}).get(side)
                if box is None:
                    continue
                idx = ASSEMBLYHANDS_TO_SPEC + hand_index * NUM_JOINTS
                vis = valid[idx]
                if vis.sum() < self.min_valid or f"{img['file_name']},{hand_index}" in invalid:
                    continue
                xyz = cam_xyz[idx]
                out.append(Record(sample_id=f"assemblyhands:{img['file_name']}:{side}",
                                  image_uri=storage.join(self.root, "images", img["file_name"]), joints_3d=xyz,
                                  joints_2d=project(xyz, K), K=K, side=side, visible=vis,
                                  box=np.asarray(box, np.float64)))
                if self.max_samples and len(out) >= self.max_samples:
                    self._records = out
                    return out
        log.info("AssemblyHands %s (%s): %d hand records", self.split, self.modality, len(out))
        self._records = out
        return out


DATASETS = dict(zip(FINETUNE_DATASETS, (FreiHAND, DexYCB, AssemblyHands)))    # the names: config.py
#: The split fine-tuning trains on and the split ``evaluate`` reports, per dataset (SPEC §4 protocols).
DEFAULT_SPLITS = {"freihand": ("training", "evaluation"), "dexycb": ("train", "test"),
                  "assemblyhands": ("train", "test")}


def open_dataset(name: str, root: str, split: str = "", max_samples: int = 0, train: bool = True) -> HandDataset:
    """A reader by name; ``split`` defaults to the dataset's train (``train=True``) or evaluation split."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: {' | '.join(DATASETS)}")
    split = split or DEFAULT_SPLITS[name][0 if train else 1]
    return DATASETS[name](root, split=split, max_samples=max_samples)


def records_to_rows(records: list[Record]) -> list[dict]:
    return [r.to_row() for r in records]
