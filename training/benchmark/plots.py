"""The paired ROC plot: candidate and active melanoma ROC on the same benchmark images."""
from __future__ import annotations

from pathlib import Path

from ..evaluate import _plt, sens_spec, targets

PLOT_NAME = "benchmark_roc"  # plots/benchmark_roc.png in the candidate's artifact


def plot_paired_roc(candidate, active, out: Path, *, labels: tuple[str, str] = ("candidate", "active")) -> Path:
    """Melanoma ROC of ``candidate`` and ``active`` (ScoredImages on the same images; ``active``
    may be None), each with its operating point at its own threshold; a PNG at ``out``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    images = candidate.images
    y = targets(images.masks)["melanoma"]
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    for name, scored, style in ((labels[0], candidate, "-"), (labels[1], active, "--")):
        if scored is None or not y.any() or y.all():
            continue
        score = scored.melanoma_probability
        fpr, tpr, _ = roc_curve(y, score)
        line, = ax.plot(fpr, tpr, style, label=f"{name} {scored.model_version} (AUC {roc_auc_score(y, score):.3f})")
        sens, spec = sens_spec(score, y, scored.thresholds.melanoma)
        ax.plot(1 - spec, sens, "o", color=line.get_color())
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("melanoma sensitivity")
    ax.set_title(f"Melanoma ROC on {images.name} (both models, same images)\n{len(y)} images, "
                 f"{images.n_lesions} lesions, {int(y.sum())} melanoma images", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
