"""Tests for dmrilib.models: shapes of all variants, losses, validation."""
import pytest
import torch

from dmrilib.models import (DAE, DAEOutput, ModelConfig, RecDiscNet, build_model, dae_loss, kl_divergence,
                            parse_dae_variant, recdisc_loss)
from dmrilib.models.blocks import UNet3d
from dmrilib.published import DAE_INDEX, RECDISC_INDEX

DAE_VARIANTS = [f"lsd{n}-{a}" for a in ("linear", "sigmoid") for n in (16, 32, 64, 128, 256, 512)]
RECDISC_VARIANTS = [
    "normal-directional-full", "uniform-directional-full", "uniform-random-full", "normal-random-full",
    "mix-mix-full", "uniform-random-half", "uniform-directional-half", "normal-random-half",
    "uniform-isotropic-full", "uniform-isotropic-half", "normal-directional-half", "mix-mix-half",
]
TINY = ModelConfig(dae_widths=(4, 8), recon_base=4, recon_depth=2, disc_base=2, disc_depth=2)
GRID = (8, 12, 8)


def test_variant_lists_are_the_papers_tables():
    assert set(DAE_VARIANTS) == set(DAE_INDEX)
    assert set(RECDISC_VARIANTS) == set(RECDISC_INDEX)


@pytest.mark.parametrize("variant", DAE_VARIANTS)
def test_dae_variants_reconstruct_input_shape(variant):
    net = build_model("dae", variant, TINY, 3, grid=GRID)
    x = torch.rand(2, 3, *GRID)
    out = net(x)
    assert out.reconstruction.shape == x.shape
    assert out.mu.shape == out.logvar.shape == (2, parse_dae_variant(variant)[0])
    if variant.endswith("sigmoid"):
        assert 0 <= out.reconstruction.min() and out.reconstruction.max() <= 1


@pytest.mark.parametrize("variant", RECDISC_VARIANTS)
def test_recdisc_variants_output_one_logit_channel(variant):
    net = build_model("recdisc", variant, TINY, 3, grid=GRID)
    out = net(torch.rand(2, 3, *GRID))
    assert out.reconstruction.shape == (2, 3, *GRID)
    assert out.logits.shape == (2, 1, *GRID)


def test_kl_is_zero_for_standard_normal_posterior():
    for reduction in ("sum", "mean"):
        assert kl_divergence(torch.zeros(3, 16), torch.zeros(3, 16), reduction).item() == 0.0
    # mu = 1: 1/2 per latent dimension; the default (code) sums the 16 dimensions
    assert kl_divergence(torch.ones(3, 16), torch.zeros(3, 16)).item() == pytest.approx(8.0)
    assert kl_divergence(torch.ones(3, 16), torch.zeros(3, 16), "mean").item() == pytest.approx(0.5)


def test_kl_sum_is_lsd_times_mean_and_averages_the_batch():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 32, generator=gen), torch.randn(4, 32, generator=gen)
    total = kl_divergence(mu, logvar, reduction="sum")
    assert total.item() == pytest.approx(32 * kl_divergence(mu, logvar, reduction="mean").item(), rel=1e-5)
    per_subject = [kl_divergence(mu[i:i + 1], logvar[i:i + 1], reduction="sum").item() for i in range(4)]
    assert total.item() == pytest.approx(sum(per_subject) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        kl_divergence(mu, logvar, reduction="batchmean")


def test_dae_loss_is_mse_plus_weighted_kl():
    target = torch.zeros(1, 2, 4, 4, 4)
    out = DAEOutput(torch.full_like(target, 0.5), torch.ones(1, 8), torch.zeros(1, 8))
    assert dae_loss(out, target, kl_weight=2.0).item() == pytest.approx(0.25 + 2.0 * 4.0)
    assert dae_loss(out, target, kl_weight=2.0, kl_reduction="sum").item() == pytest.approx(0.25 + 2.0 * 4.0)
    assert dae_loss(out, target, kl_weight=2.0, kl_reduction="mean").item() == pytest.approx(0.25 + 2.0 * 0.5)


def test_latent_noise_changes_reconstruction_only_when_given():
    net = build_model("dae", "lsd16-linear", TINY, 3, grid=GRID).eval()
    x = torch.rand(1, 3, *GRID)
    assert torch.equal(net(x).reconstruction, net(x).reconstruction)
    assert not torch.equal(net(x).reconstruction, net(x, torch.ones(1, 16)).reconstruction)


def test_recdisc_loss_weights_positive_class():
    from dmrilib.models import RecDiscOutput

    clean = torch.zeros(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    out = RecDiscOutput(clean.clone(), torch.zeros(1, 1, 2, 2, 2))
    low = recdisc_loss(out, clean, mask, pos_weight=1.0).item()
    high = recdisc_loss(out, clean, mask, pos_weight=20.0).item()
    assert low == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert high > low


@pytest.mark.parametrize("bad", ["lsd-sigmoid", "lsd16-relu", "512-sigmoid", "lsd0-linear"])
def test_bad_dae_variant_is_refused(bad):
    with pytest.raises(ValueError, match="lsd<N>"):
        build_model("dae", bad, TINY, 3, grid=GRID)


def test_bad_recdisc_variant_is_refused():
    with pytest.raises(ValueError, match="distribution"):
        build_model("recdisc", "gaussian-random-full", TINY, 3, grid=GRID)


def test_grid_not_divisible_by_depth_is_refused():
    with pytest.raises(ValueError, match="multiple of"):
        DAE(3, (8, 10, 8), 16, widths=(4, 8))


def test_forward_checks_input_shape():
    net = RecDiscNet(3, 4, 2, 2, 2, grid=GRID)
    with pytest.raises(ValueError, match="input channels"):
        net(torch.rand(1, 2, *GRID))
    with pytest.raises(ValueError, match="built for grid"):
        net(torch.rand(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        RecDiscNet(3, 4, 2, 2, 2)(torch.rand(1, 3, 8, 6, 8))


def test_model_config_rejects_bad_values_and_normalises_lists():
    assert ModelConfig(dae_widths=[4, 8]).dae_widths == (4, 8)
    with pytest.raises(ValueError, match="dae_widths"):
        ModelConfig(dae_widths=[])
    with pytest.raises(ValueError, match="recon_base"):
        ModelConfig(recon_base=0)


def test_build_model_refuses_grid_the_recdisc_depth_cannot_halve():
    with pytest.raises(ValueError, match="multiples of"):
        build_model("recdisc", "mix-mix-half", TINY, 3, grid=(8, 10, 8))


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("skip_connections", [True, False])
def test_unet3d_maps_in_to_out_channels_on_the_input_grid(norm, skip_connections):
    net = UNet3d(3, 2, (2, 4, 8), norm=norm, skip_connections=skip_connections)
    assert net.divisor == 4
    assert net(torch.rand(2, 3, *GRID)).shape == (2, 2, *GRID)
    first_decoder_conv = next(net.up_conv[0].parameters())
    assert first_decoder_conv.shape[1] == (8 if skip_connections else 4)  # upsampled (+ encoder) channels


def test_unet3d_rejects_bad_arguments_naming_the_class():
    with pytest.raises(ValueError, match="UNet3d: out_channels"):
        UNet3d(3, 0, (2, 4))
    with pytest.raises(ValueError, match="UNet3d: in_channels"):
        UNet3d(True, 1, (2, 4))
    with pytest.raises(ValueError, match="two levels"):
        UNet3d(3, 1, (2,))
    with pytest.raises(ValueError, match="negative_slope"):
        UNet3d(3, 1, (2, 4), negative_slope=1.0)
    with pytest.raises(ValueError, match="norm"):
        UNet3d(3, 1, (2, 4), norm="group")


@pytest.mark.parametrize("architecture", ["code", "paper"])
def test_recdisc_subnetworks_are_unet_bodies_with_stable_state_dict_keys(architecture):
    # Checkpoints of earlier runs load only if the parameter names stay put.
    net = RecDiscNet(3, 4, 2, 2, 2, architecture=architecture)
    assert isinstance(net.reconstructive, UNet3d) and not net.reconstructive.skip_connections
    assert isinstance(net.discriminative, UNet3d) and net.discriminative.skip_connections
    parts = {tuple(k.split(".")[:2]) for k in net.state_dict()}
    assert parts == {(sub, part) for sub in ("reconstructive", "discriminative")
                     for part in ("down", "up", "up_conv", "head")}


# --- paper vs code (dmrilib.fidelity rows 8, 11-14) -------------------------------------------------------------

PAPER_GRID = (64, 80, 64)
QUICK = dict(dae_widths=(8, 16, 32), recon_base=8, recon_depth=3, disc_base=4, disc_depth=3)


def _tiny() -> dict:
    return dict(dae_widths=(4, 8), recon_base=4, recon_depth=2, disc_base=2, disc_depth=2)  # TINY's sizes


def _n_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _paper_size(model: str, fidelity: str) -> torch.nn.Module:
    variant = "lsd512-sigmoid" if model == "dae" else "mix-mix-half"
    with torch.device("meta"):  # shapes only: no memory
        return build_model(model, variant, ModelConfig(fidelity=fidelity), 64, grid=PAPER_GRID)


@pytest.mark.parametrize(("model", "fidelity", "expected"), [
    ("dae", "code", 52_029_312), ("dae", "paper", 78_987_072),
    ("recdisc", "code", 123_540_977), ("recdisc", "paper", 86_208_065),
])
def test_parameter_counts_at_paper_size(model, fidelity, expected):
    # code: the authors' Models/VAE.py (latent_dim 512) and Models/RecDiscNet.py, counted with torch.
    assert _n_parameters(_paper_size(model, fidelity)) == expected


def test_the_shipped_paper_profile_builds_the_authors_networks():
    from dmrilib.config import load_profile

    profile = load_profile("paper")
    grid = profile.prepare.grid
    counts = {}
    for model, variant in (("dae", "lsd512-sigmoid"), ("recdisc", "mix-mix-half")):
        with torch.device("meta"):
            counts[model] = _n_parameters(build_model(model, variant, profile.model, 64, grid=grid))
    assert counts == {"dae": 52_029_312, "recdisc": 123_540_977}


def test_model_config_fills_unset_keys_from_fidelity_and_explicit_keys_win():
    code, paper = ModelConfig(), ModelConfig(fidelity="paper")
    assert (code.dae_architecture, code.recdisc_architecture, code.disc_depth, code.dae_map,
            code.dae_test_latent) == ("code", "code", 3, "mean_normalised", "sample")
    assert (paper.dae_architecture, paper.recdisc_architecture, paper.disc_depth, paper.dae_map,
            paper.dae_test_latent) == ("paper", "paper", 4, "abs_sum", "mean")
    mixed = ModelConfig(fidelity="paper", disc_depth=2, dae_map="mean_normalised")
    assert (mixed.disc_depth, mixed.dae_map, mixed.dae_architecture) == (2, "mean_normalised", "paper")
    assert ModelConfig(fidelity="paper").divisor("recdisc") == 16 and ModelConfig().divisor("recdisc") == 8
    with pytest.raises(ValueError, match="dae_map"):
        ModelConfig(dae_map="sum")
    with pytest.raises(ValueError, match="fidelity"):
        ModelConfig(fidelity="thesis")


def test_model_config_from_meta_reads_old_checkpoints_as_paper():
    import dataclasses

    old = {"dae_widths": [4, 8], "recon_base": 4, "recon_depth": 2, "disc_base": 2, "disc_depth": 4,
           "negative_slope": 0.01}  # what checkpoints held before the switches
    cfg = ModelConfig.from_meta(old)
    assert (cfg.fidelity, cfg.dae_architecture, cfg.recdisc_architecture, cfg.dae_map, cfg.dae_test_latent) == (
        "paper", "paper", "paper", "abs_sum", "mean")
    new = dataclasses.asdict(ModelConfig(dae_widths=(4, 8)))
    assert ModelConfig.from_meta(new) == ModelConfig(dae_widths=(4, 8))


def test_dae_architecture_switch_changes_the_layers():
    code = build_model("dae", "lsd16-sigmoid", TINY, 3, grid=GRID)
    paper = build_model("dae", "lsd16-sigmoid", ModelConfig(**{**_tiny(), "fidelity": "paper"}), 3, grid=GRID)
    assert (code.architecture, paper.architecture) == ("code", "paper")
    assert isinstance(code.fc, torch.nn.Linear) and code.fc.out_features == 8  # hidden = last width
    assert code.to_mu.in_features == 8 and paper.to_mu.in_features == 8 * 2 * 3 * 2  # flat bottleneck
    assert isinstance(paper.fc, torch.nn.Identity)
    # code head: ConvT k3 + BN + LeakyReLU + 1x1 conv; paper head: one ConvT k4
    assert [type(m).__name__ for m in code.head] == ["ConvTranspose3d", "BatchNorm3d", "LeakyReLU", "Conv3d"]
    assert code.head[0].kernel_size == (3, 3, 3) and code.head[0].output_padding == (1, 1, 1)
    assert isinstance(paper.head, torch.nn.ConvTranspose3d) and paper.head.kernel_size == (4, 4, 4)
    assert _n_parameters(code) != _n_parameters(paper)


def test_recdisc_architecture_switch_changes_the_layers():
    code = build_model("recdisc", "mix-mix-half", TINY, 3, grid=GRID)
    paper = build_model("recdisc", "mix-mix-half", ModelConfig(**{**_tiny(), "fidelity": "paper"}), 3, grid=GRID)
    kinds = {net: {type(m).__name__ for m in net.modules()} for net in (code, paper)}
    assert "ReLU" in kinds[code] and "LeakyReLU" not in kinds[code]
    assert "LeakyReLU" in kinds[paper] and "ReLU" not in kinds[paper]
    assert all(not m.affine for m in code.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    assert all(m.affine for m in paper.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    up_code, up_paper = code.reconstructive.up[0], paper.reconstructive.up[0]
    assert [type(m).__name__ for m in up_code] == ["ConvTranspose3d", "InstanceNorm3d", "ReLU"]
    assert up_code[0].in_channels == up_code[0].out_channels == 16 and up_code[0].kernel_size == (3, 3, 3)
    assert (up_paper.in_channels, up_paper.out_channels, up_paper.kernel_size) == (16, 8, (2, 2, 2))
    assert _n_parameters(code) != _n_parameters(paper)


@pytest.mark.parametrize("architecture", ["code", "paper"])
def test_recdisc_discriminator_input_order(architecture):
    # The authors' code concatenates [reconstruction, input]; this package's paper reading [input, reconstruction].
    net = RecDiscNet(3, 4, 2, 2, 2, architecture=architecture).eval()
    seen = {}
    net.discriminative.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    x = torch.rand(1, 3, *GRID)
    rec = net(x).reconstruction
    first, second = seen["x"][:, :3], seen["x"][:, 3:]
    assert torch.equal(first, rec if architecture == "code" else x)
    assert torch.equal(second, x if architecture == "code" else rec)


@pytest.mark.parametrize("fidelity", ["code", "paper"])
def test_quick_profile_sizes_build_and_run_with_both_architectures(fidelity):
    cfg = ModelConfig(**QUICK, fidelity=fidelity)
    grid = (32, 40, 32)
    x = torch.rand(1, 2, *grid)
    dae = build_model("dae", "lsd16-sigmoid", cfg, 2, grid=grid)
    assert dae(x).reconstruction.shape == x.shape
    rec = build_model("recdisc", "mix-mix-half", cfg, 2, grid=grid)
    assert rec(x[..., :16, :24, :16]).logits.shape == (1, 1, 16, 24, 16)  # quick trains RecDiscNet on crops


def test_unet3d_same_width_upsampling_keeps_width_then_halves():
    net = UNet3d(3, 2, (2, 4, 8), upsample="same_width", activation="relu", affine=False, conv_bias=True)
    assert net(torch.rand(1, 3, *GRID)).shape == (1, 2, *GRID)
    assert [u[0].out_channels for u in net.up] == [8, 4]
    assert [next(c.parameters()).shape[1] for c in net.up_conv] == [8 + 4, 4 + 2]  # upsampled + skip
    assert net.down[0][0][0].bias is not None
    with pytest.raises(ValueError, match="upsample"):
        UNet3d(3, 1, (2, 4), upsample="trilinear")
    with pytest.raises(ValueError, match="activation"):
        UNet3d(3, 1, (2, 4), activation="gelu")
