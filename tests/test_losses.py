"""Losses vs plain loop-by-loop re-computations (numpy), gradients, SiMHand-W weights, and a world-size-2 gather."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from simhand_ray.train import losses
from simhand_ray.train.model import equivariant_projection


def _unit(v):
    return v / np.sqrt((v ** 2).sum())


def ref_weighted_nt_xent(z1, z2, pos_w=None, neg_w=None, tau=0.5):
    """-w+ s_ap / tau + log sum_{k != a} exp(w-_ak s_ak / tau), averaged over the 2n anchors, by loops."""
    n = len(z1)
    z = [_unit(np.asarray(v, np.float64)) for v in list(z1) + list(z2)]
    total = 0.0
    for a in range(2 * n):
        p = a + n if a < n else a - n
        wp = 1.0 if pos_w is None else pos_w[a % n]
        num = wp * float(np.dot(z[a], z[p])) / tau
        den = 0.0
        for k in range(2 * n):
            if k != a:
                wk = 1.0 if neg_w is None else neg_w[a][k]
                den += math.exp(wk * float(np.dot(z[a], z[k])) / tau)
        total += -num + math.log(den)
    return total / (2 * n)


def ref_weights(kp1, kp2, include_self=False):
    """SiMHand-W weights by loops: mean-joint distances, (max - d) / (max - min), ties -> 1; the negatives'
    min over the off-diagonal distances, or with ``include_self`` over the whole matrix as SiMHand's code."""
    n, joints = len(kp1), len(kp1[0])

    def mjd(a, b):
        return sum(math.dist(a[j], b[j]) for j in range(joints)) / joints

    d_pos = [mjd(kp1[i], kp2[i]) for i in range(n)]
    hi, lo = max(d_pos), min(d_pos)
    pos = [1.0 if hi == lo else (hi - d) / (hi - lo) for d in d_pos]
    allk = list(kp1) + list(kp2)
    d = [[mjd(allk[a], allk[b]) for b in range(2 * n)] for a in range(2 * n)]
    off = [d[a][b] for a in range(2 * n) for b in range(2 * n) if a != b or include_self]
    hi, lo = max(off), min(off)
    neg = [[1.0 if hi == lo else (hi - d[a][b]) / (hi - lo) for b in range(2 * n)] for a in range(2 * n)]
    return pos, neg


def ref_equivariant(z, angle, shift):
    """PeCLR's projection transform by loops over samples and points."""
    out = []
    for v, ang, sh in zip(z, angle, shift):
        pts = _unit(np.asarray(v, np.float64)).reshape(-1, 2)
        extent = pts.max(axis=0) - pts.min(axis=0)
        pts = pts - np.asarray(sh) * extent
        cx, cy = pts.mean(axis=0)
        t = math.radians(-ang)
        rot = []
        for x, y in pts:
            dx, dy = x - cx, y - cy
            rot.append((math.cos(t) * dx + math.sin(t) * dy + cx, -math.sin(t) * dx + math.cos(t) * dy + cy))
        out.append(_unit(np.asarray(rot).reshape(-1)))
    return np.stack(out)


def _batch(n=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    p1, p2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    angle = torch.randint(-45, 46, (n,), generator=g).float()
    angle2 = torch.randint(-45, 46, (n,), generator=g).float()
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.2
    shift2 = (torch.rand(n, 2, generator=g) - 0.5) * 0.2
    kp1 = torch.rand(n, 21, 2, generator=g) * 128
    kp2 = kp1 + torch.randn(n, 21, 2, generator=g) * 10
    return p1, p2, angle, angle2, shift, shift2, kp1, kp2


def test_nt_xent_matches_loop():
    p1, p2, *_ = _batch()
    got = float(losses.nt_xent(p1, p2, temperature=0.5))
    assert got == pytest.approx(ref_weighted_nt_xent(p1.numpy(), p2.numpy()), rel=1e-5)


def test_nt_xent_identical_views_is_low_and_random_is_near_log():
    z = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
    # Perfectly aligned views score lower than random pairings.
    assert float(losses.nt_xent(z, z)) < float(losses.nt_xent(z, torch.randn(8, 32)))


def test_peclr_matches_loop():
    p1, p2, a1, a2, s1, s2, _, _ = _batch()
    got = float(losses.peclr(p1, p2, a1, a2, s1, s2))
    z1 = ref_equivariant(p1.numpy(), a1.numpy(), s1.numpy())
    z2 = ref_equivariant(p2.numpy(), a2.numpy(), s2.numpy())
    assert got == pytest.approx(ref_weighted_nt_xent(z1, z2), rel=1e-5)
    np.testing.assert_allclose(equivariant_projection(p1, a1, s1).numpy(), z1, atol=1e-5)


def test_simhand_is_peclr_on_the_positive_views():
    p1, p2, a1, a2, s1, s2, _, _ = _batch(seed=3)
    assert float(losses.simhand(p1, p2, a1, a2, s1, s2)) == pytest.approx(float(losses.peclr(p1, p2, a1, a2, s1, s2)))


@pytest.mark.parametrize("neg_min", losses.NEG_MIN_MODES)
def test_simhand_w_matches_loop(neg_min):
    p1, p2, a1, a2, s1, s2, k1, k2 = _batch(seed=1)
    got, extras = losses.simhand_w(p1, p2, a1, a2, s1, s2, k1, k2, neg_min=neg_min)
    pos, neg = ref_weights(k1.numpy().tolist(), k2.numpy().tolist(), include_self=neg_min == "reference")
    z1 = ref_equivariant(p1.numpy(), a1.numpy(), s1.numpy())
    z2 = ref_equivariant(p2.numpy(), a2.numpy(), s2.numpy())
    assert float(got) == pytest.approx(ref_weighted_nt_xent(z1, z2, pos, neg), rel=1e-5)
    assert float(extras["pos_weight"]) == pytest.approx(np.mean(pos), rel=1e-5)


def test_adaptive_weights_match_loop_and_range():
    *_, k1, k2 = _batch(n=5, seed=2)
    pos, neg = losses.adaptive_weights(k1, k2, neg_min="exclude-self")
    rpos, rneg = ref_weights(k1.numpy().tolist(), k2.numpy().tolist())
    np.testing.assert_allclose(pos.numpy(), rpos, atol=1e-5)
    off = ~torch.eye(10, dtype=torch.bool)
    np.testing.assert_allclose(neg.numpy()[off.numpy()], np.asarray(rneg)[off.numpy()], atol=1e-5)
    assert pos.shape == (5,) and neg.shape == (10, 10)
    for w in (pos, neg[off]):
        assert float(w.min()) == pytest.approx(0.0, abs=1e-6) and float(w.max()) == pytest.approx(1.0)
    # The closest pair gets weight 1, the farthest 0.
    d = (k1 - k2).norm(dim=-1).mean(dim=1)
    assert float(pos[d.argmin()]) == pytest.approx(1.0) and float(pos[d.argmax()]) == pytest.approx(0.0, abs=1e-6)


def test_weights_ties_are_ones():
    kp = torch.rand(1, 21, 2).repeat(4, 1, 1) * 100
    for mode in losses.NEG_MIN_MODES:
        pos, neg = losses.adaptive_weights(kp, kp.clone(), neg_min=mode)     # every distance is 0
        assert torch.all(pos == 1) and torch.all(neg == 1)
    pos, neg = losses.adaptive_weights(kp[:1], kp[:1] + 3.0, neg_min="exclude-self")  # one distance each way
    assert torch.all(pos == 1) and torch.all(neg == 1)
    # the reference's min is a self-distance (0): the one other sample is as far as the max, weight 0
    pos, neg = losses.adaptive_weights(kp[:1], kp[:1] + 3.0)
    assert torch.all(pos == 1) and torch.equal(neg, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    p1, p2, a1, a2, s1, s2, _, _ = _batch(n=4)
    loss, _ = losses.simhand_w(p1, p2, a1, a2, s1, s2, kp, kp.clone())
    assert float(loss) == pytest.approx(float(losses.peclr(p1, p2, a1, a2, s1, s2)), rel=1e-6)


def test_reference_negative_weights_are_one_minus_distance_over_max():
    """SiMHand's code: w- = (max - d) / (max - min) over the whole 2N x 2N matrix, whose diagonal (each
    sample with itself) is 0, so w- = 1 - d / max; re-derived here with numpy broadcasting."""
    *_, k1, k2 = _batch(n=6, seed=4)
    _, neg = losses.adaptive_weights(k1, k2)
    allk = np.concatenate([k1.numpy(), k2.numpy()]).astype(np.float64)
    d = np.sqrt(((allk[:, None] - allk[None]) ** 2).sum(-1)).mean(-1)
    assert np.allclose(np.diag(d), 0)
    np.testing.assert_allclose(neg.numpy(), 1 - d / d.max(), atol=1e-5)
    _, neg_ex = losses.adaptive_weights(k1, k2, neg_min="exclude-self")
    off = ~np.eye(12, dtype=bool)
    assert (neg.numpy()[off] <= neg_ex.numpy()[off] + 1e-6).all() and not np.allclose(neg.numpy(), neg_ex.numpy())


@pytest.mark.parametrize("chunk", [1 << 27, 100])
def test_mean_joint_distance_equals_a_loop(monkeypatch, chunk):
    """The broadcast formulation (in one block, and in many) equals a loop over pairs and joints."""
    monkeypatch.setattr(losses, "MJD_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(7, 21, 2, generator=g) * 128, torch.rand(9, 21, 2, generator=g) * 128
    got = losses.mean_joint_distance(a, b)
    want = [[sum(math.dist(a[i, j].tolist(), b[k, j].tolist()) for j in range(21)) / 21 for k in range(9)]
            for i in range(7)]
    assert got.shape == (7, 9)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert losses.mean_joint_distance(a[:0], b).shape == (0, 9)


@pytest.mark.parametrize("method", ["simclr", "peclr", "simhand", "simhand-w"])
def test_gradients_finite(method):
    p1, p2, a1, a2, s1, s2, k1, k2 = _batch(n=8, d=128)
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    batch = {"angle1": a1, "angle2": a2, "shift1": s1, "shift2": s2, "keypoints1": k1, "keypoints2": k2}
    loss, _ = losses.contrastive_loss(method, p1, p2, batch)
    loss.backward()
    assert torch.isfinite(loss)
    for p in (p1, p2):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_gather_without_process_group_is_local():
    p1, p2, *_ = _batch()
    assert float(losses.nt_xent(p1, p2, gather_distributed=True)) == pytest.approx(float(losses.nt_xent(p1, p2)))


def _gather_worker(rank: int, world: int, port: int, q) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        p1, p2, a1, a2, s1, s2, k1, k2 = _batch(n=8, d=16, seed=5)
        sl = slice(rank * 4, rank * 4 + 4)
        x1, x2 = p1[sl].clone().requires_grad_(True), p2[sl].clone().requires_grad_(True)
        loss, _ = losses.simhand_w(x1, x2, a1[sl], a2[sl], s1[sl], s2[sl], k1[sl], k2[sl], gather_distributed=True)
        loss.backward()
        q.put((rank, loss.item(), x1.grad.numpy(), x2.grad.numpy()))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_world_size_2_equals_full_batch():
    """Two gloo ranks with half the batch each: mean loss = full-batch loss; gradients = world x full's."""
    import torch.multiprocessing as mp

    from conftest import free_port

    # spawn, not fork: a child forked after the parent ran torch ops can deadlock in the OpenMP pool
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, q), daemon=True) for r in range(2)]
    try:
        for p in procs:
            p.start()
        results = sorted(q.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    p1, p2, a1, a2, s1, s2, k1, k2 = _batch(n=8, d=16, seed=5)
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    full, _ = losses.simhand_w(p1, p2, a1, a2, s1, s2, k1, k2)
    full.backward()
    assert np.mean([r[1] for r in results]) == pytest.approx(full.item(), rel=1e-5)
    for rank, _, g1, g2 in results:
        sl = slice(rank * 4, rank * 4 + 4)
        np.testing.assert_allclose(g1, 2 * p1.grad[sl].numpy(), atol=1e-5)
        np.testing.assert_allclose(g2, 2 * p2.grad[sl].numpy(), atol=1e-5)
