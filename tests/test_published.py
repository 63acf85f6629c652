from dmrilib.published import DAE_INDEX, PAPER_TABLES, RECDISC_INDEX, paper_table
from dmrilib.config import load_profile


def test_paper_tables_cover_every_configuration_of_the_paper_profile():
    profile = load_profile("paper")
    assert set(DAE_INDEX) == set(profile.variants["dae"])
    assert set(RECDISC_INDEX) == set(profile.variants["recdisc"])


def test_paper_auroc_tables_are_sorted_ascending_like_the_paper():
    for name in ("table1", "table2"):
        values = paper_table(name)["auroc_mean"].tolist()
        assert values == sorted(values)
        assert paper_table(name)["index"].tolist() == list(range(1, 13))


def test_dice_tables_have_one_row_per_model():
    for name in ("table3", "table4", "table5", "table6"):
        assert sorted(r["model"] for r in PAPER_TABLES[name]) == ["dae", "recdisc"]
