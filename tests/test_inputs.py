"""inputs: directories, single files and manifests (txt/csv/parquet) -> input files with source + video id;
distinct names keep distinct ids, a file reached twice is one input, symlink loops end, bad manifests
fail naming the manifest."""
import os
import shutil
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import real_data
from simhand_ray import storage
from simhand_ray.mining.inputs import clean_id, expand_inputs


def test_directory_scan(tmp_path):
    d = tmp_path / "clips"
    (d / "sub").mkdir(parents=True)
    shutil.copy(real_data("videos", "Megamind.avi"), d / "sub" / "a.AVI")
    shutil.copy(real_data("images", "handSrc.jpg"), d / "h.jpg")
    (d / "notes.txt").write_text("ignored: not a video or image")
    files = expand_inputs((str(d),))
    assert [(f.video_id, f.kind, f.source) for f in files] == [("h.jpg", "image", "clips"), ("sub/a.AVI", "video", "clips")]


def test_manifests(tmp_path):
    shutil.copy(real_data("videos", "Megamind.avi"), tmp_path / "m.avi")
    (tmp_path / "list.txt").write_text("# a comment\nm.avi\n")
    (tmp_path / "list.csv").write_text("uri,source,video_id\nm.avi,ego,vid:7\n")
    pq.write_table(pa.table({"uri": [str(tmp_path / "m.avi")], "source": ["doh"]}), tmp_path / "list.parquet")
    txt, = expand_inputs((str(tmp_path / "list.txt"),), "src")
    assert (txt.uri, txt.source, txt.video_id) == (storage.join(str(tmp_path), "m.avi"), "src", "m.avi")
    csv, = expand_inputs((str(tmp_path / "list.csv"),))
    assert csv.source == "ego" and csv.video_id.startswith("vid_7~")   # ':' would break hand_ids
    assert csv.video_id == clean_id("vid:7") != clean_id("vid_7") == "vid_7"
    par, = expand_inputs((str(tmp_path / "list.parquet"),))
    assert par.source == "doh"


def test_missing_input_fails_before_work(tmp_path):
    with pytest.raises(Exception, match="input not found"):
        expand_inputs((str(tmp_path / "nope"),))


def test_s3_prefix(s3_bucket):
    storage.write_bytes_atomic(f"{s3_bucket}/in/x/h.jpg", real_data("images", "handSrc.jpg").read_bytes())
    f, = expand_inputs((f"{s3_bucket}/in",))
    assert f.uri == f"{s3_bucket}/in/x/h.jpg" and f.video_id == "x/h.jpg" and f.kind == "image"


def test_names_clean_id_would_fold_keep_distinct_ids(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    names = ["hand one.jpg", "hand_one.jpg", "手.jpg", "足.jpg", "clip.mp4", "clip.avi", "a:b.jpg", "a_b.jpg"]
    for n in names:
        (d / n).write_bytes(b"x")
    files = expand_inputs((str(d),))
    ids = [f.video_id for f in files]
    assert len(files) == len(names) and len(set(ids)) == len(names), ids
    assert {"hand_one.jpg", "clip.mp4", "clip.avi", "a_b.jpg"} <= set(ids)     # plain names are kept as they are
    assert all(":" not in i for i in ids)
    assert len({f.key for f in files}) == len(names)
    # the ids depend on the file alone: the same with other files beside it, and on every run
    (d / "other.jpg").write_bytes(b"x")
    assert {f.uri: f.video_id for f in expand_inputs((str(d),))}.items() >= {f.uri: f.video_id for f in files}.items()
    assert clean_id("手") != clean_id("足") and clean_id("手") == clean_id("手")


def test_a_file_reached_twice_is_one_input(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    shutil.copy(real_data("images", "handSrc.jpg"), d / "sub" / "h.jpg")
    os.symlink("sub/h.jpg", d / "alias.jpg")        # the same file under another name
    os.symlink(".", d / "dot")                       # the whole tree again, below itself
    os.symlink(str(d / "sub"), tmp_path / "linked")  # the folder under another path
    (tmp_path / "list.csv").write_text("uri,video_id\nin/sub/h.jpg,first\nin/sub/h.jpg,second\n")
    inputs = [str(d), str(tmp_path / "linked"), str(d / "alias.jpg"), str(tmp_path / "list.csv"), str(d / "sub")]
    f, = expand_inputs(tuple(inputs))
    assert f.uri == str(d / "sub" / "h.jpg")
    # whatever the order of the inputs, the same route wins
    for order in (inputs[::-1], inputs[2:] + inputs[:2]):
        assert expand_inputs(tuple(order)) == [f]
    one, = expand_inputs((str(d),))
    assert (one.uri, one.video_id) == (str(d / "sub" / "h.jpg"), "sub/h.jpg")


def _list_in_thread(path: str, seconds: float = 60) -> list[str]:
    """storage.list_files in a thread, failing if it does not end (a link loop listed forever)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(storage.list_files(path)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"listing {path} did not end"
    return out[0]


def test_symlink_loops_end_and_each_real_file_is_listed_once(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(b"a")
    (d / "sub" / "b.jpg").write_bytes(b"b")
    os.symlink("loop2", d / "loop1")      # two links pointing at each other
    os.symlink("loop1", d / "loop2")
    os.symlink("self", d / "self")        # a link to itself
    os.symlink(".", d / "dot")            # a directory inside itself
    os.symlink("..", d / "sub" / "up")    # a directory inside its child
    os.symlink("/nonexistent/x.jpg", d / "dangling.jpg")
    os.symlink("a.jpg", d / "alias.jpg")
    assert _list_in_thread(str(d)) == [str(d / "a.jpg"), str(d / "sub" / "b.jpg")]
    files = expand_inputs((str(d),))
    assert [f.video_id for f in files] == ["a.jpg", "sub/b.jpg"]


@pytest.mark.parametrize("name, body, message", [
    ("header_only.csv", "uri,source\n", "lists no inputs"),
    ("empty.txt", "# nothing here\n\n", "lists no inputs"),
    ("blank_uri.csv", "uri,source\nm.avi,a\n,b\n", r"blank_uri.csv, line 3: the 'uri' is empty"),
    ("no_uri.csv", "path\nm.avi\n", "no_uri.csv has no 'uri' column"),
    ("latin1.txt", "h\xe9.avi\n".encode("latin-1"), "latin1.txt cannot be read"),
])
def test_bad_manifests_fail_naming_the_manifest(tmp_path, name, body, message):
    p = tmp_path / name
    p.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(ValueError, match=message) as e:
        expand_inputs((str(p),))
    assert str(p) in str(e.value)


def test_parquet_manifest_with_a_null_uri_fails_naming_the_row(tmp_path):
    pq.write_table(pa.table({"uri": ["a.jpg", None]}), tmp_path / "list.parquet")
    with pytest.raises(ValueError, match=r"list.parquet, row 1: the 'uri' is empty"):
        expand_inputs((str(tmp_path / "list.parquet"),))
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), tmp_path / "none.parquet")
    with pytest.raises(ValueError, match=r"none.parquet lists no inputs"):
        expand_inputs((str(tmp_path / "none.parquet"),))


def test_csv_manifest_with_a_byte_order_mark(tmp_path):
    shutil.copy(real_data("images", "handSrc.jpg"), tmp_path / "h.jpg")
    (tmp_path / "list.csv").write_bytes("uri,source\nh.jpg,doh\n".encode("utf-8-sig"))
    f, = expand_inputs((str(tmp_path / "list.csv"),))
    assert (f.uri, f.source) == (str(tmp_path / "h.jpg"), "doh")


def test_relative_manifest_path(tmp_path, monkeypatch):
    shutil.copy(real_data("images", "handSrc.jpg"), tmp_path / "h.jpg")
    (tmp_path / "list.txt").write_text("h.jpg\n")
    monkeypatch.chdir(tmp_path)
    f, = expand_inputs(("list.txt",))
    assert f.uri == str(tmp_path / "h.jpg")
