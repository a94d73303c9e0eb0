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


def test_a_flipped_byte_inside_a_page_is_an_error_naming_the_file(tmp_path):
    """Outputs carry page checksums and the readers verify them: 64 bytes XOR'ed inside the keypoint page of a
    hands file are found (a plain reader without verification returns wrong numbers silently)."""
    import pyarrow.parquet as pq

    from builders import hands_with_crops
    from simhand_ray import schema

    table = hands_with_crops(2, 40).select(["hand_id", "keypoints"]).cast(
        pa.schema([schema.HANDS.field("hand_id"), schema.HANDS.field("keypoints")]))
    uri = str(tmp_path / "hands" / "part-00000.parquet")
    storage.write_parquet_atomic(table, uri)
    meta = pq.ParquetFile(uri).metadata.row_group(0).column(1)       # the keypoints column chunk
    end = (meta.dictionary_page_offset or meta.data_page_offset) + meta.total_compressed_size
    data = bytearray(open(uri, "rb").read())
    at = (meta.data_page_offset + end) // 2                           # inside its data page
    data[at:at + 64] = bytes(b ^ 0x5A for b in data[at:at + 64])
    with open(uri, "wb") as f:
        f.write(bytes(data))
    for read in (lambda: storage.read_parquet(str(tmp_path / "hands")), lambda: storage.read_parquet(uri)):
        with pytest.raises(ValueError, match=r"part-00000.parquet is not a readable Parquet file: .*CRC"):
            read()
    with pytest.raises(ValueError, match="CRC"):
        with storage.open_parquet(uri) as pf:
            pf.read()


def test_what_goes_to_ray_holds_no_credential(s3_bucket, monkeypatch):
    """The filesystems handed to Ray (Ray Train's RunConfig, Ray Data's reads, task arguments) are pickled with
    ``ray.cloudpickle``: recognisable keys in this process's environment appear in none of the bytes, and the
    filesystem still reads and writes (the SDK finds the keys where it is used)."""
    import ray.cloudpickle
    import ray.train

    from simhand_ray.train import checkpoint

    secret, key_id = "Secret-4b1d-" + "x" * 20, "AKIA-KEYID-9f3e"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "Token-77aa")
    storage._s3_filesystem.cache_clear()
    try:
        fs, path = storage.resolve(f"{s3_bucket}/data/x.parquet")
        storage_path, run_fs = checkpoint.run_storage(f"{s3_bucket}/pretrain")
        run_config = ray.train.RunConfig(name="run", storage_path=storage_path, storage_filesystem=run_fs)
        for obj in (fs, run_fs, run_config):
            blob = ray.cloudpickle.dumps(obj)
            assert secret.encode() not in blob and key_id.encode() not in blob and b"Token-77aa" not in blob
        # moto takes any key: the filesystem works with what the SDK finds in this environment
        storage.write_parquet_atomic(pa.table({"a": [1, 2]}), f"{s3_bucket}/data/x.parquet")
        assert storage.read_parquet(f"{s3_bucket}/data/x.parquet").num_rows == 2
    finally:
        storage._s3_filesystem.cache_clear()
