"""Give a labeler actor cores of its own. Ray reserves CPUs for an actor but does not pin them, so a
labeler's threads (decode, model, the hand-offs between them) wander across cores; pinned, two labelers on
two cores ran the label benchmark 8-14% faster (benchmarks/label_throughput.py, its "unpinned" row)."""
from __future__ import annotations

import fcntl
import logging
import math
import os

log = logging.getLogger(__name__)

LOCK_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
_held: list[int] = []   # lock fds, open for the life of the process: the kernel drops the locks when it dies


def claim_cores(cpus: float, lock_dir: str = LOCK_DIR) -> frozenset[int] | None:
    """Claim ``ceil(cpus)`` of this process's allowed cores that no other live process on the node holds
    (one flock'd file per core), and pin the calling thread, and the threads it starts later, to them.
    None, pinning nothing, when too few are free or the platform cannot pin."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    want = max(1, math.ceil(cpus))
    got: list[tuple[int, int]] = []
    for core in sorted(os.sched_getaffinity(0)):
        try:
            fd = os.open(os.path.join(lock_dir, f"simhand-ray-core-{core}.lock"), os.O_CREAT | os.O_RDONLY, 0o666)
        except OSError as e:   # e.g. another user's lock file: leave that core alone
            log.debug("core %d: %s", core, e)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        got.append((core, fd))
        if len(got) == want:
            break
    if len(got) < want:
        for _, fd in got:
            os.close(fd)
        return None
    _held.extend(fd for _, fd in got)
    cores = frozenset(c for c, _ in got)
    os.sched_setaffinity(0, cores)
    return cores


def claim_labeler_cores(cpus_per_labeler: float, pin: bool, what: str = "labeler") -> frozenset[int] | None:
    """A labeler actor's cores (``claim_cores``) when pinning is on and it asks for a whole CPU or more;
    logs which it got."""
    cores = claim_cores(cpus_per_labeler) if pin and cpus_per_labeler >= 1 else None
    log.info("%s pid %d pinned to cores %s", what, os.getpid(), sorted(cores) if cores else "none")
    return cores
