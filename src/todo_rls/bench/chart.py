"""The PNG of docs/benchmarks.md: request latency vs data size, scoped vs plain."""

from pathlib import Path
from typing import Any

CHARTED = ("list first page", "list deep page", "get by id", "count open", "page of messages")


def draw(results: list[dict[str, Any]], path: Path) -> None:
    """One line per pattern and side over the stored scales (log x), saved to path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("--chart needs matplotlib: pip install 'todo-rls[bench]'") from error
    sized = sorted(results, key=lambda r: r["scale"]["tasks"])
    sizes = [r["scale"]["tasks"] for r in sized]
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    for index, name in enumerate(CHARTED):
        color = f"C{index}"
        for key, style, side in (("scoped", "-", "scoped (RLS)"), ("plain", "--", "plain")):
            medians = [
                next(p["median_ms"][key] for p in r["patterns"] if p["name"] == name) for r in sized
            ]
            axes.plot(sizes, medians, style, marker="o", color=color, label=f"{name}, {side}")
    axes.set_xscale("log")
    axes.set_xlabel("tasks in the database")
    axes.set_ylabel("median request latency (ms)")
    axes.set_ylim(bottom=0)
    axes.set_title("todo-rls bench: scoped (RLS + wrapper) vs plain user_id filter")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
