"""Tests for dmrilib.scoring: anomaly maps and prediction on new DWI files."""
import nibabel as nib
import numpy as np
import pytest
import torch

from dmrilib.models import DAE, ModelConfig, RecDiscNet
from dmrilib.scoring import anomaly_map, latent_generator, predict_dwi, predict_maps
from dmrilib.train import TrainConfig, load_checkpoint, train_run

GRID = (16, 16, 16)
C = 4
MODEL = ModelConfig(dae_widths=(4, 8), recon_base=4, recon_depth=2, disc_base=4, disc_depth=2)
VOXEL = 2.4
#: The training gradient directions (channel order) of the test checkpoint.
BVECS = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]])


def _acquisition(bvecs=BVECS, voxel=VOXEL, orientation="RAS"):
    return {"voxel_size_min": [voxel] * 3, "voxel_size_max": [voxel] * 3, "orientations": [orientation],
            "input_shapes": [[20, 18, 22]], "grid": list(GRID), "bvalue": 1000.0, "bvalue_range": [1000.0, 1000.0],
            "gradient_schemes": [np.asarray(bvecs).tolist()], "brain_fraction_min": 1.0, "n_subjects": 4}


def _train(out, channels=C, acquisition=None):
    rng = np.random.default_rng(0)
    brain = np.zeros((4, *GRID), bool)
    brain[:, 3:13, 3:13, 3:13] = True
    vols = (rng.random((4, channels, *GRID), dtype=np.float32) * 0.5 + 0.25) * brain[:, None]
    ids = ["a", "b", "c", "d"]
    train_run(vols, brain, ids, train_ids=ids[:3], val_ids=ids[3:], model="dae", variant="lsd16-sigmoid",
              model_config=MODEL, train_config=TrainConfig(epochs=1, batch_size=2, device="cpu", num_threads=1),
              out_dir=out, acquisition=acquisition, progress=False)
    return out / "checkpoint-best.pt"


@pytest.fixture(scope="module")
def dae_checkpoint(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("run"), acquisition=_acquisition())


def test_dae_map_abs_sum_is_absolute_channel_sum_of_residual():
    torch.manual_seed(0)
    net = DAE(C, GRID, 16, "linear", widths=(4, 8)).eval()
    x = torch.rand(2, C, *GRID)
    expected = (x - net(x).reconstruction).sum(1).abs()
    got = anomaly_map(net, x, dae_map="abs_sum", dae_test_latent="mean")
    assert got.shape == (2, *GRID)
    torch.testing.assert_close(got, expected)


def test_dae_map_mean_normalised_is_the_authors_postprocessing():
    # postprocessing.py: result /= result.max() over one subject's whole (C, X, Y, Z) output,
    # then |mean over channels (input - result)|.
    torch.manual_seed(0)
    net = DAE(C, GRID, 16, "linear", widths=(4, 8)).eval()
    x = torch.rand(2, C, *GRID)
    rec = net(x).reconstruction.detach().numpy()
    expected = np.stack([np.abs(np.mean(x[i].numpy() - rec[i] / rec[i].max(), axis=0)) for i in range(2)])
    got = anomaly_map(net, x, dae_map="mean_normalised", dae_test_latent="mean").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    other = anomaly_map(net, x, dae_map="abs_sum", dae_test_latent="mean").numpy()
    assert not np.allclose(got, other)
    with pytest.raises(ValueError, match="dae_map"):
        anomaly_map(net, x, dae_map="sum", dae_test_latent="mean")


def test_dae_sampled_latent_differs_from_mean_reproducible_and_batch_independent():
    torch.manual_seed(0)
    net = DAE(C, GRID, 16, "sigmoid", widths=(4, 8)).eval()
    x = torch.rand(3, C, *GRID)
    mean = anomaly_map(net, x, dae_test_latent="mean")

    def gens(seed):
        return [latent_generator(seed, i) for i in range(3)]

    sampled = anomaly_map(net, x, dae_test_latent="sample", generator=gens(7))
    assert not torch.allclose(sampled, mean)
    torch.testing.assert_close(anomaly_map(net, x, dae_test_latent="sample", generator=gens(7)), sampled)
    assert not torch.allclose(anomaly_map(net, x, dae_test_latent="sample", generator=gens(8)), sampled)
    one_by_one = torch.cat([anomaly_map(net, x[i:i + 1], dae_test_latent="sample", generator=[gens(7)[i]])
                            for i in range(3)])
    torch.testing.assert_close(one_by_one, sampled)
    # a single generator: each subject draws in turn, so splitting the batch changes nothing
    whole = anomaly_map(net, x, dae_test_latent="sample", generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    split = torch.cat([anomaly_map(net, x[:1], generator=g), anomaly_map(net, x[1:], generator=g)])
    torch.testing.assert_close(split, whole)
    with pytest.raises(ValueError, match="generator"):
        anomaly_map(net, x)


def test_recdisc_map_is_sigmoid_of_logits_and_restores_mode():
    net = RecDiscNet(C, 4, 2, 4, 2).train()
    x = torch.rand(1, C, *GRID)
    got = anomaly_map(net, x)
    assert net.training
    net.eval()
    torch.testing.assert_close(got, torch.sigmoid(net(x).logits)[:, 0])
    assert 0 <= got.min() and got.max() <= 1


def test_predict_maps_matches_anomaly_map_for_any_batch_size(dae_checkpoint):
    # The checkpoint's config is the default (code): mean_normalised map of a sampled latent,
    # one generator per subject from the run's seed and the subject's position.
    vols = np.random.default_rng(1).random((3, C, *GRID), dtype=np.float32)
    net, meta = load_checkpoint(dae_checkpoint)
    assert (meta["model_config"]["dae_map"], meta["model_config"]["dae_test_latent"]) == ("mean_normalised", "sample")
    gens = [latent_generator(meta["seed"], i) for i in range(3)]
    expected = anomaly_map(net, torch.from_numpy(vols), generator=gens).numpy()
    for bs in (1, 2, 4):
        maps = predict_maps(dae_checkpoint, vols, batch_size=bs, device="cpu")
        assert maps.dtype == np.float32 and maps.shape == (3, *GRID)
        np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    half = predict_maps(dae_checkpoint, vols.astype(np.float16), device="cpu")
    np.testing.assert_allclose(half, expected, atol=2e-2)
    by_id = predict_maps((net, meta), vols, device="cpu", subjects=["a", "b", "c"])
    gens = [latent_generator(meta["seed"], s) for s in "abc"]
    np.testing.assert_allclose(by_id, anomaly_map(net, torch.from_numpy(vols), generator=gens).numpy(), rtol=1e-5,
                               atol=1e-6)


def test_predict_maps_takes_map_and_latent_from_the_checkpoint_config():
    import dataclasses

    from dmrilib.models import build_model

    vols = np.random.default_rng(2).random((2, C, *GRID), dtype=np.float32)
    x = torch.from_numpy(vols)
    # A checkpoint written before the switches: paper networks, abs_sum map of the posterior mean.
    old_cfg = {"dae_widths": [4, 8], "recon_base": 4, "recon_depth": 2, "disc_base": 4, "disc_depth": 2,
               "negative_slope": 0.01}
    torch.manual_seed(0)
    old_net = build_model("dae", "lsd16-sigmoid", ModelConfig.from_meta(old_cfg), C, grid=GRID).eval()
    meta = {"model_config": old_cfg, "in_channels": C, "grid": list(GRID), "seed": 0}
    np.testing.assert_allclose(predict_maps((old_net, meta), vols, device="cpu"),
                               anomaly_map(old_net, x, dae_map="abs_sum", dae_test_latent="mean").numpy(),
                               rtol=1e-5, atol=1e-6)
    # An explicit choice in the config wins over its fidelity.
    cfg = ModelConfig(dae_widths=(4, 8), dae_test_latent="mean")
    torch.manual_seed(0)
    net = build_model("dae", "lsd16-sigmoid", cfg, C, grid=GRID).eval()
    meta = {"model_config": dataclasses.asdict(cfg), "in_channels": C, "grid": list(GRID), "seed": 0}
    np.testing.assert_allclose(predict_maps((net, meta), vols, device="cpu"),
                               anomaly_map(net, x, dae_map="mean_normalised", dae_test_latent="mean").numpy(),
                               rtol=1e-5, atol=1e-6)


def test_predict_maps_refuses_other_grid(dae_checkpoint):
    with pytest.raises(ValueError, match="to match the checkpoint"):
        predict_maps(dae_checkpoint, np.zeros((1, C, 8, 16, 16), np.float32), device="cpu")


def _write_dwi(folder, shape=(20, 18, 22), n_dw=C, *, bvecs=None, voxel=VOXEL, flip_x=False, brain=None,
               order=None):
    """A DWI with one b0 and ``n_dw`` volumes (default: the training directions); ``order`` permutes them."""
    rng = np.random.default_rng(2)
    bvals = np.array([0] + [1000] * n_dw, float)
    if bvecs is None:
        bvecs = BVECS if n_dw == C else rng.normal(size=(n_dw, 3))
    bvecs = np.vstack([np.zeros(3), np.asarray(bvecs, float)])
    bvecs[1:] /= np.linalg.norm(bvecs[1:], axis=1, keepdims=True)
    mask = np.zeros(shape, bool)
    mask[brain or (slice(4, 15), slice(3, 14), slice(5, 17))] = True
    data = np.where(mask[..., None], 1000 * np.exp(-bvals * rng.uniform(5e-4, 1e-3, shape + (n_dw + 1,))), 0)
    if order is not None:  # the same measurements, volumes stored in another order
        keep = np.r_[0, 1 + np.asarray(order)]
        data, bvals, bvecs = data[..., keep], bvals[keep], bvecs[keep]
    affine = np.diag([-voxel if flip_x else voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [-20, -30, -10]
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), folder / "x_dwi.nii.gz")
    np.savetxt(folder / "x_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(folder / "x_dwi.bvec", bvecs.T, fmt="%.8f")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / "x_mask.nii.gz")
    return folder / "x_dwi.nii.gz", mask, affine


def test_predict_dwi_writes_map_on_input_grid(dae_checkpoint, tmp_path):
    dwi_path, mask, affine = _write_dwi(tmp_path)
    out = predict_dwi(dae_checkpoint, dwi_path, mask_path=tmp_path / "x_mask.nii.gz",
                      out_path=tmp_path / "out" / "map.nii.gz", device="cpu")
    img = nib.load(out)
    data = np.asarray(img.dataobj)
    assert data.shape == mask.shape and data.dtype == np.float32
    np.testing.assert_allclose(img.affine, affine)
    assert np.all(data[~mask] == 0) and np.all(data[mask] >= 0) and data[mask].max() > 0
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_predict_dwi_refuses_wrong_number_of_directions(dae_checkpoint, tmp_path):
    dwi_path, _, _ = _write_dwi(tmp_path, n_dw=C + 2)
    with pytest.raises(ValueError, match="checkpoint expects 4"):
        predict_dwi(dae_checkpoint, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu")
    assert not (tmp_path / "m.nii.gz").exists()


def test_predict_dwi_without_mask_uses_b0_brain_mask(dae_checkpoint, tmp_path):
    dwi_path, mask, _ = _write_dwi(tmp_path)
    out = predict_dwi(dae_checkpoint, dwi_path, out_path=tmp_path / "auto.nii.gz", device="cpu")
    data = np.asarray(nib.load(out).dataobj)
    assert data.shape == mask.shape and np.isfinite(data).all()
    assert (data > 0).sum() <= mask.sum() * 1.5  # background stays zero


def test_dmri_predict_cli_writes_the_map(dae_checkpoint, tmp_path, capsys):
    from dmrilib.cli import main

    dwi_path, mask, _ = _write_dwi(tmp_path)
    out = tmp_path / "cli" / "sub-x_anomaly.nii.gz"
    status = main(["predict", "--checkpoint", str(dae_checkpoint), "--dwi", str(dwi_path),
                   "--mask", str(tmp_path / "x_mask.nii.gz"), "--out", str(out)])
    assert status == 0 and "anomaly map written" in capsys.readouterr().out
    assert np.asarray(nib.load(out).dataobj).shape == mask.shape


def test_dmri_predict_cli_reports_bad_gradients_and_writes_nothing(dae_checkpoint, tmp_path, capsys):
    from dmrilib.cli import main

    dwi_path, _, _ = _write_dwi(tmp_path)
    np.savetxt(tmp_path / "x_dwi.bval", np.array([[0] + [1000] * (C - 1)]), fmt="%g")  # one b-value short
    out = tmp_path / "cli" / "map.nii.gz"
    status = main(["predict", "--checkpoint", str(dae_checkpoint), "--dwi", str(dwi_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "x_dwi.bval" in err and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------- training geometry and gradient scheme


def _predict(checkpoint, dwi_path, out, **kw):
    return np.asarray(nib.load(predict_dwi(checkpoint, dwi_path, mask_path=dwi_path.parent / "x_mask.nii.gz",
                                           out_path=out, device="cpu", **kw)).dataobj)


def test_checkpoint_records_the_training_acquisition(dae_checkpoint):
    acq = load_checkpoint(dae_checkpoint)[1]["acquisition"]
    assert acq["voxel_size_min"] == [VOXEL] * 3 and acq["orientations"] == ["RAS"]
    np.testing.assert_allclose(acq["gradient_schemes"][0], BVECS)


def test_predict_dwi_refuses_another_voxel_size(dae_checkpoint, tmp_path):
    from dmrilib.io import DwiInputError

    dwi_path, _, _ = _write_dwi(tmp_path, voxel=1.25)  # the 1.25 mm subject
    with pytest.raises(DwiInputError, match=r"x_dwi.nii.gz: voxel size 1.25 x 1.25 x 1.25 mm, but the checkpoint "
                                            r"was trained on 2.4 x 2.4 x 2.4 mm .*does not resample"):
        predict_dwi(dae_checkpoint, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu")
    assert not (tmp_path / "m.nii.gz").exists()
    dwi_path, _, _ = _write_dwi(tmp_path, voxel=2.45)  # within the 5% tolerance
    assert _predict(dae_checkpoint, dwi_path, tmp_path / "ok.nii.gz").any()


def test_predict_dwi_refuses_another_orientation(dae_checkpoint, tmp_path):
    from dmrilib.io import DwiInputError

    dwi_path, _, _ = _write_dwi(tmp_path, flip_x=True)
    with pytest.raises(DwiInputError, match=r"x_dwi.nii.gz: orientation LAS .*trained on RAS.*Reorient to RAS"):
        predict_dwi(dae_checkpoint, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu")


def test_predict_dwi_refuses_dipy_small_64d_of_another_voxel_size(tmp_path):
    from _io_fixtures import small_64d, write_dwi

    from dmrilib.io import DwiInputError, load_dwi
    from dmrilib.scoring import _channel_order

    data, affine, bvals, bvecs = small_64d()
    dw = bvals > 50
    unit = bvecs[dw] / np.linalg.norm(bvecs[dw], axis=1, keepdims=True)
    # trained on the simulator's directions (dipy's small_64D scheme) at 2.4 mm RAS
    ckpt = _train(tmp_path / "run64", channels=int(dw.sum()), acquisition=_acquisition(bvecs=unit))
    path = write_dwi(tmp_path / "real", "small64d_dwi", data.astype(np.float32), bvals, np.nan_to_num(bvecs))
    with pytest.raises(DwiInputError, match=r"small64d_dwi.nii.gz: voxel size 2 x 2 x 2 mm"):
        predict_dwi(ckpt, path, out_path=tmp_path / "m.nii.gz", device="cpu")
    # its gradient table itself matches: only the geometry is refused
    dwi = load_dwi(path, target_bvalue=1000)
    assert np.array_equal(_channel_order(dwi, _acquisition(bvecs=unit), 5.0, 100.0), np.arange(dw.sum()))


def test_predict_dwi_reorders_volumes_of_the_training_directions(dae_checkpoint, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = _predict(dae_checkpoint, _write_dwi(tmp_path / "a")[0], tmp_path / "a.nii.gz")
    # the same measurements stored in another order, two b-vectors with flipped sign
    order = [2, 0, 3, 1]
    flipped = BVECS[order] * np.array([[1], [-1], [1], [-1]])
    path, _, _ = _write_dwi(tmp_path / "b", bvecs=BVECS, order=order)
    np.savetxt(tmp_path / "b" / "x_dwi.bvec", np.vstack([np.zeros(3), flipped]).T, fmt="%.8f")
    permuted = _predict(dae_checkpoint, path, tmp_path / "b.nii.gz")
    assert reference.any()
    np.testing.assert_allclose(permuted, reference, rtol=1e-5, atol=1e-6)


def test_predict_dwi_refuses_other_gradient_directions(dae_checkpoint, tmp_path):
    from dmrilib.io import DwiInputError

    other = BVECS.copy()
    other[3] = [0.0, 0.6, 0.8]  # one direction 58 degrees off, the rest the same
    dwi_path, _, _ = _write_dwi(tmp_path, bvecs=other)
    with pytest.raises(DwiInputError, match=r"x_dwi.bvec: the gradient directions differ from the checkpoint's "
                                            r"training scheme: 1 of 4 directions have no training direction"):
        predict_dwi(dae_checkpoint, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu")
    # a slightly different table (scanner rounding) is the same scheme
    dwi_path, _, _ = _write_dwi(tmp_path, bvecs=BVECS + np.array([0.0, 0.01, -0.01]))
    assert _predict(dae_checkpoint, dwi_path, tmp_path / "ok.nii.gz").any()


def test_predict_dwi_refuses_another_shell(dae_checkpoint, tmp_path):
    from dmrilib.io import DwiInputError

    dwi_path, _, _ = _write_dwi(tmp_path)
    np.savetxt(tmp_path / "x_dwi.bval", np.array([[0] + [2000] * C]), fmt="%g")
    with pytest.raises(DwiInputError, match="b = 2000 s/mm"):
        predict_dwi(dae_checkpoint, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu", target_bvalue=2000)


def test_predict_dwi_refuses_a_brain_larger_than_the_network_grid(dae_checkpoint, tmp_path):
    from dmrilib.io import DwiInputError

    dwi_path, _, _ = _write_dwi(tmp_path, shape=(30, 30, 30), brain=(slice(2, 28),) * 3)
    with pytest.raises(DwiInputError, match=r"x_mask.nii.gz: only 23% of the 17576-voxel brain mask fits in the "
                                            r"network grid 16x16x16"):
        _predict(dae_checkpoint, dwi_path, tmp_path / "m.nii.gz")


def test_predict_dwi_refuses_a_checkpoint_without_acquisition_record(tmp_path):
    from dmrilib.train import CheckpointMismatchError

    ckpt = _train(tmp_path / "old")  # as written before checkpoints recorded the training data
    dwi_path, _, _ = _write_dwi(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint-best.pt: records no training acquisition .*Retrain"):
        predict_dwi(ckpt, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu")


def test_predict_dwi_refuses_a_corrupted_checkpoint(dae_checkpoint, tmp_path):
    from dmrilib.integrity import IntegrityError

    broken = tmp_path / "checkpoint-best.pt"
    raw = bytearray(dae_checkpoint.read_bytes())
    state = torch.load(dae_checkpoint, weights_only=True)["state_dict"]
    weight = max(state.values(), key=lambda t: t.numel())
    at = bytes(raw).find(weight.numpy().tobytes())
    raw[at + 4 * (weight.numel() // 2) + 3] ^= 0x40
    broken.write_bytes(bytes(raw))
    dwi_path, _, _ = _write_dwi(tmp_path)
    with pytest.raises(IntegrityError, match="checkpoint-best.pt: content sha256"):
        predict_dwi(broken, dwi_path, out_path=tmp_path / "m.nii.gz", device="cpu")


def test_predict_dwi_resamples_a_shell_when_training_did(tmp_path):
    """A checkpoint trained on shells resampled to small_64D (prepare.directions) scores a 30-direction DWI."""
    from dmrilib.directions import target_directions
    from dmrilib.io import DwiInputError

    target = target_directions("small_64D")
    acq = {**_acquisition(bvecs=target), "directions": "small_64D", "sh_order": 4}
    ckpt = _train(tmp_path / "run", channels=len(target), acquisition=acq)
    dwi_path, mask, affine = _write_dwi(tmp_path, n_dw=30)
    out = predict_dwi(ckpt, dwi_path, mask_path=tmp_path / "x_mask.nii.gz", out_path=tmp_path / "m.nii.gz",
                      device="cpu")
    data = np.asarray(nib.load(out).dataobj)
    assert data.shape == mask.shape and np.all(data[~mask] == 0) and data[mask].max() > 0
    # without the record the same data are refused: 30 directions, 64 channels
    plain = _train(tmp_path / "plain", channels=len(target), acquisition=_acquisition(bvecs=target))
    with pytest.raises(DwiInputError, match="checkpoint expects 64"):
        predict_dwi(plain, dwi_path, out_path=tmp_path / "p.nii.gz", device="cpu")
