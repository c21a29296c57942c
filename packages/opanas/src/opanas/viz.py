"""Draw an architecture code as a graph: node 0 (laterals) -> nodes 1..5 -> output (their sum)."""

from __future__ import annotations

from pathlib import Path

from opanas.arch import NUM_NODES, OPS, arch_to_str, edge_index, parse_arch

_COLOURS = {"skip_connect": "#7f7f7f", "TD": "#1f77b4", "BU": "#d62728", "FS": "#2ca02c", "SE": "#9467bd"}


def plot_arch(arch, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    arch = parse_arch(list(arch) if not isinstance(arch, str) else arch)
    xs = {k: k * 1.6 for k in range(NUM_NODES + 2)}
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for k in range(NUM_NODES + 2):
        label = "N0\nlaterals" if k == 0 else ("output\nΣ N1..N5" if k == NUM_NODES + 1 else f"N{k}")
        ax.add_patch(plt.Circle((xs[k], 0), 0.32, color="#ffe9a8" if 0 < k <= NUM_NODES else "#cfe3ff", zorder=3))
        ax.text(xs[k], 0, label, ha="center", va="center", fontsize=8, zorder=4)
    for k in range(1, NUM_NODES + 1):
        for j in range(k):
            op = OPS[arch[edge_index(k - 1, j)]]
            if op == "none":
                continue
            rad = 0.0 if k - j == 1 else -0.25 - 0.08 * (k - j)
            ax.add_patch(FancyArrowPatch((xs[j] + 0.3, 0.05), (xs[k] - 0.3, 0.05), connectionstyle=f"arc3,rad={rad}",
                                         arrowstyle="-|>", mutation_scale=10, color=_COLOURS[op], lw=1.6, zorder=2))
            ymid = 0.18 if k - j == 1 else -rad * (xs[k] - xs[j]) / 2 + 0.1
            ax.text((xs[j] + xs[k]) / 2, ymid, op.replace("skip_connect", "skip"), color=_COLOURS[op], ha="center",
                    fontsize=8, bbox=dict(fc="white", ec="none", pad=0.5), zorder=5)
        ax.add_patch(FancyArrowPatch((xs[k] + 0.2, -0.25), (xs[NUM_NODES + 1] - 0.25, -0.2),
                                     connectionstyle=f"arc3,rad={0.15 + 0.02 * (NUM_NODES - k)}", arrowstyle="-|>",
                                     mutation_scale=8, color="#bbbbbb", lw=0.8, ls="--", zorder=1))
    ax.set_xlim(-0.6, xs[NUM_NODES + 1] + 0.6)
    ax.set_ylim(-1.6, 3.0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title((title + "\n" if title else "") + arch_to_str(arch), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
