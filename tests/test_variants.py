"""dmrilib.variants: the model names and the variant grammar shared by profiles, models and noise."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmrilib import report, variants
from dmrilib.config import PROFILES_DIR, ConfigError, load_profile
from dmrilib.published import DAE_INDEX, RECDISC_INDEX
from dmrilib.variants import (BASELINE, BASELINE_VARIANT, DAE, DAE_VARIANTS, DISPLAY_NAMES, MODELS, RECDISC,
                              RECDISC_VARIANTS, check_model, check_variant, did_you_mean, parse_dae_variant,
                              parse_recdisc_variant)

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dmrilib"


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


# --------------------------------------------------------------------------- names


def test_model_names_are_those_every_output_has_always_used():
    # run folders (runs/dae/..., runs/baseline/normative/...), table values and CSV columns are spelled with these
    assert (DAE, RECDISC, BASELINE, BASELINE_VARIANT) == ("dae", "recdisc", "baseline", "normative")
    assert MODELS == ("dae", "recdisc")
    assert DISPLAY_NAMES == {"dae": "DAE", "recdisc": "RecDiscNet", "baseline": "Normative DTI baseline"}
    assert report.MODEL_NAMES is DISPLAY_NAMES


def test_suggestions_come_from_the_papers_configurations():
    assert set(DAE_VARIANTS) == set(DAE_INDEX) and len(DAE_VARIANTS) == 12
    assert set(RECDISC_INDEX) <= set(RECDISC_VARIANTS) and len(RECDISC_VARIANTS) == 3 * 4 * 2
    for variant in (*DAE_VARIANTS, *RECDISC_VARIANTS):
        check_variant(DAE if variant.startswith("lsd") else RECDISC, variant)


@pytest.mark.parametrize("model, variant, suggestion", [
    (DAE, "lsd512-sigmod", "lsd512-sigmoid"),
    (DAE, "lsd16-lineal", "lsd16-linear"),
    (DAE, "512-sigmoid", "lsd512-sigmoid"),
    (RECDISC, "normal-directionnal-full", "normal-directional-full"),
    (RECDISC, "mix-mix", "mix-mix-half"),
    (RECDISC, "unifrom-isotropic-half", "uniform-isotropic-half"),
])
def test_a_misspelt_variant_gets_a_suggestion(model, variant, suggestion):
    grammar = "lsd<N>-linear" if model == DAE else "<distribution>-<appearance>-<mean>"
    with pytest.raises(ValueError, match=re.escape(grammar)) as err:
        check_variant(model, variant)
    assert str(err.value).endswith(f"(did you mean {suggestion!r}?)")


def test_a_misspelt_model_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown model 'recdsic'; choose one of \('dae', 'recdisc'\)\. "
                                         r"\(did you mean 'recdisc'\?\)$"):
        check_model("recdsic")
    with pytest.raises(ValueError, match=r"unknown model 'unet'; choose one of \('dae', 'recdisc'\)\.$"):
        check_model("unet")  # nothing close: no suggestion
    assert check_model(RECDISC) == RECDISC
    assert did_you_mean("xyz", MODELS) == ""


@pytest.mark.parametrize("variants_, message", [
    ({"dae": ["lsd16-linear", "lsd512-sigmod"]},
     r"variants\.dae\[1\]: DAE variant 'lsd512-sigmod' .* \(did you mean 'lsd512-sigmoid'\?\)$"),
    ({"recdisc": ["mix-mix-hlaf"]},
     r"variants\.recdisc\[0\]: RecDiscNet/JOOD variant 'mix-mix-hlaf' .* \(did you mean 'mix-mix-half'\?\)$"),
    ({"dae": ["lsd16-linear"], "recdsic": ["mix-mix-half"]},
     r"variants: unknown model\(s\) \['recdsic'\]; .* \(did you mean 'recdisc'\?\)$"),
])
def test_a_typo_in_a_profile_fails_at_load_with_the_suggestion(tmp_path, variants_, message):
    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    data["variants"] = variants_
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_profile(path)


def test_variants_imports_nothing_heavy():
    # the Snakefile imports it (through dmrilib.config and itself) when Snakemake reads the workflow
    code = ("import sys, dmrilib.variants; "
            "print(sorted(m for m in ('numpy', 'pandas', 'torch', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- no other module spells a model name

#: The model names only dmrilib.variants may spell as a string literal.
_NAMES = (DAE, RECDISC)
#: Modules allowed to spell them: the owner.
_ALLOWED = {"dmrilib/variants.py"}


def _name_spellings(tree) -> list[int]:
    """Lines holding a string constant that is a model name (``"dae"``, ``'recdisc'``, also inside an f-string's
    expression); a docstring or message that mentions one among other words does not count."""
    return sorted({node.lineno for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in _NAMES})


def test_the_name_check_finds_what_it_should():
    code = ('a = "dae"\nb = {"recdisc": 1}\nc = f"{x[\'dae\']}"\nd = m == DAE\n'
            'e = "the dae"\n"""model : {"dae", "recdisc"}"""\nf = "dae_widths"\n')
    assert _name_spellings(ast.parse(code)) == [1, 2, 3]


def test_no_module_but_variants_spells_a_model_name():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in _ALLOWED:
            continue
        text = path.read_text()
        lines = text.splitlines()
        found += [f"{rel}:{n}: {lines[n - 1].strip()}" for n in _name_spellings(ast.parse(text))]
    assert not found, "use dmrilib.variants.DAE / RECDISC / MODELS instead:\n" + "\n".join(found)


def test_snakefile_takes_the_model_names_from_variants():
    text = (ROOT / "workflow" / "Snakefile").read_text()
    assert "from dmrilib.variants import" in text
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert not re.findall(r"""["'](?:dae|recdisc|normative)["']|["'][^"'\n]*\b(?:dae|recdisc)\|""", code), \
        "model names spelled in the Snakefile"
    assert '"|".join(MODELS)' in code
