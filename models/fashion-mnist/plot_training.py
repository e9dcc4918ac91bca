#!/usr/bin/env python3
"""Training curves of the built-in Fashion-MNIST models for the model card.

Reads the runs' progress.csv files (written by `gdiff train` / `gdiff train-classifier`) and a
CSV of judge scores against the training step (columns step, weights, accuracy, fd; made from
`gdiff guidance-sweep` results; weights "real" is the real images' row, drawn as a line), and
writes two PNGs. Needs matplotlib.

Usage: plot_training.py MODEL_RUN_DIR CLASSIFIER_RUN_DIR QUALITY_CSV OUT_DIR
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    """A run's logged rows by step; a step logged again after a resume keeps its last row."""
    with open(path) as f:
        by_step = {float(r["step"]): r for r in csv.DictReader(f)}
    return [by_step[s] for s in sorted(by_step)]


def col(rs, key):
    return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rs]


def smooth(v, k=5):
    out = []
    for i in range(len(v)):
        w = [x for x in v[max(0, i - k + 1): i + 1] if x == x]
        out.append(sum(w) / len(w) if w else float("nan"))
    return out


def main(model_dir, clf_dir, quality_csv, out_dir):
    m = rows(f"{model_dir}/progress.csv")
    c = rows(f"{clf_dir}/progress.csv")
    with open(quality_csv) as f:  # several weights per step: no de-duplication by step here
        q = list(csv.DictReader(f))

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    step = col(m, "step")
    for key, label in [("loss", "loss (MSE + VB)"), ("mse", "MSE (eps)"), ("vb", "VB term")]:
        ax[0].plot(step, smooth(col(m, key)), label=label)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("training step (batch 32)")
    ax[0].set_title("diffusion model: training loss (mean of 5 logs)")
    ax[0].legend()
    cs = col(c, "step")
    ax[1].plot(cs, smooth(col(c, "train_acc@1")), label="train, all t")
    for qk, lab in [("q0", "train, least-noised quarter"), ("q3", "train, most-noised quarter")]:
        ax[1].plot(cs, smooth(col(c, f"train_acc@1_{qk}")), label=lab)
    val = [(s, a) for s, a in zip(cs, col(c, "val_acc@1")) if a == a]
    if val:
        ax[1].plot([s for s, _ in val], smooth([a for _, a in val], 3), "k--", label="test, all t")
    ax[1].set_xlabel("training step (batch 64)")
    ax[1].set_title("guidance classifier: accuracy on noised images")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/training_curves.png", dpi=100)

    # Top row: DPM-Solver++(2M) as an ODE solver at classifier-free scale 2 (the rows measured
    # while training); bottom row: the SDE solver, the built-in default since 2026-11-30, guided
    # and unguided (weights labelled "SDE solver, ...").
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.4))
    titles = [
        "DPM-Solver++(2M), ODE, 20 steps with the clamp, classifier-free scale 2",
        "SDE-DPM-Solver++(2M), 20 steps with the clamp (the default)",
    ]
    for row, (ax, title) in enumerate(zip(axes, titles)):
        sde = row == 1
        for w in sorted({r["weights"] for r in q} - {"real"}):
            if w.startswith("SDE solver") != sde:
                continue
            rs = sorted((r for r in q if r["weights"] == w), key=lambda r: float(r["step"]))
            s = [float(r["step"]) for r in rs]
            label = w.removeprefix("SDE solver, ")
            ax[0].plot(s, [100 * float(r["accuracy"]) for r in rs], "o-", label=label)
            ax[1].plot(s, [float(r["fd"]) for r in rs], "o-", label=label)
        # The real images' row (same sample count, held-out test images) as a horizontal line.
        for r in (r for r in q if r["weights"] == "real"):
            ax[0].axhline(100 * float(r["accuracy"]), color="k", ls="--", label="real test images")
            ax[1].axhline(float(r["fd"]), color="k", ls="--", label="real test images")
        ax[0].set_ylabel("judge accuracy (%)")
        ax[1].set_ylabel("FD (judge features)")
        ax[1].set_yscale("log")
        ax[0].set_title(title, fontsize=9, loc="left")
        for a in ax:
            a.set_xlabel("training step")
            a.legend(fontsize=7)
    fig.suptitle("samples against steps trained (200 class-balanced samples against the test set)")
    fig.tight_layout()
    fig.savefig(f"{out_dir}/quality_vs_steps.png", dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:5])
