"""Human-readable evaluation output: a Markdown report and a ROC-curve PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.findings import FINDINGS
from training.metrics import roc_curve

if TYPE_CHECKING:
    from shared.classifier import ModelCard
    from training.evaluate import Evaluation

REPORT_FILE = "report.md"
ROC_FILE = "roc.png"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _positives(m: dict[str, Any]) -> str:
    patients = m.get("n_positive_patients")
    return f"{m['n_positive']}" if patients is None else f"{m['n_positive']} ({patients})"


def _threshold(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _ci(pair: list[float | None]) -> str:
    low, high = pair
    return "n/a" if low is None or high is None else f"{low:.2f}-{high:.2f}"


def roc_png(evaluation: Evaluation, path: Path, title: str) -> None:
    """One ROC curve per finding with both classes present in the split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predictions = evaluation.predictions
    figure, axes = plt.subplots(figsize=(7, 7), dpi=100)
    for k, label in enumerate(FINDINGS):
        fpr, tpr, _ = roc_curve(predictions.targets[:, k], predictions.probabilities[:, k])
        if len(fpr) == 0:
            continue
        value = evaluation.metrics["per_finding"][label]["auroc"]
        n = evaluation.metrics["per_finding"][label]["n_positive"]
        axes.plot(fpr, tpr, linewidth=1.2, label=f"{label} {value:.2f} (n={n})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="lower right", fontsize=7)
    axes.set_aspect("equal")
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def markdown(card: ModelCard | None, metrics: dict[str, Any], roc_file: str | None = ROC_FILE) -> str:
    """A short report: headline, per-finding table, localisation, caveats."""
    lines: list[str] = []
    if card is not None:
        lines += [
            f"# Evaluation of `{card.name}` (version {card.version})",
            "",
            f"Input {card.input_size}x{card.input_size}, trained: {str(card.trained).lower()}. "
            f"{card.intended_use}",
            "",
        ]
    else:
        lines += ["# Evaluation", ""]
    lines += [
        f"Split **{metrics['split']}**: {metrics['n_images']} images of {metrics['n_patients']} patients "
        "(patient-disjoint from training). Mean AUROC "
        f"**{_fmt(metrics['mean_auroc'])}** (95% CI {_ci(metrics.get('mean_auroc_ci95', [None, None]))}) "
        f"over the {metrics['mean_auroc_findings']} findings that have "
        "both positives and negatives here. Thresholds are the card's (chosen on the validation split). "
        f"Micro-averaged precision {_fmt(metrics['micro']['precision'])}, recall "
        f"{_fmt(metrics['micro']['recall'])}, F1 {_fmt(metrics['micro']['f1'])}.",
        "",
        "| finding | positives (patients) | AUROC | 95% CI | threshold | precision | recall | F1 |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for label in FINDINGS:
        m = metrics["per_finding"][label]
        lines.append(
            f"| {label} | {_positives(m)} | {_fmt(m['auroc'])} | {_ci(m['auroc_ci95'])} | "
            f"{_threshold(m['threshold'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} |"
        )
    boot = metrics["bootstrap"]
    lines += [
        "",
        f"95% CI: percentile bootstrap over {boot.get('unit', 'image')}s, {boot['resamples']} resamples, "
        f"seed {boot['seed']}; resampling patients keeps each patient's images together, so correlated "
        "images of one patient do not narrow the interval. n/a: no positives (or no negatives) in this "
        "split, so the value is undefined; no interval when fewer than two patients have (or lack) the "
        "finding. With few positives the intervals are wide; read them before the point estimates.",
    ]
    localisation = metrics.get("localisation")
    if localisation is not None:
        lines += ["", "## Localisation (Wang et al. 2017: share of radiologist boxes with IoBB above t)", ""]
        if localisation["n_boxes"] == 0:
            lines.append("No radiologist boxes for images of this split.")
        else:
            lines += ["| finding | boxes | IoBB>0.1 | IoBB>0.25 | IoBB>0.5 |", "|---|---:|---:|---:|---:|"]
            for label, m in localisation["per_finding"].items():
                lines.append(
                    f"| {label} | {m['n_boxes']} | {_fmt(m['iobb>0.1'], 2)} | {_fmt(m['iobb>0.25'], 2)} | "
                    f"{_fmt(m['iobb>0.5'], 2)} |"
                )
    if roc_file:
        lines += ["", f"![ROC curves]({roc_file})"]
    if card is not None and calibration_markdown(card):
        lines += ["", *calibration_markdown(card)]
    return "\n".join(lines) + "\n"


def write_report(card: ModelCard | None, evaluation: Evaluation, directory: str | Path) -> tuple[Path, Path]:
    """Write report.md and roc.png into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    title = f"ROC, {evaluation.split} split" + (f", {card.name} {card.version}" if card else "")
    roc_path = directory / ROC_FILE
    roc_png(evaluation, roc_path, title)
    report_path = directory / REPORT_FILE
    report_path.write_text(markdown(card, evaluation.metrics))
    return report_path, roc_path


def calibration_markdown(card: ModelCard) -> list[str]:
    """The card's calibration (method, ECE and Brier on test before/after) and the flagged findings
    per study, as Markdown lines (empty when the card has none)."""
    measured = card.metrics.get("calibration_test") if card.metrics else None
    if not card.calibration or not measured:
        return []
    before, after = measured["before"], measured["after"]
    per_study = card.metrics.get("positives_per_study_test", {})
    lines = [
        "## Calibration and thresholds",
        "",
        f"Per-finding Platt scaling ({card.calibration.get('formula', '')}), fitted on the "
        f"{card.calibration.get('fitted_on', 'validation split')}; findings with fewer than "
        f"{card.calibration.get('min_positives')} validation positives keep the median slope and match "
        "their training prevalence. The service serves the calibrated probabilities.",
        "",
        "| test split, all findings pooled | network output | calibrated |",
        "|---|---:|---:|",
        f"| expected calibration error ({measured['bins']} bins) | {before['ece']:.4f} | {after['ece']:.4f} |",
        f"| Brier score | {before['brier']:.4f} | {after['brier']:.4f} |",
        "",
        f"Thresholds: {card.metrics.get('thresholds_from', 'n/a')}.",
    ]
    if per_study:
        lines.append(f"Findings per test study: {per_study['labels']:.2f} in the labels, "
                     f"{per_study['flagged']:.2f} flagged at the thresholds.")
    lines += ["", "![Reliability diagram](reliability.png)", ""]
    return lines
