"""Every output folder of the mine job is a dataset: hands/, rejects/, segments/ (label), graph/ and pairs/
open whole, with one schema, through pandas, pyarrow.dataset, Ray Data and DuckDB (a reader no one here
wrote), because every side file (manifests, excluded reasons, PCA, montage) starts with ``_``."""
from __future__ import annotations

import os

import pandas as pd
import pyarrow.dataset as pads
import pytest
from builders import graph_config, hands_with_crops, write_hands

from conftest import real_data
from simhand_ray import storage
from simhand_ray.config import LabelConfig, PairsConfig
from simhand_ray.graph.graph_stage import run_graph_stage
from simhand_ray.graph.pairs import run_pairs_stage
from simhand_ray.schema import GRAPH, HANDS, PAIRS, REJECTS, SEGMENTS


@pytest.fixture(scope="module")
def mined(ray_cluster, tmp_path_factory) -> str:
    """A mine output with graph/ (PCA on, one hand without a descriptor) and pairs/, written by the stages."""
    out = str(tmp_path_factory.mktemp("mine"))
    write_hands(out, hands_with_crops(6, 5, seed=4))
    cfg = graph_config(out, k=3, pca_dim=6, rows_per_part=10, pairs=PairsConfig(pairs_per_shard=8))
    run_graph_stage(cfg)
    run_pairs_stage(cfg)
    return out


@pytest.fixture(scope="module")
def labeled(ray_cluster, tmp_path_factory) -> tuple[str, dict]:
    """A label output of a real video, a real hand photo and an unreadable image (so rejects/ has a part)."""
    from simhand_ray.mining.label_stage import run_label_stage

    d = tmp_path_factory.mktemp("in")
    (d / "good.avi").write_bytes(real_data("videos", "Megamind.avi").read_bytes())
    (d / "hand.jpg").write_bytes(real_data("images", "handSrc.jpg").read_bytes())
    (d / "broken.jpg").write_bytes(b"not a picture")
    out = str(tmp_path_factory.mktemp("label"))
    summary = run_label_stage(LabelConfig(inputs=(str(d),), output=out, every_n=30), progress=False)
    return out, summary


def duckdb_rows(folder: str) -> tuple[int, list[str]]:
    """(rows, column names) of every Parquet file in ``folder`` read by DuckDB as one table."""
    import duckdb

    con = duckdb.connect()
    columns = con.sql(f"SELECT * FROM read_parquet('{folder}/*.parquet')").columns
    count = con.execute(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchall()[0][0]
    return count, columns


@pytest.mark.parametrize("name, schema", [("hands", HANDS), ("rejects", REJECTS), ("segments", SEGMENTS)])
def test_label_folders_open_whole_as_one_dataset(labeled, name, schema):
    out, summary = labeled
    rows = {"hands": summary["hands_kept"], "rejects": sum(summary["rejects"].values()),
            "segments": summary["work_items"]}[name]
    assert rows > 0
    assert_one_dataset(storage.join(out, name), schema, rows)


@pytest.mark.parametrize("name, schema, rows", [("graph", GRAPH, 30), ("pairs", PAIRS, 29)])
def test_stage_folder_opens_whole_as_one_dataset(mined, name, schema, rows):
    assert_one_dataset(storage.join(mined, name), schema, rows)


def assert_one_dataset(folder: str, schema, rows: int) -> None:
    import ray

    side = sorted(n for n in os.listdir(folder) if not n.endswith(".parquet"))
    assert all(n.startswith("_") for n in side), side              # e.g. _manifest.json, _montage.jpg
    assert storage.list_parts(folder) == storage.list_files(folder, (".parquet",))

    df = pd.read_parquet(folder)
    assert len(df) == rows and list(df.columns) == schema.names
    ds = pads.dataset(folder, format="parquet")
    assert ds.schema.names == schema.names and ds.count_rows() == rows
    assert ds.to_table().cast(schema).num_rows == rows
    rd = ray.data.read_parquet(folder)
    assert rd.count() == rows and rd.schema().names == schema.names
    assert duckdb_rows(folder) == (rows, schema.names)
