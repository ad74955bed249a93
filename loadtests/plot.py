"""The scaling curve as a PNG: aggregate bandwidth per cluster size against perfect scaling, the placement's ceiling and the egress caps."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_scaling"]


def plot_scaling(result: dict, path: str | Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('--plot needs matplotlib: pip install -e ".[bench]"') from None
    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    points, params = result["points"], result["params"]
    n = [pt["workers"] for pt in points]
    measured = [pt["bytes_s"] / 1e6 for pt in points]
    single = result["metrics"]["single_worker_bytes_s"] / 1e6
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(n, [k * params["egress_limit"] / 1e6 for k in n], ":", color="grey", label="sum of the egress caps")
    ax.plot(n, measured, "o-", color="tab:orange", label="measured aggregate")
    ax.plot(n, [k * single for k in n], "--", color="tab:blue", zorder=3, label="perfect scaling (N x one worker)")
    ax.plot(n, [k * single * pt["placement_ceiling"] for k, pt in zip(n, points)], "-.", color="tab:green",
            label="placement's ceiling (N x one worker x mean/busiest share)")
    for pt, y in zip(points, measured):
        ax.annotate(f"{pt['efficiency']:.2f}", (pt["workers"], y), textcoords="offset points", xytext=(0, -14),
                    ha="center", fontsize=8)
    ax.set_xlabel("workers")
    ax.set_ylabel("aggregate MB/s")
    ax.set_xticks(n)
    ax.set_xlim(0.5, max(n) + 0.5)
    ax.set_ylim(bottom=0)
    ax.set_title(f"p2pcache scaling: whole models read from the owners, {params['egress_limit'] / 1e6:g} MB/s "
                 f"egress cap per worker\n"
                 f"(labels: efficiency, medians of {params['repeats']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
