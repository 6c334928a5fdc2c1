"""The dense star-convex detector (models/star.py): its training targets, its decoding, and the round trip
between them, on shapes whose answers are known."""

import math

import numpy as np
import pytest
import torch
from skimage.draw import ellipse, polygon

from wsinuclei.models import build_detector, load_preset
from wsinuclei.models.star import StarNet, instance_label_image, star_targets

RAYS = 32


def ray_dirs(n=RAYS):
    a = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([torch.cos(a), torch.sin(a)], 1).float()


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


def test_rays_from_a_disk_centre_end_half_a_pixel_past_its_last_pixel():
    lab = torch.from_numpy(disk((64, 64), 30, 30, 10).astype(np.int64))
    prob, dist = star_targets(lab, 4, ray_dirs(), 64)
    assert prob.shape == (16, 16) and dist.shape == (RAYS, 16, 16)
    # grid cell (7, 7) samples pixel (30, 30): along the axes the disk's last pixel is 10 away
    for k in (0, 8, 16, 24):  # 0°, 90°, 180°, 270°
        assert dist[k, 7, 7] == pytest.approx(10.5)
    assert prob[7, 7] == 1.0  # the most central cell of its nucleus
    assert 0 < prob[7, 8] < 1  # off-centre: less central
    assert prob[0, 0] == 0 and dist[:, 0, 0].abs().sum() == 0  # background


def test_a_ray_stops_at_a_touching_neighbour_and_at_the_image_edge():
    lab = np.zeros((40, 40), np.int64)
    lab[10:30, 2:18] = 1
    lab[10:30, 18:38] = 2  # touches nucleus 1 along column 18
    _, dist = star_targets(torch.from_numpy(lab), 4, ray_dirs(), 64)
    # cell (4, 3) samples pixel (18, 14) in nucleus 1: 3 pixels (15, 16, 17) to its right, then nucleus 2
    assert dist[0, 4, 3] == pytest.approx(3.5)
    assert dist[16, 4, 3] == pytest.approx(12.5)  # leftwards to column 2, its last pixel
    lab2 = np.zeros((20, 20), np.int64)
    lab2[:, :] = 1  # fills the crop: every ray leaves the image
    _, d2 = star_targets(torch.from_numpy(lab2), 4, ray_dirs(), 64)
    assert d2[0, 0, 0] == pytest.approx(20 - 2 - 0.5)  # from column 2 to the edge after column 19
    assert d2[16, 0, 0] == pytest.approx(2.5)


def test_rays_longer_than_the_limit_stop_at_it():
    lab = torch.from_numpy(disk((200, 200), 100, 100, 80).astype(np.int64))
    _, dist = star_targets(lab, 4, ray_dirs(), 30)
    assert float(dist[:, 25, 25].max()) == 30.0


def test_label_image_from_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, :4] = 1
    masks[1, 2:] = 1
    lab = instance_label_image(masks, (8, 8))
    assert lab[0, 0] == 1 and lab[3, 0] == 2 and lab[7, 7] == 2  # overlap: the higher id
    assert instance_label_image(torch.zeros(0, 8, 8, dtype=torch.uint8), (8, 8)).sum() == 0


def small_star_net(**head):
    cfg = load_preset("star")
    cfg.star_head.update(head)
    return build_detector(cfg).eval()


def decode_targets(model, lab):
    """What the model would output if its head predicted the targets exactly."""
    prob, dist = star_targets(torch.from_numpy(lab), model.stride, model.ray_dirs, model.max_dist)
    logits = torch.logit(prob.clamp(1e-4, 1 - 1e-4))[None, None]
    return model.decode({"prob": logits, "dist": dist[None] / model.dist_scale}, [lab.shape])[0]


def test_decoding_perfect_targets_redraws_every_nucleus():
    rng = np.random.default_rng(3)
    lab = np.zeros((256, 256), np.int64)
    n = 0
    for cy in range(24, 240, 48):
        for cx in range(24, 240, 48):
            rr, cc = ellipse(cy + rng.uniform(-4, 4), cx + rng.uniform(-4, 4), rng.uniform(6, 18),
                             rng.uniform(6, 18), shape=lab.shape, rotation=rng.uniform(0, np.pi))
            n += 1
            lab[rr, cc] = n
    model = small_star_net()
    res = decode_targets(model, lab)
    assert len(res["boxes"]) == n
    outlines = res["outlines"].numpy()
    assert outlines.shape == (n, RAYS, 2)
    ious = []
    for poly in outlines:  # each outline rasterised (pixel centres at index + 0.5) against its nucleus
        rr, cc = polygon(poly[:, 1] - 0.5, poly[:, 0] - 0.5, lab.shape)
        drawn = np.zeros(lab.shape, bool)
        drawn[rr, cc] = True
        ids, counts = np.unique(lab[drawn], return_counts=True)
        k = ids[np.argmax(counts)]
        truth = lab == k
        ious.append((drawn & truth).sum() / (drawn | truth).sum())
    # measured 0.950 / 0.967; the sample point one pixel off gives 0.83 / 0.90, rays half a pixel long 0.89 / 0.94
    assert min(ious) > 0.93 and np.mean(ious) > 0.955
    box = res["boxes"].numpy()
    assert np.all(box[:, 2] > box[:, 0]) and np.all(box[:, 3] > box[:, 1])


def test_decoding_keeps_peaks_above_the_floor_and_drops_overlapping_weaker_ones():
    model = small_star_net(score_thresh=0.3, nms_thresh=0.4)
    logits = torch.full((1, 1, 32, 32), -10.0)
    logits[0, 0, 10, 10] = 3.0  # a strong nucleus
    logits[0, 0, 10, 12] = 1.0  # a weaker peak 8 px away, same size: mostly the same box
    logits[0, 0, 25, 25] = -2.0  # below the floor (p = 0.12)
    dist = torch.full((1, RAYS, 32, 32), 10.0 / model.dist_scale)
    res = model.decode({"prob": logits, "dist": dist}, [(128, 128)])[0]
    assert len(res["scores"]) == 1
    assert float(res["scores"][0]) == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    cx, cy = res["outlines"][0].mean(0).tolist()
    assert (cx, cy) == pytest.approx((10 * 4 + 2.5, 10 * 4 + 2.5), abs=1e-4)
    np.testing.assert_allclose(res["boxes"][0].numpy(), [32.5, 32.5, 52.5, 52.5], atol=1e-4)


def test_training_step_gives_finite_losses_that_reach_every_part():
    torch.manual_seed(0)
    model = small_star_net().train()
    masks = torch.zeros(3, 96, 96, dtype=torch.uint8)
    masks[0, 10:30, 10:30] = 1
    masks[1, 40:60, 50:80] = 1
    masks[2, 70:90, 5:25] = 1
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    losses = model(images, [{"masks": masks}, {"masks": masks[:0]}])
    assert set(losses) == {"loss_prob", "loss_dist"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for name in ("backbone.prob.weight", "backbone.dist.weight", "backbone.head.0.weight", "backbone.body.stem.0.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_star_preset_round_trips_and_takes_a_contour_models_trunk(tmp_path):
    from wsinuclei.checkpoint import load_model, save_model
    from wsinuclei.models import DetectorConfig
    from wsinuclei.train import load_init

    cfg = load_preset("star")
    assert cfg.is_star and cfg.has_masks and not cfg.anchors
    again = DetectorConfig.from_dict(cfg.to_dict())
    assert again.star_head == cfg.star_head and "rpn" not in again.to_dict()
    model = build_detector(cfg)
    assert isinstance(model, StarNet)
    info = load_init(model, "src/wsinuclei/weights/contours_default.safetensors")
    assert all(k.startswith(("backbone.head", "backbone.prob", "backbone.dist")) for k in info["left"])
    path = save_model(model, cfg, tmp_path / "star.safetensors", target_mu=[8.6, 0.0, 0.0], target_sigma=[0.6, 0.1, 0.01])
    loaded = load_model(path)
    assert loaded.config.is_star
    a = dict(model.state_dict())
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, a[k].to(v.dtype), rtol=0, atol=1e-3)


@pytest.fixture
def random_star_model(tmp_path):
    """A star model with seeded random weights and no score floor: its nuclei are meaningless but many."""
    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model

    torch.manual_seed(0)
    cfg = load_preset("star")
    cfg.star_head["score_thresh"] = 0.0
    model = build_detector(cfg)
    return save_model(model, cfg, tmp_path / "star.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA)


def test_a_checked_openvino_conversion_runs_without_torch_and_finds_the_same_nuclei(random_star_model, tmp_path,
                                                                                   monkeypatch):
    pytest.importorskip("openvino", reason="OpenVINO is a wsinuclei dependency; not installed here (pip install openvino)")
    from conftest import detect_in_fresh_process, synthetic_he

    from wsinuclei.inference import NucleusDetector, OpenVinoStarDetector, load_detector

    monkeypatch.setenv("WSINUCLEI_CACHE", str(tmp_path / "cache"))
    tile = synthetic_he(300, 420, seed=2)[0]
    first = load_detector(random_star_model)  # no checked conversion yet: torch converts and checks it
    assert isinstance(first, NucleusDetector) and first.backend == "openvino"
    second = load_detector(random_star_model)
    assert isinstance(second, OpenVinoStarDetector)
    assert isinstance(load_detector(random_star_model, backend="torch"), NucleusDetector)
    (b1, s1, o1), = first.predict_instances([tile])
    (b2, s2, o2), = second.predict_instances([tile])
    assert len(b1) > 20 and o1.shape == (len(b1), RAYS, 2)
    # the same nuclei; random weights give many near-equal scores, so their order may differ
    assert len(b2) == len(b1)
    near = np.abs(b2[:, None, :] - b1[None, :, :]).max(axis=2).argmin(axis=1)
    np.testing.assert_allclose(b2, b1[near], atol=1e-3)
    np.testing.assert_allclose(s2, s1[near], atol=1e-5)
    np.testing.assert_allclose(o2, o1[near], atol=1e-3)
    # and in a fresh process, torch is never imported
    got = detect_in_fresh_process(random_star_model, tile, tmp_path)
    assert (got["kind"], got["nuclei"], got["torch"]) == ("OpenVinoStarDetector", len(b1), False)


def test_a_stride_2_head_decodes_its_own_targets_as_well():
    model = small_star_net(upsample_channels=16)
    assert model.stride == 2
    out = model.backbone(torch.zeros(1, 3, 64, 96))
    assert out["prob"].shape[-2:] == (32, 48) and out["dist"].shape[1:] == (RAYS, 32, 48)
    lab = np.zeros((128, 128), np.int64)
    for k, (cy, cx, r) in enumerate([(30, 30, 6), (30, 44, 7), (90, 80, 15)]):
        lab[disk(lab.shape, cy, cx, r)] = k + 1
    res = decode_targets(model, lab)
    assert len(res["boxes"]) == 3
    for poly in res["outlines"].numpy():
        rr, cc = polygon(poly[:, 1] - 0.5, poly[:, 0] - 0.5, lab.shape)
        drawn = np.zeros(lab.shape, bool)
        drawn[rr, cc] = True
        ids, counts = np.unique(lab[drawn], return_counts=True)
        truth = lab == ids[np.argmax(counts)]
        assert (drawn & truth).sum() / (drawn | truth).sum() > 0.9


def test_a_centre_only_crop_trains_the_centre_probability_inside_its_discs_only():
    """Masks that are only discs at annotated centres (``centre_only``): what the network says outside the discs
    changes no loss, the distances of that crop are not trained, and a batch without such crops has the plain
    mean loss."""
    torch.manual_seed(0)
    model = small_star_net().train()
    discs = torch.zeros(2, 96, 96, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    discs[0] = ((xx - 30) ** 2 + (yy - 30) ** 2 <= 100).to(torch.uint8)
    discs[1] = ((xx - 70) ** 2 + (yy - 60) ** 2 <= 100).to(torch.uint8)
    outlined = torch.zeros(1, 96, 96, dtype=torch.uint8)
    outlined[0, 10:40, 50:80] = 1
    x = model.batch([torch.rand(3, 96, 96), torch.rand(3, 96, 96)])
    out = model.backbone(x)
    images = [torch.zeros(3, 96, 96)] * 2
    targets = [{"masks": outlined}, {"masks": discs, "centre_only": True}]
    base = model.losses(out, images, targets)
    prob_t, _ = star_targets(instance_label_image(discs, (96, 96)), model.stride, model.ray_dirs, model.max_dist)
    inside = prob_t > 0
    assert 0 < inside.sum() < inside.numel() // 4
    moved = {k: v.clone() for k, v in out.items()}
    moved["prob"][1, 0][~inside] += 5.0  # outside the discs of the centre-only crop
    moved["dist"][1] += 3.0  # its distances
    after = model.losses(moved, images, targets)
    assert torch.allclose(after["loss_prob"], base["loss_prob"]) and torch.allclose(after["loss_dist"], base["loss_dist"])
    moved["prob"][1, 0][inside] -= 5.0  # inside the discs: trained
    assert model.losses(moved, images, targets)["loss_prob"] > base["loss_prob"] + 0.01
    moved = {k: v.clone() for k, v in out.items()}
    moved["prob"][0, 0] += 5.0  # the outlined crop is trained everywhere
    assert model.losses(moved, images, targets)["loss_prob"] > base["loss_prob"] + 0.1
    # without centre-only crops: the mean over every cell, as before
    plain = model.losses(out, images, [{"masks": outlined}, {"masks": outlined[:0]}])
    p0, _ = star_targets(instance_label_image(outlined, (96, 96)), model.stride, model.ray_dirs, model.max_dist)
    want = torch.nn.functional.binary_cross_entropy_with_logits(out["prob"][:, 0], torch.stack([p0, torch.zeros_like(p0)]))
    assert torch.allclose(plain["loss_prob"], want)


def test_the_deeper_star_recipe_starts_as_the_model_it_is_warm_started_from():
    """experiments/recipes/star_deeper.toml's added stride-16 blocks start as the identity: loaded from the shipped file, it
    outputs exactly what the shipped network does; without zero_init_residual it would not."""
    from wsinuclei.train import load_init

    shipped = "src/wsinuclei/weights/star_default.safetensors"
    cfg = load_preset("experiments/recipes/star_deeper.toml")
    assert cfg.backbone["blocks"] == [1, 2, 4]
    deeper, base = build_detector(cfg).eval(), build_detector("star").eval()
    load_init(deeper, shipped)
    load_init(base, shipped)
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = deeper.backbone(x), base.backbone(x)
    for k in ("prob", "dist"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    cfg.backbone["zero_init_residual"] = False
    plain = build_detector(cfg).eval()
    load_init(plain, shipped)
    with torch.no_grad():
        assert not torch.equal(plain.backbone(x)["prob"], b["prob"])


def test_small_nuclei_weigh_more_in_the_centre_loss_when_the_preset_asks():
    """``small_area_px``: a cell of a nucleus of A < small_area_px pixels weighs small_area_px / A (at most
    ``small_weight_max``) in the centre-probability loss; larger nuclei and background weigh 1."""
    from wsinuclei.models.star import small_nucleus_weight

    lab = torch.zeros(64, 64, dtype=torch.int64)
    lab[0:8, 0:8] = 1  # 64 px
    lab[20:40, 20:40] = 2  # 400 px
    lab[50:52, 50:52] = 3  # 4 px
    w = small_nucleus_weight(lab, 4, 320.0, 3.0)
    assert w.shape == (16, 16)
    assert w[0, 0] == 3.0 and w[1, 1] == 3.0  # 320 / 64 = 5, capped at 3
    assert w[6, 6] == 1.0 and w[15, 15] == 1.0  # the 400-px nucleus; background
    assert small_nucleus_weight(lab, 4, 128.0, 3.0)[0, 0] == 2.0
    torch.manual_seed(0)
    model = small_star_net(small_area_px=320.0, small_weight_max=3.0).train()
    plain = small_star_net().train()
    plain.load_state_dict(model.state_dict())
    masks = torch.stack([lab == 1, lab == 2]).to(torch.uint8)
    out = model.backbone(model.batch([torch.rand(3, 64, 64)]))
    weighted = model.losses(out, [torch.zeros(3, 64, 64)], [{"masks": masks}])
    unweighted = plain.losses(out, [torch.zeros(3, 64, 64)], [{"masks": masks}])
    prob_t, _ = star_targets(lab * (lab < 3), 4, model.ray_dirs, model.max_dist)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["prob"][0, 0], prob_t, reduction="none")
    small = small_nucleus_weight(lab * (lab < 3), 4, 320.0, 3.0)
    torch.testing.assert_close(weighted["loss_prob"], (bce * small).mean())
    torch.testing.assert_close(unweighted["loss_prob"], bce.mean())
    torch.testing.assert_close(weighted["loss_dist"], unweighted["loss_dist"])
