"""dmrilib.variants: the variant grammar shared by profiles, models and noise."""
import pytest

from dmrilib.variants import check_variant, parse_dae_variant, parse_recdisc_variant


def test_parse_variants():
    assert parse_dae_variant("lsd512-sigmoid") == (512, "sigmoid")
    assert parse_recdisc_variant("mix-mix-half") == ("mix", "mix", "half")
    check_variant("dae", "lsd16-linear")
    check_variant("recdisc", "normal-directional-full")


@pytest.mark.parametrize("model, variant", [("dae", "lsd0-linear"), ("dae", "lsd512-relu"), ("dae", "512-sigmoid"),
                                            ("recdisc", "mix-mix"), ("recdisc", "gauss-mix-half"),
                                            ("unet", "lsd16-linear")])
def test_bad_variants_are_refused_with_the_grammar(model, variant):
    with pytest.raises(ValueError, match="lsd<N>|<distribution>|unknown model"):
        check_variant(model, variant)
