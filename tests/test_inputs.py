"""inputs: directories, single files and manifests (txt/csv/parquet) -> input files with source + video id."""
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import real_data
from simhand_ray import storage
from simhand_ray.mining.inputs import expand_inputs


def test_directory_scan(tmp_path):
    d = tmp_path / "clips"
    (d / "sub").mkdir(parents=True)
    shutil.copy(real_data("videos", "Megamind.avi"), d / "sub" / "a.AVI")
    shutil.copy(real_data("images", "handSrc.jpg"), d / "h.jpg")
    (d / "notes.txt").write_text("ignored: not a video or image")
    files = expand_inputs((str(d),))
    assert [(f.video_id, f.kind, f.source) for f in files] == [("h", "image", "clips"), ("sub/a", "video", "clips")]


def test_manifests(tmp_path):
    shutil.copy(real_data("videos", "Megamind.avi"), tmp_path / "m.avi")
    (tmp_path / "list.txt").write_text("# a comment\nm.avi\n")
    (tmp_path / "list.csv").write_text("uri,source,video_id\nm.avi,ego,vid:7\n")
    pq.write_table(pa.table({"uri": [str(tmp_path / "m.avi")], "source": ["doh"]}), tmp_path / "list.parquet")
    txt, = expand_inputs((str(tmp_path / "list.txt"),), "src")
    assert (txt.uri, txt.source, txt.video_id) == (storage.join(str(tmp_path), "m.avi"), "src", "m")
    csv, = expand_inputs((str(tmp_path / "list.csv"),))
    assert (csv.source, csv.video_id) == ("ego", "vid_7")   # ':' would break hand_ids
    par, = expand_inputs((str(tmp_path / "list.parquet"),))
    assert par.source == "doh"


def test_missing_input_fails_before_work(tmp_path):
    with pytest.raises(Exception, match="input not found"):
        expand_inputs((str(tmp_path / "nope"),))


def test_s3_prefix(s3_bucket):
    storage.write_bytes_atomic(f"{s3_bucket}/in/x/h.jpg", real_data("images", "handSrc.jpg").read_bytes())
    f, = expand_inputs((f"{s3_bucket}/in",))
    assert f.uri == f"{s3_bucket}/in/x/h.jpg" and f.video_id == "x/h" and f.kind == "image"
