"""Objectives, the options of ``model/objective``: what training maximises and what it logs.

One small module each, named by the configs' ``_target_``: ``elbo`` (AEVB), ``iwae`` (Burda et
al. 2015), ``dreg`` (Tucker et al. 2018) and ``wake_sleep`` (the paper's baseline); ``base``
holds what they share. A new objective is a module here, a YAML file in
``conf/model/objective/`` and its tests.
"""

from .base import (
    Auxiliary,
    Bound,
    Objective,
    Samples,
    auto_chunk,
    closed_form_kl,
    draw,
    elbo_estimate,
    importance_weighted,
    iw_bound,
)

__all__ = ["Auxiliary", "Bound", "Objective", "Samples", "auto_chunk", "closed_form_kl", "draw",
           "elbo_estimate", "importance_weighted", "iw_bound"]
