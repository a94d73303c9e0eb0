"""`make demo` and the README's next steps run as written: the Makefile's demo recipe, then every command of
the README's ``demo-next`` block, each a job started as a user would (its own local Ray), with ``out/demo``
moved to a temporary folder. The demo's pairs are similar hands from different videos."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pyarrow.compute as pc
import pytest

from conftest import REPO
from simhand_ray import storage

pytestmark = pytest.mark.slow


def demo_recipe() -> list[str]:
    """The commands of the Makefile's ``demo`` target."""
    text = (REPO / "Makefile").read_text()
    body = text.split("\ndemo: setup\n", 1)[1]
    lines = []
    for line in body.splitlines():
        if not line.startswith("\t"):
            break
        lines.append(line.strip())
    return lines


def readme_next() -> list[str]:
    """The commands of the README's block between ``<!-- demo-next -->`` and ``<!-- /demo-next -->``."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- demo-next -->\s*```bash\n(.*?)```\s*<!-- /demo-next -->", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run(command: str, out_demo: str) -> subprocess.CompletedProcess:
    """One documented command with the repo's interpreter and ``out/demo`` moved to ``out_demo``."""
    argv = shlex.split(command.replace("out/demo", out_demo))
    assert argv[0] in ("$(PY)", ".venv/bin/python"), command
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    res = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def test_make_demo_and_the_readme_next_steps_run_as_written(tmp_path):
    out = str(tmp_path / "demo")
    recipe, steps = demo_recipe(), readme_next()
    assert len(recipe) == 2 and len(steps) == 4
    logs = [run(command, out) for command in recipe]
    mine_log = logs[1].stdout + logs[1].stderr          # a normal run, output not a terminal
    for redraw in ("\r", "\x1b[A", "\x1b[K", "\x1b[2K"):        # progress-bar redraws, cursor up, erase line
        assert redraw not in mine_log, repr(redraw)
    for noise in ("Execution plan", "Starting execution", "Progress bars disabled", "XNNPACK", "InitGoogle",
                  "NORM_RECT", "swigfaiss", "deprecated"):
        assert noise not in mine_log, noise
    assert mine_log.count("simhand.mine: summary:") == 1 and "label summary" not in mine_log

    mine = os.path.join(out, "mine")
    assert os.path.exists(os.path.join(mine, "pairs", "_montage.jpg"))
    pairs = storage.read_parquet(os.path.join(mine, "pairs"), columns=["anchor_id", "positive_id"])
    hands = storage.read_parquet(os.path.join(mine, "hands"), columns=["hand_id", "source", "video_id"])
    assert len(pairs) >= 64                                       # enough for the README's batch of 32
    video = dict(zip(hands["hand_id"].to_pylist(), zip(hands["source"].to_pylist(), hands["video_id"].to_pylist())))
    assert all(video[a] != video[p] for a, p in zip(pairs["anchor_id"].to_pylist(), pairs["positive_id"].to_pylist()))
    synthetic = pc.sum(pc.starts_with(hands["video_id"], "synth_")).as_py()
    assert 0 < synthetic < len(hands)                             # synthetic and real inputs both gave hands

    for command in steps:
        run(command, out)
    assert os.path.exists(os.path.join(out, "pretrain", "trunk.pt"))
    assert storage.list_files(os.path.join(out, "probe"))
    mining = storage.read_json(os.path.join(out, "mining", "mining.json"))    # the demo's pairs against 3D truth
    assert mining["oracle"] < mining["mined"] < mining["random"] and mining["hands"]["unmatched"]["no_sidecar"] > 0
    assert os.path.exists(os.path.join(out, "synth-freihand", "freihand", "evaluation_xyz.json"))
