"""Expansive Exploration: regions, crop/paste, threshold-mean decoding, coarse arg-max."""

from __future__ import annotations

import math

import pytest
import torch

from custom_monai.inferers.expansive_exploration import (
    ExpansiveExplorationInferer,
    coarse_from_global,
    crop_regions,
    decode_threshold_mean,
    expansive_regions,
)
from custom_monai.networks.attention_unet import LandmarkUNet

SIGMA = 4.9  # local-stage Gaussian (SPECS §5 default)


def coordinate_image(w: int, h: int) -> torch.Tensor:
    """(1, 1, W, H) image whose pixel (x, y) holds 1 + x * H + y: any crop reveals where it was taken."""
    return (1.0 + torch.arange(w * h, dtype=torch.float32)).view(1, 1, w, h)


class OracleNet:
    """Fake local net: for a crop taken at offset o it outputs the Gaussians of the true points p - o.

    The offset is read from the crop itself (its largest pixel decodes to image coordinates), so the
    net does not rely on the inferer's region order. Returns logits = log(probabilities) with a
    background channel last. Records every crop offset it saw.
    """

    def __init__(self, points: torch.Tensor, image_h: int) -> None:
        self.points = points.float()
        self.h = image_h
        self.offsets: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, rw, rh = x.shape
        flat = x[:, 0].reshape(b, -1)
        v, arg = flat.max(1)
        a, c = arg // rh, arg % rh  # position inside the crop
        gx, gy = (v.long() - 1) // self.h, (v.long() - 1) % self.h  # position in the image
        off = torch.stack([gx - a, gy - c], 1).float()  # (B, 2) crop origin in the image
        self.offsets.append(off)
        xs = torch.arange(rw, dtype=torch.float32).view(1, 1, rw, 1)
        ys = torch.arange(rh, dtype=torch.float32).view(1, 1, 1, rh)
        local = self.points[None] - off[:, None]  # (B, N, 2)
        d2 = (xs - local[..., 0, None, None]) ** 2 + (ys - local[..., 1, None, None]) ** 2
        g = torch.exp(-d2 / (2 * SIGMA**2))
        bg = (1.0 - g.sum(1, keepdim=True)).clamp_min(1e-6)
        return torch.log(torch.cat([g, bg], 1).clamp_min(1e-12))


def test_regions_offsets_are_60px_for_150_and_1_8():
    c = torch.tensor([[200.0, 300.0], [10.5, 20.25]])
    r = expansive_regions(c, region=150, eps=1.8)
    assert r.shape == (2, 5, 2)
    off = r - c[:, None]
    expected = torch.tensor([[-60.0, -60.0], [-60.0, 60.0], [60.0, -60.0], [60.0, 60.0], [0.0, 0.0]])
    assert torch.allclose(off, expected[None].expand(2, -1, -1), atol=1e-4)
    # corner regions tile a square of side eps * region, each pair overlapping by (2 - eps) * region
    assert (off[0, 3, 0] - off[0, 0, 0]) + 150 == pytest.approx(270.0)
    # 3D: 8 corners + centre
    r3 = expansive_regions(torch.zeros(1, 3), region=100, eps=1.5)
    assert r3.shape == (1, 9, 3)
    assert torch.all(r3[0, :8].abs() == 25.0) and torch.all(r3[0, 8] == 0)


def test_crop_regions_zero_pads_outside():
    img = coordinate_image(20, 30)[0]
    patches, inside = crop_regions(img, torch.tensor([[-2, 5], [15, 27]]), 6)
    assert patches.shape == (2, 1, 6, 6) and inside.shape == (2, 6, 6)
    assert torch.equal(patches[0, 0, 2:], img[0, 0:4, 5:11])
    assert torch.all(patches[0, 0, :2] == 0) and not inside[0, :2].any() and inside[0, 2:].all()
    assert torch.equal(patches[1, 0, :5, :3], img[0, 15:20, 27:30])
    assert torch.all(patches[1, 0, 5:] == 0) and torch.all(patches[1, 0, :, 3:] == 0)


def test_decode_threshold_mean_hand_case():
    m = torch.zeros(2, 5, 6)
    m[0, 1, 2] = 0.2
    m[0, 3, 4] = 0.8
    m[0, 2, 5] = 1.0
    m[0, 0, 0] = 0.55  # 0.55 >= 0.5 after normalising by max 1.0 -> kept
    m[0, 4, 1] = 0.49  # dropped
    # kept: (3,4), (2,5), (0,0) -> mean (5/3, 3)
    m[1] = 0.3  # constant map: nothing to decode
    pts, found = decode_threshold_mean(m, 0.5)
    assert torch.allclose(pts[0], torch.tensor([5 / 3, 3.0]))
    assert found.tolist() == [True, False] and torch.isnan(pts[1]).all()
    # the minimum matters: with a floor of 0.4 everywhere, 0.55 -> 0.25 normalised (dropped), 0.8 -> 0.67 kept
    m2 = m[:1].clone()
    m2[m2 == 0] = 0.4
    pts2, _ = decode_threshold_mean(m2, 0.5)
    assert torch.allclose(pts2[0], torch.tensor([2.5, 4.5]))
    # ... unless an explicit minimum (the 0 outside the regions) is given
    pts3, _ = decode_threshold_mean(m2, 0.5, minimum=torch.zeros(1))
    assert torch.allclose(pts3[0], torch.tensor([5 / 3, 3.0]))
    # invalid pixels are ignored
    valid = torch.ones(1, 5, 6, dtype=torch.bool)
    valid[0, 2, 5] = False
    pts4, _ = decode_threshold_mean(m[:1], 0.5, valid=valid)  # max now 0.8: keeps 0.8, 0.55 and 0.49
    assert torch.allclose(pts4[0], torch.tensor([7 / 3, 5 / 3]))


def test_coarse_from_global_argmax_skips_background():
    probs = torch.zeros(2, 4, 30, 40)
    pts = torch.tensor([[[3, 7], [29, 0], [12, 39]], [[0, 0], [15, 20], [1, 2]]])
    for b in range(2):
        for i in range(3):
            probs[b, i, pts[b, i, 0], pts[b, i, 1]] = 1.0
    probs[:, 3] = 5.0  # background would win everywhere if it were included
    out = coarse_from_global(probs, 3)
    assert out.dtype == torch.float32 and torch.equal(out, pts.float())
    with pytest.raises(ValueError, match="n_landmarks"):
        coarse_from_global(probs, 5)


TRUE = torch.tensor([[200.3, 180.7], [120.0, 300.5], [310.6, 90.2], [12.4, 9.6]])


@pytest.mark.parametrize(
    "shift",
    [
        [[50.0, 0.0], [0.0, -50.0], [-35.0, 35.0], [20.0, 18.0]],  # 50 px away
        [[100.0, -90.0], [-95.0, 0.0], [80.0, -110.0], [-90.0, -85.0]],  # beyond the single region
    ],
)
def test_expansion_recovers_true_point(shift):
    img = coordinate_image(400, 420)
    net = OracleNet(TRUE, image_h=420)
    coarse = TRUE - torch.tensor(shift)
    inferer = ExpansiveExplorationInferer(net, region_size=150, eps=1.8, expand=True)
    pts, conf = inferer(img, coarse)
    assert pts.shape == (4, 2) and conf.shape == (4,)
    err = (pts - TRUE).norm(dim=1)
    assert torch.all(err < 0.5), err
    assert torch.all(conf > 0.9) and torch.all(conf <= 1.0)
    # the 4 centred regions in one forward pass, then 4 x 4 corner regions in ceil(16 / 32) = 1 more;
    # region centres at coarse and coarse + (±60, ±60)
    assert len(net.offsets) == 2
    seen = torch.cat([net.offsets[1].view(4, 4, 2), net.offsets[0].view(4, 1, 2)], 1) + 75
    assert torch.allclose(seen, torch.floor(expansive_regions(coarse) + 0.5))
    assert inferer.explored.all()


def test_adaptive_expansion_explores_only_unconfident_landmarks():
    """``expand_below``: a landmark found in its centred region keeps the no-expansion answer and costs one
    region; a global miss (only a Gaussian tail in the centred region) is explored and recovered."""
    img = coordinate_image(400, 420)
    net = OracleNet(TRUE, image_h=420)
    coarse = TRUE - torch.tensor([[10.0, 5.0], [-100.0, 90.0], [3.0, -4.0], [0.0, 0.0]])  # landmark 1 is missed
    inferer = ExpansiveExplorationInferer(net, region_size=150, eps=1.8, expand=True, expand_below=0.5)
    pts, conf = inferer(img, coarse)
    assert torch.all((pts - TRUE).norm(dim=1) < 0.5)
    assert inferer.explored.tolist() == [False, True, False, False]
    assert [o.shape[0] for o in net.offsets] == [4, 4]  # 4 centred regions, then 4 corners of landmark 1 only
    single = ExpansiveExplorationInferer(net, region_size=150, expand=False)(img, coarse)[0]
    assert (single[1] - TRUE[1]).norm() > 10.0 and torch.allclose(single[[0, 2, 3]], pts[[0, 2, 3]])
    never = ExpansiveExplorationInferer(net, region_size=150, expand=True, expand_below=0.0)
    assert torch.equal(never(img, coarse)[0], single) and not never.explored.any()


def test_without_expansion_fails_outside_the_centred_region():
    img = coordinate_image(400, 420)
    net = OracleNet(TRUE, image_h=420)
    near = TRUE - torch.tensor([[50.0, 0.0], [0.0, -50.0], [-35.0, 35.0], [20.0, 18.0]])
    far = TRUE - torch.tensor([[100.0, -90.0], [-95.0, 0.0], [80.0, -110.0], [0.0, 0.0]])
    single = ExpansiveExplorationInferer(net, region_size=150, expand=False)
    pts, _ = single(img, near)
    assert torch.all((pts - TRUE).norm(dim=1) < 0.5)  # inside the single region: fine
    pts, conf = single(img, far)
    err = (pts - TRUE).norm(dim=1)
    assert torch.all(err[:3] > 10.0), err  # the true point is outside the one 150 px region
    assert err[3] < 0.5
    assert torch.all(conf[:3] < 0.5)  # only a Gaussian tail was seen
    expanded, _ = ExpansiveExplorationInferer(net, region_size=150, expand=True)(img, far)
    assert torch.all((expanded - TRUE).norm(dim=1) < 0.5)


def _reference_full_map(image, coarse, net, region, eps, expand, threshold):
    """Paper-literal version: paste every region into a full-size H_M, loop over landmarks and regions."""
    w, h = image.shape[2:]
    n = coarse.shape[0]
    pts = torch.zeros(n, 2)
    for i in range(n):
        total = torch.zeros(w, h)
        count = torch.zeros(w, h)
        centres = expansive_regions(coarse[i : i + 1], region, eps)[0] if expand else coarse[i : i + 1]
        for c in centres:
            sx, sy = (int(math.floor(float(v) + 0.5)) - region // 2 for v in c)
            patch = torch.zeros(1, image.shape[1], region, region)
            x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(sx + region, w), min(sy + region, h)
            patch[0, :, x0 - sx : x1 - sx, y0 - sy : y1 - sy] = image[0, :, x0:x1, y0:y1]
            with torch.no_grad():
                prob = torch.softmax(net(patch), 1)[0, i]
            total[x0:x1, y0:y1] += prob[x0 - sx : x1 - sx, y0 - sy : y1 - sy]
            count[x0:x1, y0:y1] += 1
        hm = total / count.clamp_min(1)
        norm = (hm - hm.min()) / (hm.max() - hm.min())
        keep = (norm >= threshold) & (norm > 0)
        idx = keep.nonzero().float()
        pts[i] = idx.mean(0)
    return pts


@pytest.mark.parametrize("expand", [True, False])
def test_local_canvas_equals_full_size_map(expand):
    """The union-canvas paste gives the same points as pasting into a full-size map (random net)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.Tanh(), torch.nn.Conv2d(4, 4, 5, padding=2)
    ).eval()
    image = torch.rand(1, 1, 90, 110)
    coarse = torch.tensor([[45.0, 55.0], [5.0, 100.0], [80.2, 3.7]])
    inferer = ExpansiveExplorationInferer(net, region_size=40, eps=1.5, expand=expand, batch_size=4)
    pts, conf = inferer(image, coarse)
    ref = _reference_full_map(image, coarse, net, 40, 1.5, expand, 0.5)
    assert torch.allclose(pts, ref, atol=1e-4)
    assert torch.all(conf > 0) and torch.all(conf <= 1)


def test_regions_covering_whole_image_use_the_map_minimum():
    """If the regions cover the image, H_M has no 0 area: min-max uses the map's own minimum."""
    torch.manual_seed(1)
    net = torch.nn.Conv2d(1, 3, 3, padding=1).eval()
    image = torch.rand(1, 1, 30, 26)
    coarse = torch.tensor([[15.0, 13.0], [14.0, 12.0]])
    inferer = ExpansiveExplorationInferer(net, region_size=40, eps=1.5)
    pts, _ = inferer(image, coarse)
    ref = _reference_full_map(image, coarse, net, 40, 1.5, True, 0.5)
    assert torch.allclose(pts, ref, atol=1e-4)


def test_with_landmark_unet_and_missing_coarse_point():
    torch.manual_seed(2)
    net = LandmarkUNet(out_channels=3, features=(4, 4, 8, 8, 16, 4)).eval()
    image = torch.rand(1, 1, 120, 100)
    coarse = torch.tensor([[60.0, 50.0], [float("nan"), 3.0]])
    pts, conf = ExpansiveExplorationInferer(net, region_size=50, batch_size=3)(image, coarse)
    assert torch.isfinite(pts[0]).all() and torch.isnan(pts[1]).all()
    assert 0 < conf[0] <= 1 and conf[1] == 0
    # the point lies within the union of the regions (side eps * region = 90 around the coarse point)
    assert torch.all((pts[0] - coarse[0]).abs() <= 45)


def test_3d_recovers_true_point():
    true = torch.tensor([[20.3, 14.6, 25.2]])

    def net(x):  # Gaussian of the true point, offset read from the crop (coordinate-coded volume)
        b, _, *size = x.shape
        v, arg = x[:, 0].reshape(b, -1).max(1)
        pos_crop = torch.stack(torch.unravel_index(arg, size), 1)
        pos_img = torch.stack(torch.unravel_index(v.long() - 1, (40, 36, 44)), 1)
        off = (pos_img - pos_crop).float()
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))
        d2 = ((grid[None] - (true[0] - off)[:, :, None, None, None]) ** 2).sum(1, keepdim=True)
        g = torch.exp(-d2 / (2 * 2.0**2))
        return torch.log(torch.cat([g, (1 - g).clamp_min(1e-6)], 1).clamp_min(1e-12))

    image = (1.0 + torch.arange(40 * 36 * 44, dtype=torch.float32)).view(1, 1, 40, 36, 44)
    coarse = true + torch.tensor([[-11.0, 10.0, 9.0]])  # corner regions reach ±(7.2 + 8) voxels
    pts, _ = ExpansiveExplorationInferer(net, region_size=16, eps=1.9, expand=True)(image, coarse)
    assert (pts - true).norm() < 0.5
    pts, _ = ExpansiveExplorationInferer(net, region_size=16, expand=False)(image, coarse)
    assert (pts - true).norm() > 3.0


def test_bad_inputs_raise():
    net = torch.nn.Conv2d(1, 3, 1)
    inferer = ExpansiveExplorationInferer(net, region_size=10)
    with pytest.raises(ValueError, match=r"image must be \(1, C"):
        inferer(torch.rand(2, 1, 20, 20), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"coarse must be \(N, 2\)"):
        inferer(torch.rand(1, 1, 20, 20), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expected 4 channels"):
        inferer(torch.rand(1, 1, 20, 20), torch.zeros(3, 2))  # 3 landmarks need 4 channels


def test_probability_net_and_no_background_channel():
    """softmax=False takes the net's probabilities as they are; background=False expects N channels."""
    torch.manual_seed(3)
    logits_net = LandmarkUNet(out_channels=3, features=(4, 4, 8, 8, 16, 4)).eval()
    prob_net = LandmarkUNet(out_channels=3, features=(4, 4, 8, 8, 16, 4), softmax=True).eval()
    prob_net.load_state_dict(logits_net.state_dict())
    image = torch.rand(1, 1, 80, 70)
    coarse = torch.tensor([[30.0, 40.0], [60.0, 20.0]])
    a = ExpansiveExplorationInferer(logits_net, region_size=32)(image, coarse)
    b = ExpansiveExplorationInferer(prob_net, region_size=32, softmax=False)(image, coarse)
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-5)
    # 3 landmarks, no background channel: a 3-channel net is accepted, its channels used directly
    coarse3 = torch.tensor([[30.0, 40.0], [60.0, 20.0], [10.0, 10.0]])
    pts, conf = ExpansiveExplorationInferer(prob_net, region_size=32, softmax=False, background=False)(image, coarse3)
    assert pts.shape == (3, 2) and torch.isfinite(pts).all() and torch.all(conf > 0)


def test_no_landmarks_and_integer_image():
    net = torch.nn.Conv2d(1, 3, 3, padding=1).eval()
    inferer = ExpansiveExplorationInferer(net, region_size=12)
    pts, conf = inferer(torch.rand(1, 1, 30, 30), torch.zeros(0, 2))
    assert pts.shape == (0, 2) and conf.shape == (0,)
    pts, _ = inferer(torch.randint(0, 255, (1, 1, 30, 30), dtype=torch.uint8), torch.tensor([[15.0, 15.0], [3, 4]]))
    assert torch.isfinite(pts).all()


class TwoPeakNet:
    """Fake local net with a look-alike: the true landmark's Gaussian plus a ``decoy_height`` Gaussian at ``decoys``."""

    def __init__(self, points: torch.Tensor, decoys: torch.Tensor, decoy_height: float, image_h: int) -> None:
        self.true, self.decoy, self.height = OracleNet(points, image_h), OracleNet(decoys, image_h), decoy_height

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = self.true(x)[:, :-1].exp() + self.height * self.decoy(x)[:, :-1].exp()
        bg = (1.0 - g.sum(1, keepdim=True)).clamp_min(1e-6)
        return torch.log(torch.cat([g, bg], 1).clamp_min(1e-12))


def test_decode_peak_component_ignores_a_second_blob():
    m = torch.zeros(1, 20, 20)
    m[0, 2:4, 2:4] = 1.0  # the peak's blob, mean (2.5, 2.5)
    m[0, 14:16, 15:17] = 0.9  # a look-alike above the threshold, not connected
    both, _ = decode_threshold_mean(m, 0.5)
    assert torch.allclose(both[0], torch.tensor([(4 * 2.5 + 4 * 14.5) / 8, (4 * 2.5 + 4 * 15.5) / 8]))
    one, found = decode_threshold_mean(m, 0.5, component=True)
    assert found.all() and torch.allclose(one[0], torch.tensor([2.5, 2.5]))
    m[0, 9, 9] = 2.0  # the maximum moves: now the lone pixel is the component
    assert torch.allclose(decode_threshold_mean(m, 0.5, component=True)[0][0], torch.tensor([9.0, 9.0]))


def test_global_prior_keeps_the_point_off_a_look_alike():
    """A look-alike 40 px from a correctly found landmark, inside the explored area: the paper's decoding
    averages the two blobs (a point on neither); the global prior keeps the landmark."""
    img = coordinate_image(400, 420)
    true = TRUE[:3]
    decoys = true + torch.tensor([[0.0, 40.0], [40.0, 0.0], [-30.0, -30.0]])
    net = TwoPeakNet(true, decoys, 1.0, image_h=420)

    def prior(coords, landmarks):  # the global stage's belief: a Gaussian of 15 px around the true point
        return torch.exp(-((coords - true[landmarks][:, None]) ** 2).sum(-1) / (2 * 15.0**2))

    paper = ExpansiveExplorationInferer(net, region_size=150, eps=1.8, expand=True)(img, true)[0]
    assert torch.all((paper - true).norm(dim=1) > 10.0)
    guided = ExpansiveExplorationInferer(net, region_size=150, eps=1.8, expand=True, prior_power=1.0)
    pts, conf = guided(img, true, prior)
    assert torch.all((pts - true).norm(dim=1) < 1.0) and torch.all(conf > 0)
    # prior_power 0 ignores a given prior (the paper's fusion)
    off = ExpansiveExplorationInferer(net, region_size=150, eps=1.8, expand=True, prior_power=0.0)
    assert torch.equal(off(img, true, prior)[0], paper)
    with pytest.raises(ValueError, match="prior_power"):
        ExpansiveExplorationInferer(net, prior_power=-1.0)


def test_prior_selects_the_blob_without_biasing_its_position():
    """With ``component``, the prior only chooses the blob; weighting the map by a prior whose centre is off by
    8 px pulls the point towards it (measured 0.70-0.83 px), choosing by it does not (measured <= 0.14 px)."""
    img = coordinate_image(400, 420)
    true = TRUE[:3]
    net = TwoPeakNet(true, true + torch.tensor([[0.0, 40.0], [40.0, 0.0], [-30.0, -30.0]]), 1.0, image_h=420)
    centre = true + torch.tensor([8.0, 0.0])

    def prior(coords, landmarks):
        return torch.exp(-((coords - centre[landmarks][:, None]) ** 2).sum(-1) / (2 * 15.0**2))

    errors = {}
    for component in (False, True):
        inferer = ExpansiveExplorationInferer(net, region_size=150, expand=True, prior_power=1.0, component=component)
        errors[component] = (inferer(img, true, prior)[0] - true).norm(dim=1)
    assert torch.all(errors[False] > 0.5) and torch.all(errors[True] < 0.2), errors


def test_sample_prior_maps_local_coordinates_onto_the_global_grid():
    from custom_monai.inferers import sample_prior

    i = torch.arange(10, dtype=torch.float32).view(10, 1)
    j = torch.arange(12, dtype=torch.float32).view(1, 12)
    probs = torch.stack([n + 0.1 * i + 0.01 * j for n in (1.0, 2.0)])  # (2, 10, 12), linear: bilinear is exact
    prior = sample_prior(probs, torch.tensor([0.5, 0.25]), torch.tensor([1.0, 2.0]))
    coords = torch.tensor([[[4.0, 8.0], [5.0, 9.0]], [[4.0, 8.0], [100.0, 0.0]]])
    out = prior(coords, torch.tensor([1, 0]))
    # (4, 8) -> (3, 4); (5, 9) -> (3.5, 4.25); (100, 0) is outside the global grid -> 0
    assert torch.allclose(out, torch.tensor([[2.34, 2.3925], [1.34, 0.0]]), atol=1e-5)


def test_predictor_prior_follows_the_image_affines():
    """AttentionGuidedPredictor maps the local grid onto the global grid through both images' affines."""
    from monai.data import MetaTensor

    from custom_monai.inferers import AttentionGuidedPredictor

    orig = torch.tensor([[200.0, 180.0], [120.0, 260.0]])  # original-frame points (400 x 400 image)
    local_true, decoys = orig / 2, orig / 2 + torch.tensor([[0.0, 20.0], [20.0, 0.0]])
    local = MetaTensor(coordinate_image(200, 200), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
    local.meta["landmark_affine"] = torch.eye(4)
    glob = MetaTensor(torch.zeros(1, 1, 100, 100), affine=torch.diag(torch.tensor([4.0, 4.0, 1.0, 1.0])))
    glob.meta["landmark_affine"] = torch.eye(4)

    def global_net(x):  # Gaussians (sigma 2 global px) at the true points, background elsewhere
        xs, ys = torch.arange(100.0).view(100, 1), torch.arange(100.0).view(1, 100)
        g = torch.stack([torch.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / 8.0) for p in orig / 4])
        return torch.log(torch.cat([g, (1 - g.sum(0, keepdim=True)).clamp_min(1e-6)])[None].clamp_min(1e-12))

    local_net = TwoPeakNet(local_true, decoys, 1.0, image_h=200)
    kwargs = dict(n_landmarks=2, region_size=60, eps=1.8, expand=True, global_key="image", local_key="image_local")
    batch = {"image": glob, "image_local": local}
    paper = AttentionGuidedPredictor(global_net, local_net, **kwargs).predict_grid(batch, torch.device("cpu"))[0]
    assert torch.all((paper[0] - local_true).norm(dim=1) > 5.0)
    guided = AttentionGuidedPredictor(global_net, local_net, prior_power=1.0, **kwargs)
    pts, _, key = guided.predict_grid(batch, torch.device("cpu"))
    assert key == "image_local" and torch.all((pts[0] - local_true).norm(dim=1) < 1.0)
