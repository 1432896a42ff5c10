"""SoftCEFocalLoss (Zhong et al. 2019, eq. 3): values, masking, stability, 2D/3D."""

from __future__ import annotations

import math

import pytest
import torch

from custom_monai.losses.heatmap_focal import SoftCEFocalLoss, log1m_softmax


def _hand_loss(logits, target, alpha, gamma, focal_weight, thr=0.01):
    """Scalar loops over batch, pixels and channels with Python floats (no torch ops)."""
    b_n, c_n = len(logits), len(logits[0])
    pixels = len(logits[0][0])
    total = 0.0
    for b in range(b_n):
        ce = fl = 0.0
        for x in range(pixels):
            ez = [math.exp(logits[b][c][x]) for c in range(c_n)]
            p = [v / sum(ez) for v in ez]
            for c in range(c_n):
                h = target[b][c][x]
                ce += -h * math.log(p[c])
                ht = p[c] if h > thr else 1.0 - p[c]
                at = 1.0 if alpha is None else (alpha if h > thr else 1.0 - alpha)
                fl += -at * (1.0 - ht) ** gamma * math.log(ht)
        total += 0.5 * ce / pixels + 0.5 * focal_weight * fl / (pixels * c_n)
    return total / b_n


def test_matches_hand_computation():
    logits = [[[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [-0.3, 0.7, 0.1]]]  # (B=1, C=3, 3 pixels)
    target = [[[0.9, 0.005, 0.3], [0.0, 0.6, 0.2], [0.1, 0.395, 0.5]]]  # 0.005, 0.0 are below 0.01
    lt, tt = torch.tensor(logits, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    for alpha, gamma, fw in [(0.25, 2.0, 0.0), (0.25, 2.0, 1.0), (0.6, 1.5, 0.5), (None, 2.0, 1.0)]:
        got = SoftCEFocalLoss(alpha=alpha, gamma=gamma, focal_weight=fw)(lt, tt)
        assert got.item() == pytest.approx(_hand_loss(logits, target, alpha, gamma, fw), rel=1e-10)
    # two samples: mean over the batch
    logits2 = logits + [[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 4.0, 0.5]]]
    target2 = target + [[[0.2, 0.0, 0.7], [0.5, 0.02, 0.3], [0.3, 0.98, 0.0]]]
    got = SoftCEFocalLoss()(torch.tensor(logits2, dtype=torch.float64), torch.tensor(target2, dtype=torch.float64))
    assert got.item() == pytest.approx(_hand_loss(logits2, target2, 0.25, 2.0, 1.0), rel=1e-10)


def test_batch_reduction_and_focal_weight_attribute():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 5)
    t = torch.softmax(torch.randn(3, 4, 6, 5) * 3, 1)
    loss = SoftCEFocalLoss(reduction="none")
    per = loss(x, t)
    assert per.shape == (3,)
    assert SoftCEFocalLoss(reduction="mean")(x, t).item() == pytest.approx(per.mean().item(), rel=1e-6)
    assert SoftCEFocalLoss(reduction="sum")(x, t).item() == pytest.approx(per.sum().item(), rel=1e-6)
    loss.focal_weight = 0.0
    ce_only = loss(x, t)
    assert torch.all(ce_only < per)  # focal term is positive
    ref_ce = 0.5 * (-(t * torch.log_softmax(x, 1)).sum(1)).mean((1, 2))
    assert torch.allclose(ce_only, ref_ce, rtol=1e-5)


def test_near_zero_for_confident_correct_prediction():
    torch.manual_seed(1)
    lab = torch.randint(0, 5, (2, 8, 8))
    onehot = torch.nn.functional.one_hot(lab, 5).permute(0, 3, 1, 2).float()
    loss = SoftCEFocalLoss()
    good = loss(30.0 * (2 * onehot - 1), onehot)
    assert 0.0 <= good.item() < 1e-12
    assert loss(torch.zeros_like(onehot), onehot).item() > 0.5
    assert loss(30.0 * (1 - 2 * onehot), onehot).item() > 10.0  # confidently wrong: large, finite


def test_masked_channels_do_not_change_loss():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 7, 7)
    t = torch.softmax(torch.randn(2, 4, 7, 7) * 2, 1)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    loss = SoftCEFocalLoss(reduction="none")
    ref = loss(x, t, mask)
    t2 = t.clone()
    t2[0, 1] = torch.rand(7, 7)  # the targets of masked channels are never read, even NaN
    t2[1, 0] = float("nan")
    assert torch.allclose(loss(x, t2, mask), ref, rtol=1e-6, atol=1e-7)
    # unmasked channels, including the background, do change it
    for ch in (0, 3):
        x3 = x.clone()
        x3[0, ch] += 1.0
        assert not torch.allclose(loss(x3, t, mask)[0], ref[0])
    # an all-ones mask equals no mask; float masks work like bool masks
    assert torch.allclose(loss(x, t, torch.ones(2, 3)), loss(x, t), rtol=1e-6)
    assert torch.allclose(loss(x, t, mask.float()), ref, rtol=1e-6)


def test_mask_matches_hand_computation():
    """missing="background": the channel stays in the softmax, its own terms are dropped, focal mean over kept ones."""
    logits = [[[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [-0.3, 0.7, 0.1]]]
    target = [[[0.9, 0.005, 0.3], [0.0, 0.6, 0.2], [0.1, 0.395, 0.5]]]
    got = SoftCEFocalLoss(missing="background")(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(target, dtype=torch.float64), torch.tensor([[1, 0]])
    )
    ce = fl = 0.0
    for x in range(3):
        ez = [math.exp(logits[0][c][x]) for c in range(3)]
        p = [v / sum(ez) for v in ez]
        for c in (0, 2):  # channel 1 masked
            h = target[0][c][x]
            ce += -h * math.log(p[c])
            ht, at = (p[c], 0.25) if h > 0.01 else (1 - p[c], 0.75)
            fl += -at * (1 - ht) ** 2 * math.log(ht)
    assert got.item() == pytest.approx(0.5 * ce / 3 + 0.5 * fl / (3 * 2), rel=1e-10)


def test_merge_matches_hand_computation():
    """missing="merge" (default): the masked channel's probability is added to the background's."""
    logits = [[[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [-0.3, 0.7, 0.1]]]
    target = [[[0.9, 0.005, 0.3], [0.0, 0.6, 0.2], [0.1, 0.395, 0.5]]]
    got = SoftCEFocalLoss()(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(target, dtype=torch.float64), torch.tensor([[1, 0]])
    )
    ce = fl = 0.0
    for x in range(3):
        ez = [math.exp(logits[0][c][x]) for c in range(3)]
        p = [v / sum(ez) for v in ez]
        p = [p[0], p[1] + p[2]]  # landmark 0, background + masked landmark 1
        h = [target[0][0][x], target[0][2][x]]
        for c in range(2):
            ce += -h[c] * math.log(p[c])
            ht, at = (p[c], 0.25) if h[c] > 0.01 else (1 - p[c], 0.75)
            fl += -at * (1 - ht) ** 2 * math.log(ht)
    assert got.item() == pytest.approx(0.5 * ce / 3 + 0.5 * fl / (3 * 2), rel=1e-10)


def test_merge_is_blind_to_how_background_and_missing_share_mass():
    """Moving probability between the background and a missing landmark's channel leaves the loss unchanged:
    the unannotated location is never trained as background (the "background" mode does exactly that)."""
    torch.manual_seed(7)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    t = torch.softmax(torch.randn(1, 3, 6, 6, dtype=torch.float64) * 2, 1)
    t[0, 1] = 0.0
    t = t / t.sum(1, keepdim=True)
    mask = torch.tensor([[1, 0]])
    both = torch.logsumexp(x[0, 1:], 0)
    share = torch.sigmoid(torch.randn(6, 6, dtype=torch.float64) * 3)  # new fraction of that mass for landmark 1
    x2 = x.clone()
    x2[0, 1], x2[0, 2] = both + torch.log(share), both + torch.log1p(-share)
    merge = SoftCEFocalLoss(missing="merge")
    assert merge(x2, t, mask).item() == pytest.approx(merge(x, t, mask).item(), rel=1e-9)
    background = SoftCEFocalLoss(missing="background")
    assert background(x2, t, mask).item() != pytest.approx(background(x, t, mask).item(), rel=1e-3)


def test_merge_keeps_a_missing_landmark_detectable():
    """A tiny net learns two landmarks; landmark 0 is unannotated in half the samples. Trained with "merge" its
    channel stays as sharp at the true location as when fully annotated; "background" teaches it to vanish."""

    def make(seed):
        g = torch.Generator().manual_seed(seed)
        pos = torch.randint(4, 12, (64, 2, 2), generator=g)
        img = torch.zeros(64, 2, 16, 16)
        tgt = torch.zeros(64, 3, 16, 16)
        for i in range(64):
            for k in range(2):
                img[i, k, pos[i, k, 0], pos[i, k, 1]] = 1.0
                tgt[i, k, pos[i, k, 0], pos[i, k, 1]] = 1.0
        tgt[:, 2] = 1.0 - tgt[:, :2].sum(1)
        return img, tgt, pos

    img, tgt, pos = make(0)
    mask = torch.ones(64, 2)
    mask[::2, 0] = 0  # landmark 0 unannotated in every other sample: no Gaussian, background 1 at its location
    tgt[::2, 0] = 0.0
    tgt[:, 2] = 1.0 - tgt[:, :2].sum(1)
    peak = {}
    for mode in ("merge", "background"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        loss_fn = SoftCEFocalLoss(focal_weight=0.0, missing=mode)
        for _ in range(150):
            opt.zero_grad()
            loss_fn(net(img), tgt, mask).backward()
            opt.step()
        test_img, _, test_pos = make(1)
        with torch.no_grad():
            prob = torch.softmax(net(test_img), 1)
        peak[mode] = torch.stack([prob[i, 0, test_pos[i, 0, 0], test_pos[i, 0, 1]] for i in range(64)]).mean().item()
    print(f"peak probability at the missing landmark: {peak}")
    assert peak["merge"] > 0.5, peak
    assert peak["background"] < peak["merge"] - 0.1, peak


def test_unknown_missing_mode_is_refused():
    with pytest.raises(ValueError, match="missing must be"):
        SoftCEFocalLoss(missing="drop")


def test_exclude_ignores_masked_logits():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 7, 7)
    t = torch.softmax(torch.randn(2, 4, 7, 7) * 2, 1)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    x2 = x.clone()
    x2[0, 1] = torch.randn(7, 7) * 10
    x2[1, 0] = 25.0
    strict = SoftCEFocalLoss(reduction="none", missing="exclude")
    assert torch.allclose(strict(x2, t, mask), strict(x, t, mask), rtol=1e-6, atol=1e-7)
    default = SoftCEFocalLoss(reduction="none", missing="background")  # the masked logits take mass from the background
    assert not torch.allclose(default(x2, t, mask), default(x, t, mask))


def test_exclude_equals_loss_without_that_channel():
    """With missing="exclude", masking channel k is the same as deleting it from logits and target."""
    torch.manual_seed(3)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    t = torch.softmax(torch.randn(1, 4, 5, 6, dtype=torch.float64), 1)
    t[0, 1] = 0.0
    t = t / t.sum(1, keepdim=True)
    masked = SoftCEFocalLoss(missing="exclude")(x, t, torch.tensor([[1, 0, 1]]))
    dropped = SoftCEFocalLoss()(x[:, [0, 2, 3]], t[:, [0, 2, 3]])
    assert masked.item() == pytest.approx(dropped.item(), rel=1e-9)


@pytest.mark.parametrize("missing", ["merge", "exclude", "background"])
@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (2, 3, 4, 5, 6)])
def test_gradient_finite_2d_3d(shape, missing):
    torch.manual_seed(4)
    x = (torch.randn(*shape) * 40).requires_grad_(True)  # extreme logits
    t = torch.softmax(torch.randn(*shape) * 3, 1)
    mask = torch.ones(shape[0], shape[1] - 1)
    mask[0, 0] = 0
    value = SoftCEFocalLoss(missing=missing)(x, t, mask)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # masked channel: no gradient when removed from the softmax; through the background's term otherwise
    assert torch.all(x.grad[0, 0] == 0) == (missing == "exclude")


def test_3d_matches_flattened_2d():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 5, 6)
    t = torch.softmax(torch.randn(2, 3, 4, 5, 6), 1)
    loss = SoftCEFocalLoss(reduction="none")
    assert torch.allclose(loss(x, t), loss(x.reshape(2, 3, 20, 6), t.reshape(2, 3, 20, 6)), rtol=1e-6)


def test_log1m_softmax_accurate_where_naive_fails():
    torch.manual_seed(6)
    z = torch.randn(3, 6, 5, dtype=torch.float64) * 50
    # exact reference: log of the sum of the other channels' probabilities
    ref = torch.stack(
        [torch.logsumexp(torch.cat([z[:, :c], z[:, c + 1 :]], 1), 1) - torch.logsumexp(z, 1) for c in range(6)], 1
    )
    assert torch.allclose(log1m_softmax(z.float()).double(), ref, atol=1e-4, rtol=1e-5)
    z = torch.tensor([0.0, -200.0, -300.0]).view(1, 3, 1)
    assert log1m_softmax(z)[0, 0, 0].item() == pytest.approx(-200.0, abs=1e-3)
    assert torch.isinf(torch.log1p(-torch.softmax(z, 1)))[0, 0, 0]  # the naive form breaks here


def test_bad_inputs_raise():
    loss = SoftCEFocalLoss()
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="target shape"):
        loss(x, torch.rand(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"mask must be \(B, C-1\)"):
        loss(x, torch.rand(2, 4, 5, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        SoftCEFocalLoss(alpha=2.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_gradient_finite_when_saturated(gamma):
    """Probabilities that round to exactly 0/1 (huge logits) keep finite gradients for any gamma."""
    lab = torch.tensor([[0, 1], [2, 2]])
    onehot = torch.nn.functional.one_hot(lab, 3).permute(2, 0, 1)[None].float()
    x = (200.0 * (2 * onehot - 1)).requires_grad_(True)
    SoftCEFocalLoss(gamma=gamma)(x, onehot).backward()
    assert torch.isfinite(x.grad).all()
