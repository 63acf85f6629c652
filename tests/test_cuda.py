"""The CUDA fast paths (bf16 autocast, channels_last_3d, data and noise on the GPU).

Skipped where no GPU is present (CI); run on a lent GPU machine with
``pytest tests/test_cuda.py``. The CPU paths are covered by test_train.py,
test_scoring.py and test_groundtruth.py; here the same functions must give
finite losses, loadable checkpoints and maps close to the CPU's on a GPU.
"""
import numpy as np
import pytest
import torch

from dmrilib.groundtruth import load_segmentation, segment, train_segmentation
from dmrilib.scoring import predict_maps
from dmrilib.train import load_checkpoint, train_run

from test_groundtruth import _seg_config, _training_data
from test_train import MODEL, _config, _data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fast(**kw):
    return _config(device="cuda", precision="bf16", channels_last=True, **kw)


@pytest.mark.parametrize("model,variant", [("dae", "lsd16-sigmoid"), ("recdisc", "mix-mix-half")])
def test_fast_path_trains_and_its_maps_match_the_cpu(tmp_path, model, variant):
    vols, brain, ids = _data()
    record = train_run(vols, brain, ids, train_ids=ids[:4], val_ids=ids[4:], model=model, variant=variant,
                       model_config=MODEL, train_config=_fast(epochs=3), out_dir=tmp_path, progress=False)
    assert np.isfinite(record["best_val_loss"])
    net, meta = load_checkpoint(tmp_path / "checkpoint-best.pt")
    assert meta["config_hash"] == record["config_hash"]
    on_gpu = predict_maps((net, meta), vols, device="cuda")
    on_cpu = predict_maps((net, meta), vols, device="cpu")
    assert on_gpu.shape == on_cpu.shape and np.isfinite(on_gpu).all()
    # fp32 on both devices, but cuDNN convolutions use TF32 by default: on an
    # H200 RecDiscNet maps differed from the CPU's by up to 7e-4 (0.17%).
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=5e-3, atol=2e-3)


def test_fast_path_resumes_on_the_gpu(tmp_path, monkeypatch):
    import dmrilib.train as train_module

    vols, brain, ids = _data()
    common = dict(train_ids=ids[:4], val_ids=ids[4:], model="dae", variant="lsd16-sigmoid", model_config=MODEL,
                  train_config=_fast(epochs=2), out_dir=tmp_path, progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        # Stop right after the first epoch's checkpoint, before its log is written.
        patch.setattr(train_module, "write_csv_atomic", killed)
        with pytest.raises(KeyboardInterrupt):
            train_run(vols, brain, ids, **common)
    resumed = train_run(vols, brain, ids, **common)
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]
    assert np.isfinite(resumed["best_val_loss"])


def test_segmentation_unet_trains_in_bf16_on_the_gpu(tmp_path):
    subjects, images, targets = _training_data(n=6, shape=(24, 24, 24))
    cfg = _seg_config(epochs=25, widths=(8, 16), lr=1e-2, device="cuda", precision="bf16")
    train_segmentation(images, targets, config=cfg, out_dir=tmp_path / "run", progress=False)
    net, _ = load_segmentation(tmp_path / "run")
    scores = []
    for t1, flair, truth in subjects[:-1]:
        mask = segment(net, t1, flair).mask
        scores.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    assert min(scores) > 0.8, scores


@pytest.mark.parametrize("compile_,mode", [(False, "default"), (True, "reduce-overhead")])
def test_stacked_folds_train_on_the_gpu_like_folds_trained_alone(tmp_path, compile_, mode):
    from dmrilib.stack import StackMember, train_stacked

    vols, brain, ids = _data()
    folds = [(ids[:4], ids[4:]), (ids[2:], ids[:2])]
    cfg = _fast(epochs=3, cudnn_benchmark=True, compile=compile_, compile_mode=mode)
    members = [StackMember(tuple(tr), tuple(va), tmp_path / f"stack{k}") for k, (tr, va) in enumerate(folds)]
    stacked = train_stacked(vols, brain, ids, members=members, model="dae", variant="lsd16-sigmoid",
                            model_config=MODEL, train_config=cfg, progress=False)
    for k, (tr, va) in enumerate(folds):
        alone = train_run(vols, brain, ids, train_ids=tr, val_ids=va, model="dae", variant="lsd16-sigmoid",
                          model_config=MODEL, train_config=cfg, out_dir=tmp_path / f"alone{k}", progress=False)
        assert stacked[k]["config_hash"] == alone["config_hash"] and np.isfinite(stacked[k]["best_val_loss"])
        stack_map, alone_map = (predict_maps(tmp_path / f"{name}{k}" / "checkpoint-last.pt", vols, device="cuda")
                                for name in ("stack", "alone"))
        # bf16 autocast on both: the same runs up to bf16 rounding over 3 epochs of Adam steps
        assert np.isfinite(stack_map).all()
        assert np.linalg.norm(stack_map - alone_map) / np.linalg.norm(alone_map) < 0.1
