"""Tests for dmrilib.groundtruth: settings, U-Net, training, segmentation, registration, cohort."""
import csv
import dataclasses
import os
import tempfile

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from dmrilib.config import config_hash
from dmrilib.groundtruth import (GroundTruthInput, RegConfig, SegConfig, SegUNet, TABLE_COLUMNS, foreground_mask,
                                 inputs_from_simulation, load_segmentation, network_input, register_structural_to_dwi,
                                 registration_error_mm, run_groundtruth_cohort, seg_loss, segment,
                                 train_segmentation, training_plan, training_seeds, voxel_centres_mm, warp_to_dwi)
from dmrilib.metrics import dice
from dmrilib.train import CheckpointMismatchError

# Fast registration settings for 32^3 test volumes (the defaults are sized for 45x45x27 brains).
FAST_REG = dict(linear_iterations=(100, 50), linear_shrink_factors=(2, 1), linear_smoothing_sigmas=(1, 0),
                syn_iterations=(30, 15))


# ----------------------------------------------------------------------------- synthetic data


def _ellipsoid(shape, centre, radii):
    idx = np.indices(shape, dtype=float)
    return sum(((idx[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


def _head(n=32, seed=0):
    """A textured 'brain': smooth random intensities inside an ellipsoid, dark outside."""
    rng = np.random.default_rng(seed)
    brain = _ellipsoid((n, n, n), (n / 2 - 0.5, n / 2 - 1, n / 2), (0.38 * n, 0.33 * n, 0.42 * n))
    texture = ndimage.gaussian_filter(rng.random((n, n, n)), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    return ((0.4 + texture) * brain).astype(np.float32), brain


def _subject(rng, shape=(24, 24, 24), lesion=True):
    """T1w, FLAIR and lesion of a tiny synthetic subject (lesion: bright FLAIR, dark T1w)."""
    brain = _ellipsoid(shape, [s / 2 - 0.5 for s in shape], [0.4 * s for s in shape])
    truth = np.zeros(shape, bool)
    if lesion:
        centre = [s / 2 + rng.uniform(-3, 3) for s in shape]
        truth = _ellipsoid(shape, centre, rng.uniform(2.5, 4.5, 3)) & brain
    t1 = brain * (900.0 - 400 * truth) + rng.normal(0, 30, shape)
    flair = brain * (600.0 + 700 * truth) + rng.normal(0, 30, shape)
    return np.abs(t1).astype(np.float32), np.abs(flair).astype(np.float32), truth


def _training_data(n=6, seed=0, shape=(24, 24, 24)):
    rng = np.random.default_rng(seed)
    subjects = [_subject(rng, shape, lesion=i < n - 1) for i in range(n)]
    images = np.stack([network_input(t1, fl, foreground_mask(t1)) for t1, fl, _ in subjects])
    return subjects, images, np.stack([s[2] for s in subjects])


def _seg_config(**kw):
    base = dict(widths=(4, 8), epochs=2, batch_size=2, lr=1e-2, crop=None, device="cpu", num_threads=1, seed=5,
                n_train_patients=3, n_train_healthy=1)
    base.update(kw)
    return SegConfig(**base)


# ----------------------------------------------------------------------------- settings


def test_configs_build_from_plain_literals_and_normalise_lists():
    seg = SegConfig(**{"widths": [8, 16, 32], "crop": [48, 48, 32], "epochs": 3, "precision": "bf16"})
    assert seg.widths == (8, 16, 32) and seg.crop == (48, 48, 32) and seg.depth == 2 and seg.divisor == 4
    reg = RegConfig(**{"syn_iterations": [10, 5], "restrict_deformation": [0, 1, 0], "linear": "affine"})
    assert reg.syn_iterations == (10, 5) and reg.restrict_deformation == (0.0, 1.0, 0.0)
    assert config_hash(seg) == config_hash(SegConfig(**dataclasses.asdict(seg)))
    # inference and runtime settings do not change the trained network's identity
    assert seg.training_settings() == dataclasses.replace(seg, threshold=0.3, device="cpu").training_settings()


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=[8]), "two levels"),
    (dict(crop=[48, 47, 32]), "multiples of stride"),
    (dict(crop=[48, 48]), "crop"),
    (dict(precision="fp16"), "precision"),
    (dict(device="tpu"), "device"),
    (dict(threshold=1.0), "threshold"),
    (dict(n_train_patients=0), "n_train_patients"),
    (dict(epochs=0), "epochs"),
    (dict(dice_weight=0, bce_weight=0), "both 0"),
])
def test_seg_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(linear="syn"), "linear"),
    (dict(linear_iterations=[10, 5], linear_shrink_factors=[2, 1, 1]), "one entry per level"),
    (dict(restrict_deformation=[0, 0, 0]), "restrict_deformation"),
    (dict(restrict_deformation=[0, 1]), "restrict_deformation"),
    (dict(sampling_rate=0), "sampling_rate"),
    (dict(interpolation="cubic"), "interpolation"),
    (dict(threads=0), "threads"),
    (dict(grad_step=0), "grad_step"),
])
def test_reg_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegConfig(**kwargs)


# ----------------------------------------------------------------------------- U-Net


def test_segunet_maps_three_channels_to_one_logit_map_and_checks_shapes():
    net = SegUNet(3, (4, 8, 16))
    assert net(torch.zeros(2, 3, 8, 12, 16)).shape == (2, 1, 8, 12, 16)
    with pytest.raises(ValueError, match="3 input channels"):
        net(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 3, 8, 10, 8))
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        net(torch.zeros(3, 8, 8, 8))
    with pytest.raises(ValueError, match="widths"):
        SegUNet(3, (4, 0))
    with pytest.raises(ValueError, match="two levels"):
        SegUNet(3, (4,))
    with pytest.raises(ValueError, match="in_channels"):
        SegUNet(0)
    with pytest.raises(ValueError, match="norm"):
        SegUNet(3, (4, 8), norm="group")


def test_segunet_is_the_shared_unet_body_with_stable_state_dict_keys():
    from dmrilib.models.blocks import UNet3d

    net = SegUNet(3, (4, 8), norm="none")
    assert isinstance(net, UNet3d) and net.skip_connections and net.out_channels == 1
    # segmentation checkpoints of earlier runs load only if the parameter names stay put
    assert {k.split(".")[0] for k in net.state_dict()} == {"down", "up", "up_conv", "head"}
    assert "down.0.0.weight" in net.state_dict()


@pytest.mark.parametrize("norm", ["none", "batch", "instance"])
def test_segunet_with_stride_predicts_on_the_input_grid(norm):
    net = SegUNet(3, (4, 8), norm=norm, stride=2)
    assert net.divisor == 4
    assert net(torch.zeros(1, 3, 8, 12, 16)).shape == (1, 1, 8, 12, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 3, 8, 10, 8))
    with pytest.raises(ValueError, match="stride"):
        SegUNet(3, (4, 8), stride=0)


def test_seg_loss_rewards_the_right_mask():
    target = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    target[0, 2:6, 2:6, 2:6] = True
    right = (target.float() * 20 - 10)[:, None]
    assert seg_loss(right, target) < 0.01 < 1.0 < seg_loss(-right, target)
    with pytest.raises(ValueError, match="does not match"):
        seg_loss(right, target[:, :4])


# ----------------------------------------------------------------------------- segmentation


def test_foreground_mask_fills_holes_and_drops_background_noise():
    rng = np.random.default_rng(1)
    shape = (32, 32, 32)
    brain = _ellipsoid(shape, (16, 16, 16), (12, 10, 11))
    ventricle = _ellipsoid(shape, (16, 16, 16), (3, 3, 3))
    t1 = np.abs(900.0 * (brain & ~ventricle) + 100 * ventricle + rng.normal(0, 30, shape)).astype(np.float32)
    fg = foreground_mask(t1)
    assert fg[ventricle].all()
    assert dice(fg, brain) > 0.97
    assert not foreground_mask(np.zeros(shape, np.float32)).any()


def test_network_input_scales_by_the_foreground_median_and_validates():
    rng = np.random.default_rng(2)
    t1, flair, _ = _subject(rng)
    fg = foreground_mask(t1)
    x = network_input(3.0 * t1, flair, fg)
    assert x.shape == (3,) + t1.shape and x.dtype == np.float32
    assert np.median(x[0][fg]) == pytest.approx(1.0) and np.median(x[1][fg]) == pytest.approx(1.0)
    assert set(np.unique(x[2])) == {0.0, 1.0}
    with pytest.raises(ValueError, match="same structural grid"):
        network_input(t1, flair[:-1], fg)
    bad = t1.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        network_input(bad, flair, fg)
    with pytest.raises(ValueError, match="empty"):
        network_input(t1, flair, np.zeros_like(fg))


def test_unet_overfits_a_tiny_synthetic_lesion_set(tmp_path):
    subjects, images, targets = _training_data(n=6, shape=(24, 24, 24))
    cfg = _seg_config(epochs=25, widths=(8, 16), lr=1e-2)
    record = train_segmentation(images, targets, config=cfg, out_dir=tmp_path / "run", progress=False)
    net, meta = load_segmentation(tmp_path / "run")
    assert meta["config_hash"] == record["config_hash"] and meta["epoch"] == 24
    scores = [dice(segment(net, t1, fl).mask, truth) for t1, fl, truth in subjects[:-1]]
    assert min(scores) > 0.8, scores
    healthy = segment(net, *subjects[-1][:2])
    assert healthy.mask.sum() < 5 and healthy.probability.dtype == np.float32


def test_segment_handles_grids_not_divisible_by_the_depth():
    rng = np.random.default_rng(3)
    t1, flair, _ = _subject(rng, shape=(21, 22, 23))
    out = segment(SegUNet(3, (2, 4, 8)), t1, flair, keep_largest=1)
    assert out.probability.shape == out.mask.shape == out.foreground.shape == (21, 22, 23)
    labels, n = ndimage.label(out.mask, structure=np.ones((3, 3, 3)))
    assert n <= 1


@pytest.mark.parametrize("norm", ["none", "batch"])  # batch: also recomputes BatchNorm statistics at the end
def test_training_is_seeded_and_resume_matches_uninterrupted_run(tmp_path, monkeypatch, norm):
    import dmrilib.groundtruth.segmentation as seg_module

    _, images, targets = _training_data(n=4, shape=(16, 16, 16))
    cfg = _seg_config(epochs=2, crop=(8, 8, 8), norm=norm)
    full = train_segmentation(images, targets, config=cfg, out_dir=tmp_path / "full", progress=False)
    again = train_segmentation(images, targets, config=cfg, out_dir=tmp_path / "again", progress=False)
    # Kill a third run right after its first epoch's checkpoint (before the log is written).
    real_write = seg_module.write_csv_atomic

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(seg_module, "write_csv_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(images, targets, config=cfg, out_dir=tmp_path / "part", progress=False)
    assert torch.load(tmp_path / "part" / "checkpoint-last.pt", weights_only=True)["epoch"] == 0
    monkeypatch.setattr(seg_module, "write_csv_atomic", real_write)
    resumed = train_segmentation(images, targets, config=cfg, out_dir=tmp_path / "part", progress=False)

    states = [torch.load(tmp_path / name / "checkpoint-last.pt", weights_only=True)
              for name in ("full", "again", "part")]
    for other in states[1:]:
        assert all(torch.equal(states[0]["state_dict"][k], other["state_dict"][k]) for k in states[0]["state_dict"])
    assert full["config_hash"] == again["config_hash"] == resumed["config_hash"]
    assert states[0]["provenance"]["config_hash"] == full["config_hash"] and states[0]["seed"] == cfg.seed
    rows = list(csv.DictReader((tmp_path / "part" / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    other_seed = train_segmentation(images, targets, config=dataclasses.replace(cfg, seed=6),
                                    out_dir=tmp_path / "seed6", progress=False)
    assert other_seed["config_hash"] != full["config_hash"]


def test_training_refuses_another_configuration_or_bad_inputs(tmp_path):
    _, images, targets = _training_data(n=3, shape=(8, 8, 8))
    cfg = _seg_config(epochs=1)
    train_segmentation(images, targets, config=cfg, out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointMismatchError, match="config hash"):
        train_segmentation(images, targets, config=dataclasses.replace(cfg, lr=1e-3), out_dir=tmp_path,
                           progress=False)
    with pytest.raises(CheckpointMismatchError, match="expected"):
        load_segmentation(tmp_path / "checkpoint-last.pt", expected_hash="000000000000")
    with pytest.raises(FileNotFoundError, match="Train the network"):
        load_segmentation(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match=r"\(S, 3, X, Y, Z\)"):
        train_segmentation(images[:, :2], targets, config=cfg, out_dir=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="no target"):
        train_segmentation(images, np.zeros_like(targets), config=cfg, out_dir=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="larger than"):
        train_segmentation(images, targets, config=_seg_config(crop=(16, 8, 8)), out_dir=tmp_path / "x",
                           progress=False)


def _flip_byte_in_largest_tensor(path):
    """Flip an exponent bit of one float32 inside the checkpoint's largest stored tensor."""
    state = torch.load(path, weights_only=True)["state_dict"]
    tensor = max(state.values(), key=lambda t: t.numel())
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(tensor.numpy().tobytes())
    assert at >= 0, "tensor bytes not found in the file"
    raw[at + tensor.element_size() * (tensor.numel() // 2) + 3] ^= 0x40
    path.write_bytes(bytes(raw))


def test_resume_refuses_a_corrupted_segmentation_checkpoint(tmp_path):
    from dmrilib.integrity import IntegrityError

    _, images, targets = _training_data(n=3, shape=(8, 8, 8))
    cfg = _seg_config(epochs=1)
    train_segmentation(images, targets, config=cfg, out_dir=tmp_path, progress=False)
    _flip_byte_in_largest_tensor(tmp_path / "checkpoint-last.pt")
    with pytest.raises(IntegrityError, match=r"checkpoint-last.pt: content sha256 .* does not match"):
        train_segmentation(images, targets, config=dataclasses.replace(cfg, epochs=2), out_dir=tmp_path,
                           progress=False)
    with pytest.raises(IntegrityError, match="checkpoint-last.pt"):
        load_segmentation(tmp_path)


def test_training_subjects_come_from_their_own_seed_stream():
    from dmrilib.simulate import CohortConfig, cohort_plan

    cohort = CohortConfig(n_healthy=28, n_patients=32, seed=0)
    plan = training_plan(cohort, SegConfig(n_train_patients=12, n_train_healthy=4))
    assert len(plan) == 16 and sum(p.grade is None for p in plan) == 4
    assert {(p.grade, p.size_class) for p in plan[:9]} == {(g, s) for g in ("IV", "III", "II")
                                                           for s in ("large", "medium", "small")}
    assert not {p.seed for p in plan} & {p.seed for p in cohort_plan(cohort)}
    assert plan == training_plan(cohort, SegConfig(n_train_patients=12, n_train_healthy=4))
    seeds = training_seeds(0, 5)
    assert training_seeds(0, 5, exclude=seeds[:2])[:3] == seeds[2:] and training_seeds(1, 5) != seeds


# ----------------------------------------------------------------------------- registration


@pytest.fixture(scope="module")
def shifted_pair():
    """A head and the same head 2, 3, -1 mm away: the true map is x -> x + shift."""
    head, brain = _head()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -31.0
    shift = np.array([2.0, 3.0, -1.0])
    moving_affine = affine.copy()
    moving_affine[:3, 3] += shift
    true = (voxel_centres_mm(head.shape, affine) + shift).astype(np.float32)
    reg = register_structural_to_dwi(head, head, t1w_affine=moving_affine, dwi_affine=affine,
                                     config=RegConfig(**FAST_REG))
    return head, brain, affine, moving_affine, true, reg


def test_registration_recovers_a_known_shift(shifted_pair):
    head, brain, affine, moving_affine, true, reg = shifted_pair
    err = registration_error_mm(reg.dwi_to_structural, true, brain)
    assert err["p95"] < 0.5, err
    identity = registration_error_mm(voxel_centres_mm(head.shape, affine), true, brain)
    assert identity["mean"] == pytest.approx(np.sqrt(14.0), rel=1e-6)
    assert reg.dwi_shape == head.shape and reg.structural_shape == head.shape


def test_dense_map_agrees_with_ants_image_warping_and_point_mapping(shifted_pair):
    head, brain, affine, moving_affine, true, reg = shifted_pair
    # ANTs warped the T1w with its transforms; sampling at our map must give the same image.
    ours = warp_to_dwi(head, moving_affine, reg.dwi_to_structural, interpolation="linear")
    assert np.abs(ours - reg.t1w_in_dwi)[brain].max() < 1e-3
    centres = voxel_centres_mm(head.shape, affine)
    pts = np.array([centres[10, 12, 14], (centres[10, 12, 14] + centres[11, 12, 14]) / 2])
    mapped = reg.to_structural(pts)
    assert np.allclose(mapped[0], reg.dwi_to_structural[10, 12, 14], atol=1e-4)
    assert np.allclose(mapped[1], reg.dwi_to_structural[10:12, 12, 14].mean(axis=0), atol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        reg.to_structural(pts[:, :2])


def test_registration_is_reproducible_and_leaves_no_files(tmp_path, monkeypatch, shifted_pair):
    head, brain, affine, moving_affine, true, reg = shifted_pair
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    again = register_structural_to_dwi(head, head, t1w_affine=moving_affine, dwi_affine=affine,
                                       config=RegConfig(**FAST_REG))
    assert np.array_equal(again.dwi_to_structural, reg.dwi_to_structural)
    assert os.listdir(tmp_path) == []


def test_restricted_syn_models_a_distortion_along_y():
    head, brain = _head(seed=4)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -31.0
    # The "diffusion" image samples the head at y + d(x, y, z): a smooth EPI-like distortion along y.
    centres = voxel_centres_mm(head.shape, affine)
    d = 2.5 * np.exp(-(((centres[..., 1] - 15) / 15) ** 2 + (centres[..., 2] / 20) ** 2))
    true = centres.copy()
    true[..., 1] += d
    ijk = np.moveaxis((true - affine[:3, 3]) / 2.0, -1, 0)
    distorted = ndimage.map_coordinates(head, ijk, order=1).astype(np.float32)
    rigid = register_structural_to_dwi(head, distorted, t1w_affine=affine, dwi_affine=affine,
                                       config=RegConfig(**FAST_REG, syn=False))
    syn = register_structural_to_dwi(head, distorted, t1w_affine=affine, dwi_affine=affine,
                                     config=RegConfig(**FAST_REG, syn=True))
    err_rigid = registration_error_mm(rigid.dwi_to_structural, true, brain)
    err_syn = registration_error_mm(syn.dwi_to_structural, true, brain)
    assert err_syn["mean"] < 0.6 * err_rigid["mean"], (err_syn, err_rigid)
    # the restricted stage only moves along y: x and z match the rigid stage's map
    moved = syn.dwi_to_structural - rigid.dwi_to_structural
    assert np.abs(moved[..., 1]).max() > 1.0 and np.abs(moved[..., [0, 2]]).max() < 0.2


def test_registration_accepts_nibabel_images_and_rejects_bad_inputs(shifted_pair):
    head, brain, affine, moving_affine, true, reg = shifted_pair
    fast = RegConfig(**{**FAST_REG, "syn": False})
    via_nib = register_structural_to_dwi(nib.Nifti1Image(head, moving_affine), nib.Nifti1Image(head, affine),
                                         config=fast)
    assert registration_error_mm(via_nib.dwi_to_structural, true, brain)["p95"] < 0.5
    nan = head.copy()
    nan[3, 3, 3] = np.nan
    sheared = affine.copy()
    sheared[0, 1] = 0.5
    cases = [
        (dict(t1w=nan, dwi_reference=head, t1w_affine=affine, dwi_affine=affine), "t1w contains NaN"),
        (dict(t1w=head, dwi_reference=head[..., None].repeat(3, 3), t1w_affine=affine, dwi_affine=affine),
         "dwi_reference must be a 3D volume.*mean b0"),
        (dict(t1w=head, dwi_reference=head, dwi_affine=affine), "t1w: an array needs its 4x4"),
        (dict(t1w=head, dwi_reference=head, t1w_affine=affine, dwi_affine=affine[:3]), "dwi_reference: the affine"),
        (dict(t1w=head, dwi_reference=head, t1w_affine=sheared, dwi_affine=affine), "t1w: the affine has shear"),
        (dict(t1w=np.zeros_like(head), dwi_reference=head, t1w_affine=affine, dwi_affine=affine), "constant"),
        (dict(t1w=nib.Nifti1Image(head, affine), dwi_reference=head, t1w_affine=affine, dwi_affine=affine),
         "not both"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            register_structural_to_dwi(**kwargs, config=fast)


def test_warp_to_dwi_nearest_label_and_outside():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5], labels[5:8, 2:5, 2:5] = 1, 2
    # diffusion grid: 2 mm voxels over the same field of view, shifted by half a structural voxel
    dwi_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    dwi_affine[:3, 3] = 0.5
    coords = voxel_centres_mm((5, 5, 5), dwi_affine)
    near = warp_to_dwi(labels, affine, coords, interpolation="nearest")
    assert near.dtype == np.uint8 and near.shape == (5, 5, 5)
    assert near[1, 1, 1] == 1 and near[3, 1, 1] == 2 and near[0, 0, 0] == 0
    lab = warp_to_dwi(labels, affine, coords, interpolation="label")
    assert set(np.unique(lab)) <= {0, 1, 2} and lab[1, 1, 1] == 1 and lab[3, 1, 1] == 2
    mask = warp_to_dwi(labels > 0, affine, coords, interpolation="label")
    assert mask.dtype == bool and mask[1, 1, 1] and not mask[4, 4, 4]
    outside = warp_to_dwi(labels + 1, affine, coords + 100.0, interpolation="nearest")
    assert not outside.any()
    with pytest.raises(ValueError, match="interpolation"):
        warp_to_dwi(labels, affine, coords, interpolation="cubic")
    with pytest.raises(ValueError, match=r"\(X, Y, Z, 3\)"):
        warp_to_dwi(labels, affine, coords[..., :2])


def test_registration_error_mm_summarises_distances():
    true = np.zeros((4, 1, 1, 3))
    est = true.copy()
    est[:, 0, 0, 0] = [0.0, 1.0, 2.0, 10.0]
    mask = np.ones((4, 1, 1), bool)
    err = registration_error_mm(est, true, mask)
    assert err["mean"] == pytest.approx(3.25) and err["median"] == pytest.approx(1.5) and err["max"] == 10.0
    assert err["n"] == 4 and 2.0 < err["p95"] < 10.0
    with pytest.raises(ValueError, match="empty"):
        registration_error_mm(est, true, ~mask)


# ----------------------------------------------------------------------------- cohort


@pytest.fixture(scope="module")
def smoke_patient():
    from dmrilib.config import load_profile
    from dmrilib.simulate import simulate_subject

    cohort = dataclasses.replace(load_profile("smoke").cohort, structural_voxel_size=3.6)
    return inputs_from_simulation(simulate_subject(cohort, 11, grade="IV", size_class="large"), "sub-P01")


def test_groundtruth_cohort_table_separates_the_error_sources(smoke_patient):
    truth_net = _OracleNet(smoke_patient)
    healthy_like = dataclasses.replace(smoke_patient, subject="sub-X", structural_lesion=None, lesion=None,
                                       dwi_to_structural=None)
    out = run_groundtruth_cohort([smoke_patient, healthy_like], truth_net, progress=False, keep_registrations=True)
    assert list(out.table.columns) == list(TABLE_COLUMNS)
    row = out.table.iloc[0]
    # a perfect segmenter: the pipeline's error is registration + resampling only
    assert row["dice_segmentation"] == 1.0
    assert row["dice_true_transform"] == pytest.approx(row["dice_resampling"])
    assert row["dice_pipeline"] == pytest.approx(row["dice_true_mask"])
    assert row["dice_resampling"] > 0.8 and row["dice_pipeline"] > 0.6
    assert row["reg_error_p95_mm"] < 7.2  # below one diffusion voxel at 7.2 mm
    assert out.masks["sub-P01"].shape == smoke_patient.b0.shape and out.masks["sub-P01"].dtype == bool
    assert out.table.iloc[1][["dice_segmentation", "dice_pipeline", "reg_error_mean_mm"]].isna().all()
    assert set(out.registrations) == {"sub-P01", "sub-X"}
    with pytest.raises(ValueError, match="appears twice"):
        run_groundtruth_cohort([smoke_patient, smoke_patient], truth_net, progress=False)


def test_groundtruth_cohort_does_not_depend_on_n_jobs(smoke_patient):
    net = _OracleNet(smoke_patient)
    second = dataclasses.replace(smoke_patient, subject="sub-P02")
    one = run_groundtruth_cohort([smoke_patient, second], net, progress=False)
    two = run_groundtruth_cohort([smoke_patient, second], net, n_jobs=2, progress=False)
    cols = [c for c in TABLE_COLUMNS if not c.startswith("seconds")]
    assert one.table[cols].equals(two.table[cols])
    assert all(np.array_equal(one.masks[s], two.masks[s]) for s in one.masks)
    with pytest.raises(ValueError, match="n_jobs"):
        run_groundtruth_cohort([smoke_patient], net, n_jobs=0, progress=False)


class _OracleNet(SegUNet):
    """A 'network' whose logits are the true structural lesion of one subject (tests only)."""

    def __init__(self, item: GroundTruthInput):
        from dmrilib.groundtruth.segmentation import _foreground_box

        super().__init__(3, (2, 4))
        # segment() shows the network the foreground's bounding box only
        self.truth = torch.from_numpy(item.structural_lesion[_foreground_box(foreground_mask(item.t1w))])

    def forward(self, x):
        logits = torch.full(x.shape[:1] + (1,) + x.shape[2:], -10.0)
        sx, sy, sz = self.truth.shape
        logits[:, 0, :sx, :sy, :sz] = self.truth.float() * 20 - 10
        return logits
