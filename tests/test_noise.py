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
    cfg = JoodConfig(distribution, appearance, mean, radius=(2, 4), geometry=geometry, centre_offset=SMALL_OFFSET,
                     insertion="replace")
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
    mix=st.sampled_from(["weighted", "thirds"]), insertion=st.sampled_from(["authors", "replace"]))
def test_property_disturbance_is_confined_to_mask_and_unit_range(seed, variant, geometry, isotropic, mix, insertion):
    vol, brain = _batch(b=2, c=3, seed=seed % 1000)
    cfg = JoodConfig.from_variant(variant, radius=(1, 5), geometry=geometry, isotropic=isotropic, mix=mix,
                                  centre_offset=(0, 3), insertion=insertion)
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(seed))
    assert torch.equal(out[~mask[:, None].expand_as(out)], vol[~mask[:, None].expand_as(vol)])
    if insertion == "replace":
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
    # as applied to volumes: unclipped under the code's insertion, clipped under replace
    assert s["normal-half"].min() < 0.0 and 0.03 < np.mean(s["normal-half"] < 0) < 0.07
    clipped = noise_distribution_samples(50_000, config=JoodConfig(insertion="replace"), seed=0)
    assert clipped["normal-half"].min() >= 0.0
    assert np.array_equal(clipped["normal-half"], np.clip(s["normal-half"], 0.0, 1.0))
    assert np.array_equal(s["normal-full"], noise_distribution_samples(50_000, seed=0)["normal-full"])


def test_plot_noise_distributions_returns_figure():
    import matplotlib

    from dmrilib.plotting.noise import plot_noise_distributions

    fig = plot_noise_distributions(noise_distribution_samples(2000))
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 2


# --- paper or code (dmrilib.fidelity rows 3, 5, 6, 7): each switch must change the output ---

def test_isotropic_per_patch_is_one_value_per_patch_and_per_voxel_is_not():
    out, mask = _single_patch("isotropic")  # default: per_patch (the authors' code)
    for b in range(out.shape[0]):
        inside = out[b][:, mask[b]]
        assert inside.shape[1] > 10
        assert len(torch.unique(inside)) == 1  # one number over all voxels and channels
    out, mask = _single_patch("isotropic", isotropic="per_voxel")
    inside = out[0][:, mask[0]]
    assert torch.all(inside == inside[:1]) and len(torch.unique(inside[0])) == inside.shape[1]


CENTRED_GRID = (24, 28, 24)


def _one_patch_each(geometry, n=48, region=None, seed=0, grid_centre=None, **kw):
    """n volumes with exactly one uniform patch each; noise values all differ from the input."""
    cfg = JoodConfig("uniform", "random", "full", radius=(2, 4), patch_probs=(0.0, 1.0), geometry=geometry,
                     centre_offset=(2, 5), **kw)
    vol = torch.full((n, 2, *CENTRED_GRID), 0.05)
    brain = torch.ones(n, *CENTRED_GRID, dtype=torch.bool)
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(seed), centre_region=region,
                         grid_centre=grid_centre)
    return vol, out, mask


def _box(mask):
    """Per axis, (first, last) marked index of a (X, Y, Z) mask."""
    idx = mask.nonzero()
    return [(int(idx[:, a].min()), int(idx[:, a].max())) for a in range(3)]


def test_centred_patches_are_axis_aligned_in_the_offset_window_and_the_centre_region():
    region = torch.zeros(CENTRED_GRID, dtype=torch.bool)
    region[6:19, 6:22, 6:19] = True
    region[12:15] = False  # a slab through the grid centre: allowed centres differ from the brain's
    region = region.expand(48, *CENTRED_GRID)
    _, _, mask = _one_patch_each("centred", region=region)
    gc = [n // 2 for n in CENTRED_GRID]
    for m, reg in zip(mask, region):
        assert m.any()
        box = _box(m)
        # the box of side 2r sits on voxel c, the ellipsoid's centre is c - 0.5: even extents
        centre = [(lo + hi + 1) // 2 for lo, hi in box]
        assert all((hi - lo + 1) % 2 == 0 and hi - lo + 1 <= 8 for lo, hi in box)
        assert all(2 <= abs(c - g) <= 5 for c, g in zip(centre, gc))
        x, y, z = centre
        assert reg[x, y, z] and reg[x + 1, y + 1, z + 1]
        # axis-aligned: mirror-symmetric about the centre on every axis
        sub = m[box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1, box[2][0]:box[2][1] + 1]
        for a in range(3):
            assert torch.equal(sub, sub.flip(a))


def test_anywhere_patches_are_rotated_and_not_bound_to_window_or_region():
    region = torch.zeros(48, *CENTRED_GRID, dtype=torch.bool)
    region[:, 6:19, 6:22, 6:19] = True
    _, _, mask = _one_patch_each("anywhere", region=region)  # region is ignored: centres anywhere in the brain
    gc = [n // 2 for n in CENTRED_GRID]
    outside, asymmetric = 0, 0
    for m in mask:
        box = _box(m)
        centre = [(lo + hi) / 2 for lo, hi in box]
        outside += any(not 1.5 <= abs(c - g) <= 5.5 for c, g in zip(centre, gc)) or \
            not region[0, int(centre[0]), int(centre[1]), int(centre[2])]
        sub = m[box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1, box[2][0]:box[2][1] + 1]
        asymmetric += any(not torch.equal(sub, sub.flip(a)) for a in range(3))
    assert outside > 10 and asymmetric > 10


def test_centred_grid_centre_moves_the_window():
    _, _, mask = _one_patch_each("centred", n=16, grid_centre=(8, 9, 16))
    for m in mask:
        centre = [(lo + hi + 1) // 2 for lo, hi in _box(m)]
        assert all(2 <= abs(c - g) <= 5 for c, g in zip(centre, (8, 9, 16)))


def test_centred_falls_back_to_the_other_octants_and_drops_a_patch_without_any_centre():
    # allowed centres only in the (-, -, -) octant of the window: every patch lands there
    region = torch.zeros(32, *CENTRED_GRID, dtype=torch.bool)
    region[:, 7:11, 9:13, 7:11] = True
    _, _, mask = _one_patch_each("centred", n=32, region=region)
    gc = [n // 2 for n in CENTRED_GRID]
    for m in mask:
        centre = [(lo + hi + 1) // 2 for lo, hi in _box(m)]
        assert all(c < g for c, g in zip(centre, gc))
    # nothing allowed in the window (only at the grid centre): no patch at all, the input is returned
    region = torch.zeros(8, *CENTRED_GRID, dtype=torch.bool)
    region[:, 11:14, 13:16, 11:14] = True
    vol, out, mask = _one_patch_each("centred", n=8, region=region)
    assert not mask.any() and torch.equal(out, vol)


def test_centred_needs_an_integer_half_size_and_offset():
    with pytest.raises(ValueError, match="half-size"):
        JoodConfig(radius=(0.5, 0.9))
    JoodConfig(radius=(0.5, 0.9), geometry="anywhere")
    with pytest.raises(ValueError, match="centre_offset"):
        JoodConfig(centre_offset=(4.2, 4.8))
    with pytest.raises(ValueError, match="centre_offset"):
        JoodConfig(centre_offset=(5, 4))
    for name in ("isotropic", "geometry", "mix"):
        with pytest.raises(ValueError, match=name):
            JoodConfig(**{name: "both"})
    with pytest.raises(ValueError, match="centre_region"):
        vol, brain = _batch()
        add_jood(vol, brain, JoodConfig(), torch.Generator(), centre_region=brain[:, :-1])


@pytest.mark.parametrize("width, lo, hi", [(0.24, 0.28, 0.52), (0.12, 0.34, 0.46)])
def test_uniform_width_sets_the_range_of_the_disturbance(width, lo, hi):
    cfg = JoodConfig("uniform", "random", "full", radius=(3, 3), patch_probs=(0.0, 1.0), geometry="anywhere",
                     uniform_width=width)
    vol = torch.zeros(8, 4, *GRID)
    brain = torch.ones(8, *GRID, dtype=torch.bool)
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(2))
    values = out.permute(1, 0, 2, 3, 4)[:, mask]
    assert values.numel() > 2000
    assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6
    assert values.min() < lo + 0.01 and values.max() > hi - 0.01  # the whole range is used


def _mix_kinds(mix, n=3000):
    """Kind (0 random, 1 directional, 2 isotropic) and values of the one patch of each of n volumes."""
    cfg = JoodConfig("mix", "mix", "full", radius=(1.5, 1.5), patch_probs=(0.0, 1.0), geometry="anywhere", mix=mix)
    vol = torch.zeros(n, 3, 8, 8, 8)
    brain = torch.zeros(n, 8, 8, 8, dtype=torch.bool)
    brain[:, 2:6, 2:6, 2:6] = True
    out, mask = add_jood(vol, brain, cfg, torch.Generator().manual_seed(4))
    kinds, first = [], []
    for o, m in zip(out, mask):
        inside = o[:, m]  # (C, voxels)
        if len(torch.unique(inside)) == 1:
            kinds.append(2)
        elif torch.all(inside == inside[:, :1]):
            kinds.append(1)
        else:
            kinds.append(0)
        first.append(float(inside[0, 0]))
    return np.array(kinds), np.array(first)


def test_weighted_mix_is_34_33_33_with_uniform_isotropic_patches():
    kinds, first = _mix_kinds("weighted")
    freq = np.bincount(kinds, minlength=3) / len(kinds)
    np.testing.assert_allclose(freq, [0.33, 0.33, 0.34], atol=0.03)
    iso = first[kinds == 2]
    assert iso.min() >= 0.28 - 1e-6 and iso.max() <= 0.52 + 1e-6  # uniform 0.4 +- 0.12 only
    # random and directional patches keep the normal/uniform halves: some values leave that range
    assert np.mean((first[kinds < 2] < 0.28) | (first[kinds < 2] > 0.52)) > 0.1


def test_thirds_mix_draws_normal_isotropic_patches_too():
    kinds, first = _mix_kinds("thirds")
    freq = np.bincount(kinds, minlength=3) / len(kinds)
    np.testing.assert_allclose(freq, [1 / 3, 1 / 3, 1 / 3], atol=0.03)
    iso = first[kinds == 2]
    assert np.mean((iso < 0.28) | (iso > 0.52)) > 0.1


def test_code_defaults_are_reproducible_from_the_generator():
    cfg = JoodConfig.from_variant("mix-mix-half", radius=(2, 4), centre_offset=SMALL_OFFSET)
    assert (cfg.isotropic, cfg.geometry, cfg.uniform_width, cfg.mix) == ("per_patch", "centred", 0.24, "weighted")
    vol, brain = _batch(b=6)
    region = brain.clone()
    region[:, 6:] = False
    a = add_jood(vol, brain, cfg, torch.Generator().manual_seed(21), centre_region=region)
    b = add_jood(vol, brain, cfg, torch.Generator().manual_seed(21), centre_region=region)
    c = add_jood(vol, brain, cfg, torch.Generator().manual_seed(22), centre_region=region)
    assert a[1].any()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_from_train_config_reads_the_jood_keys():
    from types import SimpleNamespace

    train = SimpleNamespace(jood_radius=(2.5, 5.5), jood_isotropic="per_voxel", jood_geometry="anywhere",
                            jood_centre_offset=(2.0, 10.0), jood_uniform_width=0.12, jood_mix="thirds",
                            jood_insertion="replace")
    cfg = JoodConfig.from_train_config("uniform-isotropic-half", train)
    assert cfg == JoodConfig("uniform", "isotropic", "half", radius=(2.5, 5.5), isotropic="per_voxel",
                             geometry="anywhere", centre_offset=(2.0, 10.0), uniform_width=0.12, mix="thirds",
                             insertion="replace")
    # unset (None) or missing keys keep the defaults, i.e. the authors' code
    cfg = JoodConfig.from_train_config("mix-mix-full", SimpleNamespace(jood_radius=(5.0, 11.0), jood_mix=None))
    assert cfg == JoodConfig("mix", "mix", "full")
    with pytest.raises(ValueError, match="geometry"):
        JoodConfig.from_train_config("mix-mix-full", SimpleNamespace(jood_geometry="centered"))
    with pytest.raises(ValueError, match="insertion"):
        JoodConfig(insertion="add")
    # a real TrainConfig: the code's insertion unless the paper side or the key says otherwise
    from dmrilib.crossval import TrainConfig
    assert JoodConfig.from_train_config("mix-mix-full", TrainConfig()).insertion == "authors"
    assert JoodConfig.from_train_config("mix-mix-full", TrainConfig(fidelity="paper")).insertion == "replace"
    assert JoodConfig.from_train_config("mix-mix-full", TrainConfig(jood_insertion="replace")).insertion == "replace"


def test_plot_noise_distributions_states_the_configuration():
    from dmrilib.noise import noise_distribution_label
    from dmrilib.plotting.noise import plot_noise_distributions

    paper = JoodConfig(uniform_width=0.12, isotropic="per_voxel")
    assert "0.24" in noise_distribution_label() and "per patch" in noise_distribution_label()
    assert "0.12" in noise_distribution_label(paper) and "per voxel" in noise_distribution_label(paper)
    fig = plot_noise_distributions(config=paper, bins=20)
    assert fig.get_suptitle() == noise_distribution_label(paper)


def test_centred_draws_the_octant_first_like_the_code():
    # one allowed centre in the (+, +, +) octant, 64 in the (-, -, -) one: the code picks the octant
    # (1/8 each) before the offsets, so the lone centre gets 1/8 + 6/8 * 1/65, not 1/65 of the patches
    gx, gy, gz = (n // 2 for n in CENTRED_GRID)
    region = torch.zeros(400, *CENTRED_GRID, dtype=torch.bool)
    region[:, gx + 3, gy + 3, gz + 3] = region[:, gx + 4, gy + 4, gz + 4] = True
    region[:, gx - 5:gx - 1, gy - 5:gy - 1, gz - 5:gz - 1] = True
    _, _, mask = _one_patch_each("centred", n=400, region=region)
    lone = np.mean([[(lo + hi + 1) // 2 for lo, hi in _box(m)] == [gx + 3, gy + 3, gz + 3] for m in mask])
    assert 0.08 < lone < 0.2


def _insertion_pair(insertion, level, cfg_kw, seed=5):
    """One normal random half patch per volume over a constant ``level`` (same draws for every call)."""
    cfg = JoodConfig("normal", "random", "half", radius=(3, 4), patch_probs=(0.0, 1.0), centre_offset=(1, 3),
                     insertion=insertion, **cfg_kw)
    vol = torch.zeros(8, 4, *CENTRED_GRID)
    brain = torch.ones(8, *CENTRED_GRID, dtype=torch.bool)
    vol[:] = level
    return vol, *add_jood(vol, brain, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("geometry", ["centred", "anywhere"])
def test_authors_insertion_replaces_positive_noise_adds_negative_noise_and_does_not_clip(geometry):
    # over zero signal the output inside the patch is the drawn noise itself: some of it is negative (not clipped)
    _, v, mask0 = _insertion_pair("authors", 0.0, {"geometry": geometry})
    noise = v[mask0[:, None].expand_as(v)]
    assert (noise < 0).float().mean() > 0.01 and v.min() < 0
    # over signal 0.5 (same draws): positive values replace the signal, negative ones are added to it
    vol, out, mask = _insertion_pair("authors", 0.5, {"geometry": geometry})
    assert torch.equal(mask, mask0)
    inside = mask[:, None].expand_as(out)
    expected = torch.where(inside, torch.where(v > 0, v, vol + v), vol)
    assert torch.equal(out, expected)
    assert ((out < 0.5) & inside & (v < 0)).any() and ((out > 0.5) & inside & (v > 0.5)).any()
    # the replace insertion of the same draws clips instead: negative draws become 0, i.e. differ
    _, rep, _ = _insertion_pair("replace", 0.5, {"geometry": geometry})
    assert torch.equal(rep, torch.where(inside, v.clamp(0, 1), vol))
    assert not torch.equal(rep, out)


def test_authors_insertion_marks_the_whole_ellipsoid_even_where_nothing_changed():
    # isotropic per-patch uniform noise: one value u per patch. Over a volume that already holds u everywhere,
    # nothing changes; the code's target still marks the whole ellipsoid, replace marks nothing.
    cfg = dict(radius=(3, 4), patch_probs=(0.0, 1.0), centre_offset=(1, 3))
    vol = torch.zeros(4, 3, *CENTRED_GRID)
    brain = torch.ones(4, *CENTRED_GRID, dtype=torch.bool)
    probe, ellipsoid = add_jood(vol, brain, JoodConfig("uniform", "isotropic", "full", **cfg),
                                torch.Generator().manual_seed(9))
    assert ellipsoid.flatten(1).any(1).all()
    u = torch.stack([probe[i][:, ellipsoid[i]].max() for i in range(4)])
    level = u.view(4, 1, 1, 1, 1).expand_as(vol).clone()
    out, mask = add_jood(level, brain, JoodConfig("uniform", "isotropic", "full", **cfg),
                         torch.Generator().manual_seed(9))
    assert torch.equal(out, level) and torch.equal(mask, ellipsoid)
    out, mask = add_jood(level, brain, JoodConfig("uniform", "isotropic", "full", insertion="replace", **cfg),
                         torch.Generator().manual_seed(9))
    assert torch.equal(out, level) and not mask.any()


def test_replace_insertion_clips_and_marks_only_changed_voxels_from_the_same_draws():
    # the replace output is the authors' draws clipped to [0, 1] and inserted whole; its mask is what changed
    vol, brain = _batch(b=6, c=3, seed=2)
    for variant in ("normal-random-half", "mix-mix-half", "normal-directional-full", "uniform-isotropic-half"):
        for seed in (0, 1, 2):
            kw = dict(radius=(2, 4), centre_offset=SMALL_OFFSET, patch_probs=(0.0, 0.3, 0.7))
            zero = torch.zeros_like(vol)
            v, ellipsoid = add_jood(zero, brain, JoodConfig.from_variant(variant, **kw),
                                    torch.Generator().manual_seed(seed))
            out, mask = add_jood(vol, brain, JoodConfig.from_variant(variant, insertion="replace", **kw),
                                 torch.Generator().manual_seed(seed))
            inside = ellipsoid[:, None].expand_as(vol)
            assert torch.equal(out, torch.where(inside, v.clamp(0, 1), vol))
            assert torch.equal(mask, (out != vol).any(1)) and 0 <= out.min() and out.max() <= 1
