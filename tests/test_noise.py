"""Tests for dmrilib.noise: JOOD patch statistics and structure."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmrilib.noise import APPEARANCES, DISTRIBUTIONS, MEANS, JoodConfig, add_jood, noise_distribution_samples

GRID = (12, 14, 10)
SMALL_OFFSET = (1.0, 3.0)  # the code's 4..20 voxels would leave GRID's brain; tests scale it down


def _batch(b=4, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(b, c, *GRID, generator=g) * 0.8 + 0.1
    brain = torch.zeros(b, *GRID, dtype=torch.bool)
    brain[:, 3:9, 3:11, 2:8] = True
    return vol * brain[:, None], brain


def _patches_per_sample(cfg, n, seed):
    """Count patches by drawing 1x1 volumes where each patch is a distinct single voxel."""
    vol, brain = _batch(b=n, c=3, seed=seed)
    _, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(seed))
    return mask.flatten(1).any(1)


def test_patch_count_frequencies_match_probabilities():
    # With radius 0.5 every patch is its centre voxel; inside a solid brain the
    # number of marked voxels is the number of patches (unless both hit one voxel).
    cfg = JoodConfig(radius=(0.5, 0.5), geometry="anywhere")
    n = 4000
    vol = torch.full((n, 2, 6, 6, 6), 0.5)
    brain = torch.ones(n, 6, 6, 6, dtype=torch.bool)
    _, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(1))
    counts = mask.flatten(1).sum(1).numpy()
    freq = np.bincount(np.clip(counts, 0, 2), minlength=3) / n
    np.testing.assert_allclose(freq, [0.2, 0.6, 0.2], atol=0.03)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("appearance", APPEARANCES)
@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("geometry", ["centred", "anywhere"])
def test_mask_is_exactly_where_values_changed_and_values_stay_in_unit_range(distribution, appearance, mean, geometry):
    cfg = JoodConfig(distribution, appearance, mean, radius=(2, 4), geometry=geometry, centre_offset=SMALL_OFFSET)
    vol, brain = _batch(b=6)
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(3))
    assert out.shape == vol.shape and out.dtype == vol.dtype and mask.shape == brain.shape
    changed = (out != vol).any(1)
    assert torch.equal(mask, changed)
    assert mask.any()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("geometry", ["centred", "anywhere"])
def test_patch_centres_lie_in_brain_and_patches_stay_close(geometry):
    cfg = JoodConfig(radius=(1, 2), geometry=geometry, centre_offset=SMALL_OFFSET)
    vol, brain = _batch(b=64)
    _, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(5))
    grown = torch.nn.functional.max_pool3d(brain[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0
    assert not (mask & ~grown).any()


def test_no_patch_without_brain():
    vol, brain = _batch(b=3)
    out, mask = add_jood(vol, torch.zeros_like(brain), JoodConfig(), torch.Generator().manual_seed(0))
    assert not mask.any() and torch.equal(out, vol)


def _single_patch(appearance, c=6, **kw):
    cfg = JoodConfig("uniform", appearance, "full", radius=(3, 3), patch_probs=(0.0, 1.0), geometry="anywhere", **kw)
    vol = torch.zeros(2, c, *GRID)
    brain = torch.zeros(2, *GRID, dtype=torch.bool)
    brain[:, 6, 7, 5] = True
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(7))
    return out, mask


def test_directional_noise_has_one_value_per_channel_inside_a_patch():
    out, mask = _single_patch("directional")
    for b in range(out.shape[0]):
        inside = out[b][:, mask[b]]  # (C, n_voxels)
        assert inside.shape[1] > 10
        assert torch.all(inside == inside[:, :1])
        assert len(torch.unique(inside[:, 0])) == inside.shape[0]


def test_isotropic_per_voxel_noise_has_one_value_per_voxel_across_channels():
    out, mask = _single_patch("isotropic", isotropic="per_voxel")
    inside = out[0][:, mask[0]]
    assert torch.all(inside == inside[:1])
    assert len(torch.unique(inside[0])) == inside.shape[1]


def test_random_noise_varies_over_voxels_and_channels():
    out, mask = _single_patch("random")
    inside = out[0][:, mask[0]]
    assert len(torch.unique(inside)) == inside.numel()


def test_same_seed_same_output_and_other_seed_differs():
    cfg = JoodConfig.from_variant("mix-mix-half", radius=(2, 4), centre_offset=SMALL_OFFSET)
    vol, brain = _batch()
    a = add_jood(vol, brain, cfg, torch.Generator().manual_seed(11))
    b = add_jood(vol, brain, cfg, torch.Generator().manual_seed(11))
    c = add_jood(vol, brain, cfg, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), variant=st.sampled_from(
    [f"{d}-{a}-{m}" for d in DISTRIBUTIONS for a in APPEARANCES for m in MEANS]),
    geometry=st.sampled_from(["centred", "anywhere"]), isotropic=st.sampled_from(["per_patch", "per_voxel"]),
    mix=st.sampled_from(["weighted", "thirds"]))
def test_property_disturbance_is_confined_to_mask_and_unit_range(seed, variant, geometry, isotropic, mix):
    vol, brain = _batch(b=2, c=3, seed=seed % 1000)
    cfg = JoodConfig.from_variant(variant, radius=(1, 5), geometry=geometry, isotropic=isotropic, mix=mix,
                                  centre_offset=(0, 3))
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(seed))
    assert torch.equal(out[~mask[:, None].expand_as(out)], vol[~mask[:, None].expand_as(vol)])
    assert 0 <= out.min() and out.max() <= 1


def test_variant_round_trip_and_mean_values():
    cfg = JoodConfig.from_variant("uniform-isotropic-half")
    assert cfg.variant == "uniform-isotropic-half"
    assert cfg.mean_value == pytest.approx(0.2)
    assert JoodConfig.from_variant("normal-random-full").mean_value == pytest.approx(0.4)
    with pytest.raises(ValueError, match="variant"):
        JoodConfig.from_variant("normal-random")
    with pytest.raises(ValueError, match="radius"):
        JoodConfig(radius=(5, 2))
    with pytest.raises(ValueError, match="patch_probs"):
        JoodConfig(patch_probs=(0.5, 0.6))


def test_generator_on_other_device_is_refused():
    vol, brain = _batch()
    with pytest.raises(ValueError, match="generator"):
        add_jood(vol.to("meta"), brain.to("meta"), JoodConfig(), torch.Generator())


def test_noise_distribution_samples_have_the_papers_moments():
    s = noise_distribution_samples(50_000, seed=0)
    assert set(s) == {"normal-full", "normal-half", "uniform-full", "uniform-half"}
    assert s["normal-full"].mean() == pytest.approx(0.4, abs=0.005)
    assert s["normal-full"].std() == pytest.approx(0.12, abs=0.005)
    # the default is the authors' code: U(mean - sd, mean + sd)
    assert s["uniform-half"].min() == pytest.approx(0.2 - 0.12, abs=1e-3)
    assert s["uniform-half"].max() == pytest.approx(0.2 + 0.12, abs=1e-3)
    paper = noise_distribution_samples(50_000, config=JoodConfig(uniform_width=0.12), seed=0)
    assert paper["uniform-half"].min() == pytest.approx(0.2 - 0.06, abs=1e-3)
    assert paper["uniform-half"].max() == pytest.approx(0.2 + 0.06, abs=1e-3)
    assert s["normal-half"].min() >= 0.0  # clipped like the volumes
    assert np.array_equal(s["normal-full"], noise_distribution_samples(50_000, seed=0)["normal-full"])


def test_plot_noise_distributions_returns_figure():
    import matplotlib

    from dmrilib.plotting.noise import plot_noise_distributions

    fig = plot_noise_distributions(noise_distribution_samples(2000))
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 2
