"""Write the papermill notebooks in notebooks/ (run once after editing this file).

The notebooks are thin: a tagged ``parameters`` cell of literals, then a few
cells that each call one ``dmrilib.pipeline`` function and show its result.
Keeping their source here makes the set consistent; the committed ``.ipynb``
files are what papermill and the workflow run.
"""
from pathlib import Path

import nbformat as nbf

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
SETUP = "from dmrilib import pipeline\nfrom dmrilib.config import load_profile\n\np = load_profile(profile)"
#: Notebooks that draw: only these pay for importing matplotlib (about a
#: second per job, 24 evaluate jobs in the quick book).
PLOTTING = {"train", "figures", "export"}

NOTEBOOKS = {
    "cohort": (
        "Simulate the cohort of a profile (or use real BIDS data) and prepare network-grid arrays.",
        'profile = "quick"\nresults = "results"\nbids_root = ""  # empty: simulate; else a BIDS dataset to use instead\nthreads = 0  # worker processes for simulating and preparing; 0: up to 2',
        [
            "cohort_dir, prepared_dir = pipeline.run_cohort(p, results, bids_root=bids_root or None, n_jobs=threads or None)\nprint(cohort_dir, prepared_dir)",
            "pipeline.cohort_overview(p, results)",
        ],
    ),
    "groundtruth": (
        "The paper's ground-truth pipeline (U-Net segmentation of T1w/FLAIR, ANTs registration to the DWI) "
        "on the cohort's patients, and its error against the simulator's truth.",
        'profile = "quick"\nresults = "results"\nbids_root = ""  # empty: the simulated cohort\nthreads = 0  # CPU threads and registration workers; 0: one',
        [
            "table = pipeline.run_groundtruth(p, results, bids_root=bids_root or None, threads=threads)\ntable.describe().T",
        ],
    ),
    "train": (
        "Train one (model, configuration, fold) on the healthy subjects of the fold, or several folds of a DAE "
        "configuration at once as stacked models (`folds`, the workflow's `train.stack_folds`).",
        'profile = "quick"\nresults = "results"\nmodel = "dae"\nvariant = "lsd512-sigmoid"\nfold = 0\n'
        'folds = ""  # several DAE folds at once, e.g. "0,1,2"; empty: `fold` alone\n'
        'threads = 0  # CPU threads for torch; 0 keeps its default',
        [
            "if str(folds) == \"\":\n"
            "    trained, runs = [fold], [pipeline.run_train(p, model, variant, fold, results, threads=threads)]\n"
            "else:  # several DAE folds at once; papermill passes one fold (-p folds 3) as a number\n"
            "    trained = [int(f) for f in str(folds).split(\",\")]\n"
            "    runs = pipeline.run_train_stack(p, model, variant, trained, results, threads=threads)\n"
            "{f: {k: run[k] for k in ('config_hash', 'seed', 'best_epoch', 'best_val_loss', 'train_time_s') if k in run}\n"
            " for f, run in zip(trained, runs)}",
            "for f in trained:\n    pipeline.plot_training_log(p, model, variant, f, results)",
        ],
    ),
    "evaluate": (
        "Predict anomaly maps of one trained run and evaluate them (AUROC, Dice under every threshold rule).",
        'profile = "quick"\nresults = "results"\nmodel = "dae"\nvariant = "lsd512-sigmoid"\nfold = 0\nthreads = 0  # CPU threads for torch; 0 keeps its default',
        [
            "summary = pipeline.run_evaluate(p, model, variant, fold, results, threads=threads)\nsummary",
        ],
    ),
    "baseline": (
        "Normative DTI baseline (voxelwise FA/MD z-scores) for one fold, evaluated like the models.",
        'profile = "quick"\nresults = "results"\nfold = 0',
        [
            "summary = pipeline.run_baseline(p, fold, results)\nsummary",
        ],
    ),
    "aggregate": (
        "Collect every evaluated run into the paper's tables, with bootstrap intervals.",
        'profile = "quick"\nresults = "results"',
        [
            "tables = pipeline.run_aggregate(p, results)\nsorted(tables)",
            "tables['table1']",
            "tables['table2']",
        ],
    ),
    "followup": (
        "Follow-up analysis: regions flagged outside the pre-operative lesion that become lesion later.",
        'profile = "quick"\nresults = "results"',
        [
            "followup = pipeline.run_followup(p, results)\nfollowup",
        ],
    ),
    "export": (
        "Every patient's anomaly maps on its own DWI grid as a BIDS derivative, and an overlay figure per patient.",
        'profile = "quick"\nresults = "results"',
        [
            "exported = pipeline.run_export(p, results)\nexported",
        ],
    ),
    "figures": (
        "Every figure of the paper, from result files.",
        'profile = "quick"\nresults = "results"',
        [
            "figures = pipeline.run_figures(p, results)\nfigures",
        ],
    ),
}


def build(name, title, params, cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbf.v4.new_markdown_cell(f"# {name}\n\n{title}\n\nRun with papermill, e.g. "
                                             f"`papermill notebooks/{name}.ipynb out.ipynb -p profile quick`."))
    nb.cells.append(nbf.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    nb.cells.append(nbf.v4.new_code_cell(("%matplotlib inline\n" if name in PLOTTING else "") + SETUP))
    nb.cells.extend(nbf.v4.new_code_cell(src) for src in cells)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name}-{i}"
    return nb


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "notebooks"
    for name, (title, params, cells) in NOTEBOOKS.items():
        nbf.write(build(name, title, params, cells), out / f"{name}.ipynb")
        print("wrote", out / f"{name}.ipynb")
