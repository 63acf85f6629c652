"""export_anomaly_maps: maps back on each patient's DWI grid as a BIDS derivative, overlays per patient."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from _io_fixtures import synthetic_dwi, write_dwi, write_mask
from dmrilib.config import Profile
from dmrilib.dataset import PrepareConfig, load_prepared, prepare_cohort
from dmrilib.export import MEANING, export_anomaly_maps
from dmrilib.integrity import save_npy
from dmrilib.pipeline import results_root
from dmrilib.plotting.overlay import CONVENTION, patient_overlay
from dmrilib.records import EvalRecord, MapsRecord, write_record

GRID = (16, 16, 16)
FOLDS = [0, 1]
VARIANTS = {"dae": ["lsd16-linear"], "recdisc": ["mix-mix-half"]}
NAME = re.compile(r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?_space-dwi_desc-[A-Za-z0-9]+_anomaly\.(nii\.gz|json)$")
PNG = b"\x89PNG\r\n\x1a\n"


def _affine(diag, origin, rotate_deg=0.0):
    """A voxel-to-world transform with voxel sizes (signs flip axes) and a rotation about z."""
    t = np.radians(rotate_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(diag)
    affine[:3, 3] = origin
    return affine


# label, group, session, shape, affine, lesion box (or None)
SUBJECTS = [
    ("H01", "healthy", "ses-pre", (12, 12, 8), _affine([2.0, 2.0, 2.5], [-12, -12, -10]), None),
    ("H02", "healthy", "ses-pre", (13, 11, 8), _affine([2.0, 2.2, 2.5], [-13, -12, -9], 5), None),
    # larger than the network grid along x: the map covers only the window, 0 outside
    ("P01", "patient", "ses-pre", (20, 12, 9), _affine([-1.8, 2.0, 2.4], [18, -12, -11], -8),
     (slice(8, 11), slice(5, 8), slice(3, 6))),
    ("P02", "patient", None, (12, 14, 8), _affine([2.0, -2.0, 2.5], [-11, 13, -10]), None),
]


def _write_bids(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tgroup"]
    for i, (label, group, session, shape, affine, lesion_box) in enumerate(SUBJECTS):
        sub = f"sub-{label}"
        rows.append(f"{sub}\t{group}")
        data, bvals, bvecs, mask = synthetic_dwi(shape, seed=i)
        prefix = f"{sub}_{session}" if session else sub
        parts = (sub, session) if session else (sub,)
        write_dwi(root.joinpath(*parts, "dwi"), f"{prefix}_dwi", data, bvals, bvecs, affine)
        deriv = root.joinpath("derivatives", "simulation", *parts, "dwi")
        write_mask(deriv / f"{prefix}_space-dwi_desc-brain_mask.nii.gz", mask, affine)
        if lesion_box is not None:
            lesion = np.zeros(shape, bool)
            lesion[lesion_box] = True
            write_mask(deriv / f"{prefix}_space-dwi_desc-lesion_mask.nii.gz", lesion & mask, affine)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    bids = _write_bids(base / "bids")
    config = PrepareConfig(grid=GRID, target_bvalue=1000, pipeline="simulation")
    return prepare_cohort(bids, config, base / "prepared", progress=False, n_jobs=1)


def _profile(variants=VARIANTS, folds=FOLDS) -> Profile:
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml").read_text())
    data.update(name="tiny", variants=variants, folds=folds)
    return Profile.from_dict(data)


def _write_maps_record(folder: Path, test_ids: list[str]) -> None:
    """``maps.json`` as the pipeline writes it: the subjects sit in the record's identity."""
    write_record(folder / "maps.json", MapsRecord(identity={"test_ids": test_ids}, sha256={},
                                                  checkpoint_config_hash="h", checkpoint_epoch=0, predict_time_s=0.0))


def _fake_runs(root: Path, profile: Profile, patients: list[str]) -> dict[tuple[str, str], list[np.ndarray]]:
    """Random float16 maps per configuration and fold, as the train/evaluate/baseline jobs store them."""
    rng = np.random.default_rng(7)
    configs = [(m, v) for m in ("dae", "recdisc") for v in profile.variants.get(m, ())] + [("baseline", "normative")]
    maps = {}
    for model, variant in configs:
        maps[(model, variant)] = []
        for fold in profile.folds:
            folder = root / "runs" / model / variant / f"fold-{fold}"
            values = rng.gamma(2.0, 1.0, size=(len(patients), *GRID)).astype(np.float16)
            save_npy(folder / "maps-test.npy", values)
            if model != "baseline":
                _write_maps_record(folder, patients)
            write_record(folder / "eval.json", EvalRecord(
                model=model, variant=variant, fold=fold, n_test=len(patients), auroc_mean=None,
                healthy_fpr_thresholds={"healthy_fpr_05": 1.5 + fold}, dice_post_mean_by_rule={}, evaluation={},
                config_hash="h", seed=0, provenance={}))
            maps[(model, variant)].append(values)
    return maps


def _results(prepared_dir: Path, folder: Path):
    """A results folder with the prepared cohort and every run's fake maps."""
    profile = _profile()
    root = results_root(profile, folder)
    shutil.copytree(prepared_dir, root / "prepared")
    patients = load_prepared(root / "prepared").patient_ids()
    return profile, folder, root, _fake_runs(root, profile, patients)


@pytest.fixture
def results(prepared_dir, tmp_path):
    """Fresh results for tests that change them."""
    return _results(prepared_dir, tmp_path / "results")


@pytest.fixture(scope="module")
def exported(prepared_dir, tmp_path_factory):
    """One export shared by the tests that only read it (an export with overlays takes ~2 s)."""
    profile, folder, root, maps = _results(prepared_dir, tmp_path_factory.mktemp("exported") / "results")
    return profile, root, maps, export_anomaly_maps(profile, folder, progress=False)


def test_every_patient_map_lies_on_its_dwi_grid_and_affine(exported):
    profile, root, maps, table = exported
    prepared = load_prepared(root / "prepared")
    patients = prepared.patient_ids()
    assert patients == ["sub-P01", "sub-P02"]
    assert len(table) == len(patients) * 3
    assert set(table["desc"]) == {"daelsd16linear", "recdiscmixmixhalf", "baseline"}
    for row in table.itertuples():
        i = patients.index(row.subject)
        j = int(prepared.index([row.subject])[0])
        dwi = nib.load(Path(prepared.meta["bids_root"]) / prepared.meta["sources"][row.subject])
        image = nib.load(root / row.path)
        assert image.shape == dwi.shape[:3]
        np.testing.assert_allclose(image.affine, dwi.affine, atol=1e-5)
        assert image.get_data_dtype() == np.float32
        expected = np.mean([m[i].astype(np.float32) for m in maps[(row.model, row.variant)]], axis=0)
        assert row.max_score == pytest.approx(float(expected.max()))
        # Independent of the crop arithmetic: every network voxel inside the DWI grid, found by its
        # world position through the NIfTI's own affine, holds the network-grid value.
        data = np.asarray(image.dataobj)
        grid_affine = prepared.crops[j].grid_affine(prepared.affines[j])
        ijk = np.indices(GRID).reshape(3, -1).T
        world = ijk @ grid_affine[:3, :3].T + grid_affine[:3, 3]
        vox = np.rint((world - image.affine[:3, 3]) @ np.linalg.inv(image.affine[:3, :3]).T).astype(int)
        inside = np.all((vox >= 0) & (vox < np.array(image.shape)), axis=1)
        assert inside.sum() > 0.3 * len(inside)
        np.testing.assert_array_equal(data[tuple(vox[inside].T)], expected[tuple(ijk[inside].T)])
        # nothing but the window is written: the rest of the DWI grid is 0
        assert np.count_nonzero(data) == np.count_nonzero(expected[tuple(ijk[inside].T)])
    p01 = table[table["subject"] == "sub-P01"]
    assert (p01["lesion_voxels"] > 0).all() and (table[table["subject"] == "sub-P02"]["lesion_voxels"] == 0).all()


def test_derivative_dataset_is_bids_named_and_described(exported):
    profile, root, _, table = exported
    out = root / "derivatives" / "anomaly"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["BIDSVersion"] == "1.9.0"
    assert description["GeneratedBy"][0]["Name"] == "dmrilib"
    assert description["SourceDatasets"][0]["URL"].startswith("file://")
    written = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "dataset_description.json")
    assert len(written) == 2 * len(table)
    for path in written:
        assert NAME.match(path.name), path.name
        rel = path.relative_to(out).parts
        subject = path.name.split("_")[0]
        session = next((part for part in path.name.split("_") if part.startswith("ses-")), None)
        assert rel == ((subject, session, "dwi", path.name) if session else (subject, "dwi", path.name))
    # sessions as the cohort has them: P01 has ses-pre, P02 none
    assert (out / "sub-P01" / "ses-pre" / "dwi" / "sub-P01_ses-pre_space-dwi_desc-baseline_anomaly.nii.gz").is_file()
    assert (out / "sub-P02" / "dwi" / "sub-P02_space-dwi_desc-daelsd16linear_anomaly.nii.gz").is_file()
    sidecar = json.loads((out / "sub-P02" / "dwi" / "sub-P02_space-dwi_desc-daelsd16linear_anomaly.json").read_text())
    assert sidecar["Values"] == MEANING
    assert (sidecar["Model"], sidecar["Variant"], sidecar["Folds"]) == ("dae", "lsd16-linear", FOLDS)
    assert sidecar["HealthyFprThresholds"] == {"fold-0": {"healthy_fpr_05": 1.5}, "fold-1": {"healthy_fpr_05": 2.5}}
    assert sidecar["Sources"] == ["bids:raw:sub-P02/dwi/sub-P02_dwi.nii.gz"]
    assert sidecar["ConfigHash"] and "versions" in sidecar["Provenance"]
    assert (root / "figures" / "export.csv").is_file()
    record = json.loads((root / "figures" / "export.json").read_text())
    assert record["export_time_s"] >= 0 and record["config_hash"]["profile"] == profile.hash()
    assert set(record["files"]) >= set(table["path"])


def test_one_overlay_per_patient(exported):
    profile, root, _, _ = exported
    overlays = sorted((root / "figures" / "overlays").iterdir())
    assert [p.name for p in overlays] == ["sub-P01.png", "sub-P02.png"]
    import matplotlib.image

    for path in overlays:
        assert path.read_bytes()[:8] == PNG
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500  # three rows of three slices at ~100 dpi
    record = json.loads((root / "figures" / "export.json").read_text())
    # no tables yet: the profile's first variant of each model, then the baseline
    assert [(r["model"], r["variant"]) for r in record["overlay_rows"]] == [
        ("dae", "lsd16-linear"), ("recdisc", "mix-mix-half"), ("baseline", "normative")]


def test_missing_fold_map_names_the_file_and_the_job(results):
    profile, results_dir, root, _ = results
    missing = root / "runs" / "recdisc" / "mix-mix-half" / "fold-1" / "maps-test.npy"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        export_anomaly_maps(profile, results_dir, progress=False)
    assert "recdisc/mix-mix-half fold 1" in str(info.value)


def test_maps_of_other_patients_are_refused(results):
    profile, results_dir, root, _ = results
    _write_maps_record(root / "runs" / "dae" / "lsd16-linear" / "fold-0", ["sub-P02", "sub-P01"])
    with pytest.raises(ValueError, match="maps.json: test_ids"):
        export_anomaly_maps(profile, results_dir, progress=False)


def test_rerun_is_idempotent_and_drops_files_of_removed_variants(results):
    profile, results_dir, root, _ = results
    first = export_anomaly_maps(profile, results_dir, progress=False)
    out = root / "derivatives" / "anomaly"

    def snapshot():
        return {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns)
                for folder in (out, root / "figures" / "overlays") for p in folder.rglob("*") if p.is_file()}

    before = snapshot()
    again = export_anomaly_maps(profile, results_dir, progress=False)
    assert again.equals(first)
    after = snapshot()
    assert after.keys() == before.keys()
    for rel, (content, mtime) in before.items():
        assert after[rel][0] == content, rel
        if rel.parts[0] == "derivatives":  # unchanged maps are not rewritten
            assert after[rel][1] == mtime, rel
    export_anomaly_maps(_profile(variants={"dae": ["lsd16-linear"]}), results_dir, progress=False)
    assert not list(out.rglob("*desc-recdisc*"))
    assert len(list(out.rglob("*desc-daelsd16linear_anomaly.nii.gz"))) == 2


def test_bids_mode_takes_sessions_and_sources_from_study_json(results, tmp_path):
    profile, results_dir, root, _ = results
    user_root = tmp_path / "user-bids"
    study = {"mode": "bids", "dataset": {"name": "user", "root": str(user_root), "bids_version": "1.8.0"},
             "subjects": [
                 {"subject": "sub-P01", "session": "ses-preop", "group": "patient",
                  "dwi": "sub-P01/ses-preop/dwi/sub-P01_ses-preop_acq-multi_dwi.nii.gz"},
                 {"subject": "sub-P02", "session": None, "group": "patient", "dwi": "sub-P02/dwi/sub-P02_dwi.nii.gz"},
             ]}
    (root / "cohort").mkdir()
    (root / "cohort" / "study.json").write_text(json.dumps(study))
    table = export_anomaly_maps(profile, results_dir, progress=False)
    assert all(p.startswith("derivatives/anomaly/sub-P01/ses-preop/dwi/sub-P01_ses-preop_space-dwi_desc-")
               for p in table[table["subject"] == "sub-P01"]["path"])
    out = root / "derivatives" / "anomaly"
    assert json.loads((out / "dataset_description.json").read_text())["SourceDatasets"] == [
        {"URL": user_root.resolve().as_uri()}]
    sidecar = json.loads((out / "sub-P01" / "ses-preop" / "dwi" /
                          "sub-P01_ses-preop_space-dwi_desc-baseline_anomaly.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-P01/ses-preop/dwi/sub-P01_ses-preop_acq-multi_dwi.nii.gz"]


# --------------------------------------------------------------------------- the figure itself

def _volume(shape=(10, 12, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, shape).astype(np.float32)


def test_overlay_shows_a_flipped_image_the_same_way():
    """An LPS-stored copy of a RAS image (same anatomy) is drawn identically: orientation comes from the affine."""
    background, score = _volume(seed=1) + 1.0, _volume(seed=2)
    lesion = np.zeros(background.shape, bool)
    lesion[2:5, 3:6, 2:4] = True
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [background.shape[0] - 1, background.shape[1] - 1]  # voxel (i, j) -> (X-1-i, Y-1-j)
    lps = ras @ flip

    def draw(arrays, affine):
        b, s, m = arrays
        fig = patient_overlay(b, {"model": s}, m, affine=affine, title="t")
        return fig, [[im.get_array() for im in ax.images] for ax in fig.axes if ax.images]

    _, shown_ras = draw((background, score, lesion), ras)
    fig, shown_lps = draw(tuple(a[::-1, ::-1] for a in (background, score, lesion)), lps)
    assert len(shown_ras) == 3
    for a, b in zip(shown_ras, shown_lps):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.ma.getdata(x), np.ma.getdata(y))
            np.testing.assert_array_equal(np.ma.getmaskarray(x), np.ma.getmaskarray(y))
    assert CONVENTION in fig._suptitle.get_text()


def test_overlay_draws_only_the_top_of_the_map_inside_the_brain():
    background, score = _volume(seed=3) + 1.0, _volume(seed=4)
    brain = np.zeros(background.shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    fig = patient_overlay(background, {"a": score, "flat": np.zeros_like(score)}, None,
                          affine=np.eye(4), brain_mask=brain, title="no lesion")
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 6 and "maximum" in fig._suptitle.get_text()
    # row "a" is cut through its maximum inside the brain
    peak = np.unravel_index(np.argmax(np.where(brain, score, -1)), score.shape)
    assert axes[0].get_title() == f"axial z = {peak[2]} mm"  # identity affine: mm = voxel index
    shown = axes[0].images[1].get_array()
    cut = score[:, :, peak[2]].T
    top = brain[:, :, peak[2]].T & (cut > np.percentile(score[brain], 95))
    np.testing.assert_array_equal(~np.ma.getmaskarray(shown), top)
    with pytest.raises(ValueError, match="same grid"):
        patient_overlay(background, {"a": score[:-1]}, None, affine=np.eye(4))


def test_overlay_falls_back_to_the_fa_when_the_dwi_is_gone(results):
    profile, results_dir, root, _ = results
    meta_path = root / "prepared" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sources"]["sub-P02"] = "sub-P02/dwi/moved_dwi.nii.gz"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="overlay of sub-P02: the DWI could not be read"):
        table = export_anomaly_maps(profile, results_dir, progress=False)
    assert (root / "figures" / "overlays" / "sub-P02.png").read_bytes()[:8] == PNG
    # the maps themselves never needed the DWI: still on its grid
    assert len(table[table["subject"] == "sub-P02"]) == 3
