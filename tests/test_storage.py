"""storage: local and real-S3 (moto server) round trips, atomic writes, listing, clear errors."""
import os

import pyarrow as pa
import pytest

from simhand_ray import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_round_trip_and_listing(root):
    storage.write_bytes_atomic(storage.join(root, "a/x.bin"), b"hello")
    storage.write_bytes_atomic(storage.join(root, "a/b/y.TXT"), b"y")
    t = pa.table({"k": [1, 2, 3]})
    storage.write_parquet_atomic(t, storage.join(root, "t/part-0.parquet"), metadata={"stage": "test"})
    storage.write_parquet_atomic(t, storage.join(root, "t/part-1.parquet"))
    assert storage.read_bytes(storage.join(root, "a/x.bin")) == b"hello"
    assert [storage.basename(u) for u in storage.list_files(root)] == ["y.TXT", "x.bin", "part-0.parquet", "part-1.parquet"]  # sorted by full path
    assert [storage.basename(u) for u in storage.list_files(root, (".txt",))] == ["y.TXT"]
    back = storage.read_parquet(storage.join(root, "t"))
    assert sorted(back["k"].to_pylist()) == [1, 1, 2, 2, 3, 3]
    assert storage.exists(storage.join(root, "a/x.bin")) and not storage.exists(storage.join(root, "nope"))
    assert all(u.startswith("s3://") for u in storage.list_files(root)) == storage.is_s3(root)
    storage.check_writable(root)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out" / "f.bin"
    storage.write_bytes_atomic(str(target), b"old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        storage.write_bytes_atomic(str(target), b"new-but-broken")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["f.bin"]  # no temp file left behind


def test_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(storage.StorageError, match="cannot write to s3://no-such-bucket"):
        storage.check_writable("s3://no-such-bucket/out")
    with pytest.raises(storage.StorageError, match="input not found"):
        storage.check_readable("s3://no-such-bucket/in")


def test_unsupported_scheme():
    with pytest.raises(storage.StorageError, match="unsupported URI scheme"):
        storage.resolve("gs://bucket/x")


def test_absolute_makes_local_paths_independent_of_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("out/run") == str(tmp_path / "out" / "run")
    assert storage.absolute("file://out/run") == "file://" + str(tmp_path / "out" / "run")
    assert storage.absolute("/data/x") == "/data/x"
    assert storage.absolute("s3://bucket/out") == "s3://bucket/out"
    assert storage.absolute("") == ""
