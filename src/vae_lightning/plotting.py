"""matplotlib, set up once for every figure this package draws: the non-interactive Agg backend
(no display needed), imported only when a figure is drawn."""

from __future__ import annotations

import functools


@functools.cache
def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
