"""Writing a matplotlib figure: the one place every layer that draws goes through."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; returns ``path``.

    ``bbox_inches="tight"`` keeps titles and axis labels inside the image when a layout (equal
    aspect, two-line suptitle) outgrows the canvas.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
