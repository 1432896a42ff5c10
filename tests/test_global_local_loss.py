"""CellLoss: L1 on log-displacements + alpha * BCE on presence, masked per landmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from custom_monai.losses.cell_loss import CellLoss
from custom_monai.transforms.cell_targets import encode_cells


def _batch(ndim: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grid = (4, 3) if ndim == 2 else (3, 2, 2)
    b, n = 2, 3
    logits = torch.randn(b, n, *grid, generator=g, requires_grad=True)
    disp = torch.randn(b, n, ndim, *grid, generator=g, requires_grad=True)
    presence = torch.zeros(b, n, *grid)
    presence.view(b, n, -1)[:, :, 1] = 1.0
    target = torch.randn(b, n, ndim, *grid, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    return logits, disp, presence, target, mask


@pytest.mark.parametrize("ndim", [2, 3])
def test_matches_reference_on_present_landmarks(ndim):
    logits, disp, presence, target, mask = _batch(ndim)
    loss = CellLoss(alpha=20.0)
    parts = loss.components((logits, disp), presence, target, mask)
    keep = mask > 0
    reg = F.l1_loss(disp[keep], target[keep])
    cls = F.binary_cross_entropy_with_logits(logits[keep], presence[keep])
    torch.testing.assert_close(parts["regression"], reg)
    torch.testing.assert_close(parts["classification"], cls)
    total = loss((logits, disp), presence, target, mask)
    torch.testing.assert_close(total, reg + 20.0 * cls)
    assert set(loss.last_parts) == {"regression", "classification"}
    # no mask = all landmarks present
    torch.testing.assert_close(
        CellLoss(alpha=2.0)((logits, disp), presence, target),
        F.l1_loss(disp, target) + 2.0 * F.binary_cross_entropy_with_logits(logits, presence),
    )


def test_missing_landmarks_do_not_change_the_loss_or_get_gradients():
    logits, disp, presence, target, mask = _batch()
    loss = CellLoss()
    ref = loss((logits, disp), presence, target, mask)
    p2, t2 = presence.clone(), target.clone()
    p2[0, 1], t2[0, 1] = 1.0, float("nan")  # masked (image 0, landmark 1): garbage targets
    p2[1, 2], t2[1, 2] = 0.5, 1e6
    changed = loss((logits, disp), p2, t2, mask)
    torch.testing.assert_close(changed, ref)
    changed.backward()
    assert torch.all(logits.grad[0, 1] == 0) and torch.all(disp.grad[1, 2] == 0)
    assert logits.grad[0, 0].abs().sum() > 0 and disp.grad[0, 2].abs().sum() > 0
    # but a present landmark's target does matter
    t3 = target.clone()
    t3[0, 0] += 1.0
    assert loss((logits, disp), presence, t3, mask) > ref


def test_perfect_prediction_and_all_missing():
    pts = np.array([[20.0, 50.0], [np.nan, np.nan]], dtype=np.float32)
    presence, disp, mask = (torch.as_tensor(a)[None] for a in encode_cells(pts, (2, 2), 32))
    logits = (presence * 2 - 1) * 50.0  # confident and right
    parts = CellLoss().components((logits, disp.clone()), presence, disp, mask)
    assert parts["regression"].item() == 0.0 and parts["classification"].item() < 1e-12
    none = CellLoss()((logits.requires_grad_(), disp), presence, disp, torch.zeros(1, 2))
    assert none.item() == 0.0 and torch.isfinite(none)
    none.backward()


def test_shape_errors():
    logits, disp, presence, target, mask = _batch()
    loss = CellLoss()
    with pytest.raises(ValueError, match="presence"):
        loss((logits, disp), presence[:, :2], target, mask)
    with pytest.raises(ValueError, match="displacement"):
        loss((logits, disp), presence, target[..., :2], mask)
    with pytest.raises(ValueError, match="mask"):
        loss((logits, disp), presence, target, mask[:, :2])
    with pytest.raises(ValueError, match="pred"):
        loss((logits,), presence, target, mask)
