"""claim_cores: labelers on one node take distinct cores, a labeler that finds none free is left unpinned,
and a dead labeler's cores are free again (the kernel drops its flock)."""
import json
import os
import subprocess
import sys

import pytest

from simhand_ray.mining.affinity import claim_cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import json, os, sys
sys.path.insert(0, {repo!r})
os.sched_setaffinity(0, {allowed!r})
from simhand_ray.mining.affinity import claim_cores
got = claim_cores({cpus!r}, lock_dir={lock_dir!r})
print(json.dumps([sorted(got) if got is not None else None, sorted(os.sched_getaffinity(0))]), flush=True)
sys.stdin.readline()   # hold the claim until the test lets go
"""

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux and two cores")


class Claimer:
    """A process that claims cores, reports what it got and how it is pinned, and holds them until closed."""

    def __init__(self, lock_dir, allowed, cpus=1.0):
        src = CHILD.format(repo=REPO, allowed=set(allowed), cpus=cpus, lock_dir=str(lock_dir))
        self.proc = subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, "claimer died"
        self.claimed, self.affinity = json.loads(line)

    def close(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=30) == 0


def two_cores():
    return sorted(os.sched_getaffinity(0))[:2]


def test_labelers_take_distinct_cores_and_the_rest_stay_unpinned(tmp_path):
    cores = two_cores()
    a, b = Claimer(tmp_path, cores), Claimer(tmp_path, cores)
    assert a.claimed == [cores[0]] and a.affinity == [cores[0]]
    assert b.claimed == [cores[1]] and b.affinity == [cores[1]]
    c = Claimer(tmp_path, cores)
    assert c.claimed is None and c.affinity == cores      # none free: left as it was
    for p in (a, b, c):
        p.close()


def test_a_dead_labelers_core_is_free_again(tmp_path):
    cores = two_cores()
    a, b = Claimer(tmp_path, cores), Claimer(tmp_path, cores)
    a.proc.kill()                                         # killed: no clean-up code ran
    a.proc.wait(timeout=30)
    c = Claimer(tmp_path, cores)
    assert c.claimed == [cores[0]]
    for p in (b, c):
        p.close()


def test_whole_cores_for_a_labeler_of_more_than_one_cpu(tmp_path):
    cores = two_cores()
    a = Claimer(tmp_path, cores, cpus=1.5)                # 1.5 CPUs -> two whole cores
    assert a.claimed == cores and a.affinity == cores
    b = Claimer(tmp_path, cores, cpus=1)
    assert b.claimed is None
    for p in (a, b):
        p.close()


def test_unusable_lock_dir_pins_nothing(tmp_path):
    missing = tmp_path / "missing"
    before = os.sched_getaffinity(0)
    assert claim_cores(1, lock_dir=str(missing)) is None
    assert os.sched_getaffinity(0) == before
