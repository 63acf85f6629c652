"""End to end: `make book PROFILE=smoke` from cohort to the built book, read in headless Chromium.

This is the README's main command on the CI-sized profile: simulate, train
every configuration of the profile, evaluate, aggregate, figures, book. The
built site is then opened as a reader would: pages render, images load,
tables hold numbers, the comparison page lists every paper table. A
screenshot of the results page is kept in ``test-artifacts/``.
"""
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    results, book_out = work / "results", work / "book"
    env = {**os.environ, "DMRI_PROGRESS": "0"}
    proc = subprocess.run(
        ["make", "--no-print-directory", "book", "PROFILE=smoke", f"RESULTS={results}", f"BOOK_OUT={book_out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env,
    )
    (work / "make-book.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return results / "smoke", book_out / "_build" / "html"


def test_make_book_prints_no_kernel_transport_warnings(smoke_build):
    # ipykernel warned "Kernel is running over TCP without encryption" once per
    # workflow job and book page (61 lines in a quick build).
    root, _ = smoke_build
    log = (root.parent.parent / "make-book.log").read_text()
    assert "without encryption" not in log
    assert "steps (100%) done" in log


def test_every_job_wrote_its_notebook_and_provenance(smoke_build):
    root, _ = smoke_build
    for nb in ("cohort", "groundtruth", "aggregate", "followup", "figures"):
        assert (root / "notebooks" / f"{nb}.ipynb").is_file()
    runs = pd.read_csv(root / "tables" / "runs.csv")
    assert len(runs) == 4 and runs["config_hash"].notna().all() and runs["seed"].notna().all()
    summary = json.loads((root / "tables" / "summary.json").read_text())
    assert summary["provenance"]["versions"]["torch"]
    for run in (root / "runs").glob("*/*/fold-0"):
        assert (run / "eval.json").is_file(), run
        assert (run / ("baseline.ipynb" if run.parts[-3] == "baseline" else "evaluate.ipynb")).is_file()


def test_smoke_cohort_is_bit_identical_to_the_shipped_manifest(smoke_build):
    from dmrilib.simulate import verify_manifest

    root, _ = smoke_build
    problems = verify_manifest(root / "cohort", ROOT / "data_manifest" / "simulated_cohort_smoke.sha256")
    assert problems == [], problems[:5]


def test_tables_have_the_paper_layout(smoke_build):
    root, _ = smoke_build
    t1 = pd.read_csv(root / "tables" / "table1.csv")
    assert set(t1["variant"]) == {"lsd16-linear", "lsd512-sigmoid"}
    assert t1["auroc_mean"].between(0, 1).all()
    for name in ("table3", "table4", "table5", "table6"):
        t = pd.read_csv(root / "tables" / f"{name}.csv")
        assert sorted(t["model"]) == ["dae", "recdisc"], name
        assert t["dice_post_mean"].between(0, 1).all(), name


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def _local_targets(page: Path, refs):
    for ref in refs:
        url = urlparse(ref)
        if url.scheme or ref.startswith("#") or not url.path:
            continue
        yield ref, (page.parent / unquote(url.path)).resolve()


def test_built_pages_have_no_broken_images_or_links(smoke_build):
    _, html = smoke_build
    for name in ("index", "data", "methods", "results", "comparison", "groundtruth", "reproducibility", "usage"):
        page = html / f"{name}.html"
        assert page.is_file(), page
        parser = _Links()
        parser.feed(page.read_text())
        for ref, target in _local_targets(page, parser.images + parser.links):
            assert target.exists(), f"{page.name}: broken reference {ref}"
    results = (html / "results.html").read_text()
    assert results.count("<img") >= 8
    assert "Simulated data" in results and "smoke" in results
    assert "Traceback" not in results


def test_groundtruth_stage_scores_against_both_truths(smoke_build):
    root, html = smoke_build
    gt = pd.read_csv(root / "tables" / "groundtruth.csv")
    assert len(gt) == 3 and gt["dice_segmentation"].between(0, 1).all()
    assert (gt["reg_error_mean_mm"] >= 0).all()
    comparison = pd.read_csv(root / "tables" / "truth_comparison.csv")
    assert {"dae", "recdisc", "baseline"} <= set(comparison["model"])
    assert comparison[["dice_exact", "dice_pipeline"]].stack().between(0, 1).all()
    # The smoke U-Net is too small to find tumours; check that the masks on the
    # network grid are the carried-over masks the table counted.
    masks = np.load(root / "groundtruth" / "lesion-pipeline.npy")
    assert masks.shape[0] == 3
    assert masks.reshape(3, -1).sum(axis=1).tolist() == gt["pipeline_voxels"].astype(int).tolist()
    text = re.sub(r"<[^>]+>", " ", (html / "groundtruth.html").read_text())
    assert "Traceback" not in text and "Simulated data" in text
    assert len(re.findall(r"\b0\.\d{3}\b", text)) > 10


def test_comparison_page_lists_every_paper_table(smoke_build):
    _, html = smoke_build
    text = re.sub(r"<[^>]+>", " ", (html / "comparison.html").read_text())
    for n in range(1, 7):
        assert f"Table {n}" in text
    assert "(paper)" in text and "(ours)" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed (make setup installs it)")
def test_results_page_renders_in_headless_chromium(smoke_build):
    _, html = smoke_build
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={html.parent / 'chromium-profile'}"]
    url = (html / "results.html").as_uri()
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "Table 1" in text or "AUROC" in text
    numbers = re.findall(r"\b0\.\d{3}\b", text)
    assert len(numbers) > 20, "the rendered results tables hold too few numbers"
    shot = ARTIFACTS / "results-page.png"
    subprocess.run(["chromium", *flags, "--window-size=1280,2400", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_make_ablation_reuses_the_build_and_the_book_shows_its_table(smoke_build):
    """`make ablation` on the built smoke profile (only the evaluation rows: seconds), then the
    differences page, whose source did not change, must show the new table (book-only --all)."""
    results, html = smoke_build
    page = html / "differences.html"
    assert "No ablation results for profile" in page.read_text()  # none yet: says how to make them
    proc = subprocess.run(
        ["make", "--no-print-directory", "ablation", "PROFILE=smoke", f"RESULTS={results.parent}",
         f"BOOK_OUT={html.parent.parent}", "ROWS=9 10"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "DMRI_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = pd.read_csv(results / "ablation" / "ablation.csv")
    assert set(table["row"]) == {9, 10} and set(table["model"]) == {"dae", "recdisc"}
    assert table["evaluate_only"].all() and (table["n"] == 3).all()
    # the evaluation-only rows re-score the build's own trained runs
    for run in (results / "ablation" / "row09-threshold-region" / "runs").glob("*/*/fold-0"):
        base = results / "runs" / run.relative_to(results / "ablation" / "row09-threshold-region" / "runs")
        assert (run / "checkpoint-best.pt").read_bytes() == (base / "checkpoint-best.pt").read_bytes()
    text = page.read_text()
    assert "No ablation results for profile" not in text
    assert "Δ AUROC" in text and "region of the threshold rules" in text
