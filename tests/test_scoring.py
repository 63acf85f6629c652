"""Tests for dmrilib.scoring: anomaly maps and prediction on new DWI files."""
import nibabel as nib
import numpy as np
import pytest
import torch

from dmrilib.models import DAE, ModelConfig, RecDiscNet
from dmrilib.scoring import anomaly_map, predict_dwi, predict_maps
from dmrilib.train import TrainConfig, load_checkpoint, train_run

GRID = (16, 16, 16)
C = 4
MODEL = ModelConfig(dae_widths=(4, 8), recon_base=4, recon_depth=2, disc_base=4, disc_depth=2)


@pytest.fixture(scope="module")
def dae_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    brain = np.zeros((4, *GRID), bool)
    brain[:, 3:13, 3:13, 3:13] = True
    vols = (rng.random((4, C, *GRID), dtype=np.float32) * 0.5 + 0.25) * brain[:, None]
    ids = ["a", "b", "c", "d"]
    train_run(vols, brain, ids, train_ids=ids[:3], val_ids=ids[3:], model="dae", variant="lsd16-sigmoid",
              model_config=MODEL, train_config=TrainConfig(epochs=1, batch_size=2, device="cpu", num_threads=1),
              out_dir=out, progress=False)
    return out / "checkpoint-best.pt"


def test_dae_map_is_absolute_channel_sum_of_residual():
    torch.manual_seed(0)
    net = DAE(C, GRID, 16, "linear", widths=(4, 8)).eval()
    x = torch.rand(2, C, *GRID)
    expected = (x - net(x).reconstruction).sum(1).abs()
    got = anomaly_map(net, x)
    assert got.shape == (2, *GRID)
    torch.testing.assert_close(got, expected)


def test_recdisc_map_is_sigmoid_of_logits_and_restores_mode():
    net = RecDiscNet(C, 4, 2, 4, 2).train()
    x = torch.rand(1, C, *GRID)
    got = anomaly_map(net, x)
    assert net.training
    net.eval()
    torch.testing.assert_close(got, torch.sigmoid(net(x).logits)[:, 0])
    assert 0 <= got.min() and got.max() <= 1


def test_predict_maps_matches_anomaly_map_for_any_batch_size(dae_checkpoint):
    vols = np.random.default_rng(1).random((3, C, *GRID), dtype=np.float32)
    net, _ = load_checkpoint(dae_checkpoint)
    expected = anomaly_map(net, torch.from_numpy(vols)).numpy()
    for bs in (1, 2, 4):
        maps = predict_maps(dae_checkpoint, vols, batch_size=bs, device="cpu")
        assert maps.dtype == np.float32 and maps.shape == (3, *GRID)
        np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    half = predict_maps(dae_checkpoint, vols.astype(np.float16), device="cpu")
    np.testing.assert_allclose(half, expected, atol=2e-2)


def test_predict_maps_refuses_other_grid(dae_checkpoint):
    with pytest.raises(ValueError, match="to match the checkpoint"):
        predict_maps(dae_checkpoint, np.zeros((1, C, 8, 16, 16), np.float32), device="cpu")


def _write_dwi(folder, shape=(20, 18, 22), n_dw=C):
    rng = np.random.default_rng(2)
    bvals = np.array([0] + [1000] * n_dw, float)
    bvecs = rng.normal(size=(n_dw + 1, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    mask = np.zeros(shape, bool)
    mask[4:15, 3:14, 5:17] = True
    data = np.where(mask[..., None], 1000 * np.exp(-bvals * rng.uniform(5e-4, 1e-3, shape + (n_dw + 1,))), 0)
    affine = np.diag([2.4, 2.4, 2.4, 1.0])
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
