"""storage: create-if-absent against concurrent writers (local and real-S3 protocol via moto), and
Parquet files that cannot be read are named in the error."""
import numpy as np
import pyarrow as pa
import pytest

from builders import race
from simhand_ray import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_create_if_absent_has_one_winner(root):
    uri = storage.join(root, "stamp.json")
    results = race(8, lambda i: storage.create_if_absent(uri, f"writer {i}".encode()))
    assert sorted(results) == [False] * 7 + [True]
    assert storage.read_bytes(uri) == f"writer {results.index(True)}".encode()   # the winner's bytes, whole
    assert storage.create_if_absent(uri, b"late") is False and storage.read_bytes(uri).startswith(b"writer")
    assert [storage.basename(u) for u in storage.list_files(root)] == ["stamp.json"]   # no temp files left


def test_open_parquet_names_a_corrupt_file(root):
    good = storage.join(root, "good.parquet")
    storage.write_parquet_atomic(pa.table({"x": np.arange(1000)}), good)
    with storage.open_parquet(good) as pf:
        assert pf.read_row_group(0)["x"].to_pylist()[:3] == [0, 1, 2]
    data = storage.read_bytes(good)
    not_parquet = storage.join(root, "garbage.parquet")
    storage.write_bytes_atomic(not_parquet, b"not parquet at all")
    with pytest.raises(ValueError, match="garbage.parquet is not a readable Parquet file"):
        with storage.open_parquet(not_parquet) as pf:
            pass
    truncated = storage.join(root, "truncated.parquet")
    storage.write_bytes_atomic(truncated, data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.parquet is not a readable Parquet file"):
        with storage.open_parquet(truncated) as pf:
            pass
    # a good footer over a damaged page fails only when the page is read: named all the same
    bad_page = bytearray(data)
    bad_page[8:200] = b"\xff" * 192
    damaged = storage.join(root, "damaged.parquet")
    storage.write_bytes_atomic(damaged, bytes(bad_page))
    with pytest.raises(ValueError, match="damaged.parquet is not a readable Parquet file"):
        with storage.open_parquet(damaged) as pf:
            pf.read_row_group(0)


def test_read_parquet_names_a_corrupt_file_among_good_ones(root):
    storage.write_parquet_atomic(pa.table({"x": [1, 2]}), storage.join(root, "t", "a.parquet"))
    storage.write_bytes_atomic(storage.join(root, "t", "b.parquet"), b"PAR1 but nothing else")
    with pytest.raises(ValueError, match=r"t/b.parquet is not a readable Parquet file"):
        storage.read_parquet(storage.join(root, "t"))
    with pytest.raises(FileNotFoundError):
        with storage.open_parquet(storage.join(root, "t", "missing.parquet")):
            pass


def test_settings_difference_compares_values_not_containers():
    from simhand_ray.stage import settings_diff

    before = {"augment": {"crop_margin": [0.9, 1.5], "size": 64}, "seed": 0}
    now = {"augment": {"crop_margin": (0.9, 1.5), "size": 128}, "seed": 0}
    assert settings_diff(before, now) == "augment.size: 64 -> 128"
