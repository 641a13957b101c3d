"""``--plot``: a PNG bar chart of a result, one panel per case and mode, medians with p20-p80 whiskers.

matplotlib is optional (the ``plot`` extra); without it ``--plot`` stops with a clear message.
"""

from __future__ import annotations

from pathlib import Path


class PlotUnavailable(RuntimeError):
    pass


def plot(result: dict, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install matplotlib "
                              f"(or the package's 'plot' extra); {exc}") from exc
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in result["rows"]:
        if r["status"] == "ok":
            groups.setdefault((r["section"], r["shape"], r["mode"]), []).append(r)
    if not groups:
        raise PlotUnavailable("--plot: no row of this run has a time to plot")
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.2 + 0.45 * sum(map(len, groups.values()))),
                             squeeze=False)
    for ax, ((section, shape, mode), rows) in zip(axes[:, 0], groups.items()):
        med = [r["median_ms"] for r in rows]
        err = [[r["median_ms"] - r["p20_ms"] for r in rows], [r["p80_ms"] - r["median_ms"] for r in rows]]
        ax.barh([r["provider"] for r in rows], med, xerr=err, color="tab:blue", capsize=3)
        ax.invert_yaxis()
        ax.set_title(" ".join(x for x in (section, shape, mode) if x), fontsize=9)
        ax.set_xlabel("median ms (p20-p80)", fontsize=8)
        ax.tick_params(labelsize=8)
    env = result["environment"]
    fig.suptitle(f"{result['job']}: {env['device_name']} ({env['device']}), {result['created_utc'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
