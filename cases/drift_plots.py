"""PNG plots of the monitoring report (cases.drift), drawn with matplotlib's Agg canvas on request.

Figures are built without pyplot (no global figure state: safe in a threaded web server), and
matplotlib is imported only when a plot is asked for (it is slow to import).
"""
from __future__ import annotations

import io
import math
from typing import Callable

from cases.drift import MonitoringReport, WeekStats, week_label

PLOTS = ("uploads", "flag-rate", "psi", "agreement", "performance")


def _figure(rows: int, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _values(series: list[WeekStats], value: Callable[[WeekStats], float | None]) -> list[float]:
    return [math.nan if (v := value(s)) is None else v for s in series]  # NaN: a gap in the line


def plotted_values(series: list[WeekStats], value: Callable[[WeekStats], float | None], *,
                   count: Callable[[WeekStats], int] | None = None, minimum: int = 0) -> list[float]:
    """The weekly values a line plots: NaN (a gap) where there is none, or where the week's
    ``count`` (its n) is below ``minimum`` (a rate on 1 or 2 images is noise, not a trend)."""
    return [math.nan if count is not None and count(s) < minimum else v
            for s, v in zip(series, _values(series, value))]


def _weeks_axis(ax, report: MonitoringReport) -> None:
    labels = [week_label(w) for w in report.weeks]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)


def _lines(ax, report: MonitoringReport, value, *, ylabel: str, count=None, minimum: int = 0,
           unit: str = "") -> None:
    """One line per group; with ``count``, weeks under ``minimum`` are gaps and the legend gives
    the n plotted (the sum of ``count`` over the weeks drawn, in ``unit``)."""
    x = range(len(report.weeks))
    for cid, name in report.groups:
        series = report.series(cid)
        values = plotted_values(series, value, count=count, minimum=minimum)
        label = name
        if count is not None:
            n = sum(count(s) for s, v in zip(series, values) if not math.isnan(v))
            label = f"{name} (n={n} {unit})"
        ax.plot(x, values, marker="o", markersize=3, label=label, linewidth=2.2 if cid is None else 1.2)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _legend(ax, loc: str) -> None:
    """A legend when something is labelled (no clinic in view: nothing to name)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc=loc)


def uploads_png(report: MonitoringReport) -> bytes:
    """Images uploaded per week, per clinic and all clinics in view."""
    fig, (ax,) = _figure(1, 4)
    _lines(ax, report, lambda s: s.uploads, ylabel="images")
    ax.set_ylim(bottom=0)
    ax.set_title("Uploads per week (images)")
    _legend(ax, "upper left")
    _weeks_axis(ax, report)
    return _png(fig)


def agreement_png(report: MonitoringReport) -> bytes:
    """Share of the week's signed reviews agreeing with the model's own call (a gap: no review;
    reviews of lesions the model could not assess, sent on a forced flag, are left out)."""
    fig, (ax,) = _figure(1, 4)
    x = range(len(report.weeks))
    for cid, name in report.groups:
        series = report.series(cid)
        ax.plot(x, _values(series, lambda s: s.agreement_rate), marker="o", markersize=3,
                label=f"{name} (n={sum(s.reviews for s in series)} reviews)", linewidth=2.2 if cid is None else 1.2)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("agreeing")
    ax.set_title("Reviewer agreement with the model's own calls per week (agree / reviews signed)")
    ax.grid(alpha=0.3)
    _legend(ax, "lower left")
    _weeks_axis(ax, report)
    return _png(fig)


def flag_rate_png(report: MonitoringReport) -> bytes:
    """The monitored version's lesion flag rate, what the alert compares (with the reference ±
    bound band of the pooled or only clinic, when there is one), and abstentions per week; weeks
    with fewer scored images than the alert needs are gaps."""
    fig, (top, bottom) = _figure(2, 6)
    minimum = report.bounds.min_images
    scored = lambda s: s.scored  # noqa: E731
    _lines(top, report, lambda s: s.lesion_flag_rate, ylabel="lesion flag rate", count=scored, minimum=minimum,
           unit="scored images")
    # no clinic in view (a staff user without one, a fresh install): no reference to draw
    reference = report.references.get(report.summary_group) if report.groups else None
    if reference is not None and reference.lesion_flag_rate is not None:
        bound = report.bounds.flag_rate
        top.axhspan(reference.lesion_flag_rate - bound, reference.lesion_flag_rate + bound, color="tab:green",
                    alpha=0.12, label=f"reference ± {bound:.2f} ({reference.lesions} lesions)")
        top.axhline(reference.lesion_flag_rate, color="tab:green", linestyle=":", linewidth=1)
    top.set_ylim(0, 1)
    top.set_title(f"Lesion flag rate per week (lesions with a flagged image / lesions scored by {report.version_label})"
                  f"\ngaps: weeks with fewer than {minimum} scored images", fontsize=9)
    _legend(top, "upper left")
    _lines(bottom, report, lambda s: s.abstention_rate, ylabel="could not assess", count=scored, minimum=minimum,
           unit="scored images")
    bottom.set_ylim(0, 1)
    bottom.set_title(f"Abstentions per week (not assessable / scored by {report.version_label})"
                     f"\ngaps: weeks with fewer than {minimum} scored images", fontsize=9)
    _legend(bottom, "upper left")
    _weeks_axis(bottom, report)
    return _png(fig)


def psi_png(report: MonitoringReport) -> bytes:
    """PSI of the monitored version's melanoma probability against the reference, per week, with
    the alert bound; weeks with fewer assessable images than the PSI check needs are gaps."""
    fig, (ax,) = _figure(1, 4)
    minimum = report.bounds.min_psi_images
    _lines(ax, report, lambda s: s.psi, ylabel="PSI", count=lambda s: s.assessable, minimum=minimum,
           unit="assessable images")
    ax.axhline(report.bounds.psi, color="tab:red", linestyle="--", label=f"alert bound {report.bounds.psi:.2f}")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Score distribution of {report.version_label} vs reference (population stability index)"
                 f"\ngaps: weeks with fewer than {minimum} assessable images", fontsize=9)
    _legend(ax, "upper left")
    _weeks_axis(ax, report)
    return _png(fig)


def _cumulative(series: list[WeekStats], hit: str, miss: str) -> list[float]:
    """Running rate hit / (hit + miss) of the weeks' outcome counts so far (NaN until there is a lesion)."""
    hits = total = 0
    out = []
    for stats in series:
        hits += getattr(stats.outcomes, hit)
        total += getattr(stats.outcomes, hit) + getattr(stats.outcomes, miss)
        out.append(hits / total if total else math.nan)
    return out


PERFORMANCE_PANELS = (
    ("melanoma_caught", "melanoma_missed", "Melanoma sensitivity (melanomas flagged / melanomas)"),
    ("malignant_caught", "malignant_missed", "Malignant sensitivity (melanoma, BCC, SCC, AK flagged / all of them)"),
    ("benign_cleared", "benign_flagged", "Specificity (benign lesions not flagged / benign lesions)"),
)


def performance_png(report: MonitoringReport) -> bytes:
    """Cumulative sensitivity and specificity of the flags raised in practice, on histopathology
    results per tracked lesion (lesions the model could assess; the others are counted apart)."""
    fig, axes = _figure(len(PERFORMANCE_PANELS), 8)
    x = range(len(report.weeks))
    for ax, (hit, miss, title) in zip(axes, PERFORMANCE_PANELS):
        for cid, name in report.groups:
            series = report.series(cid)
            n = sum(getattr(s.outcomes, hit) + getattr(s.outcomes, miss) for s in series)
            ax.plot(x, _cumulative(series, hit, miss), marker="o", markersize=3, label=f"{name} (n={n})",
                    linewidth=2.2 if cid is None else 1.2)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("cumulative")
        ax.set_title(f"{title}, lesions, cumulative", fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, "lower left")
    fig.suptitle("First call made in practice vs histopathology (any model version in use then), among lesions with\n"
                 "histopathology (verification-biased: unflagged lesions are rarely excised)", fontsize=10)
    _weeks_axis(axes[-1], report)
    return _png(fig)


def render(name: str, report: MonitoringReport) -> bytes:
    """The named plot as PNG bytes (KeyError for an unknown name)."""
    return {"uploads": uploads_png, "flag-rate": flag_rate_png, "psi": psi_png, "agreement": agreement_png,
            "performance": performance_png}[name](report)
