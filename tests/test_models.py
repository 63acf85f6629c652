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
    assert kl_divergence(torch.zeros(3, 16), torch.zeros(3, 16)).item() == 0.0
    assert kl_divergence(torch.ones(3, 16), torch.zeros(3, 16)).item() == pytest.approx(0.5)


def test_dae_loss_is_mse_plus_weighted_kl():
    target = torch.zeros(1, 2, 4, 4, 4)
    out = DAEOutput(torch.full_like(target, 0.5), torch.ones(1, 8), torch.zeros(1, 8))
    assert dae_loss(out, target, kl_weight=2.0).item() == pytest.approx(0.25 + 2.0 * 0.5)


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


def test_recdisc_subnetworks_are_unet_bodies_with_stable_state_dict_keys():
    # Checkpoints of earlier runs load only if the parameter names stay put.
    net = RecDiscNet(3, 4, 2, 2, 2)
    assert isinstance(net.reconstructive, UNet3d) and not net.reconstructive.skip_connections
    assert isinstance(net.discriminative, UNet3d) and net.discriminative.skip_connections
    parts = {tuple(k.split(".")[:2]) for k in net.state_dict()}
    assert parts == {(sub, part) for sub in ("reconstructive", "discriminative")
                     for part in ("down", "up", "up_conv", "head")}
