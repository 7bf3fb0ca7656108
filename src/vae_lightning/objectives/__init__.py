"""Objectives, the options of ``model/objective``: what training maximises and what it logs.

One small module each, named by the configs' ``_target_``: ``elbo`` (AEVB, with beta and a KL
schedule), ``free_bits`` (Kingma et al. 2016), ``iwae`` (Burda et al. 2015), ``dreg`` (Tucker et
al. 2018), ``miwae``, ``piwae`` and ``ciwae`` (Rainforth et al. 2018), ``wake_sleep`` (the paper's
baseline), ``hvae`` (Caterini et al. 2018; its leapfrog proposal also weighs the evaluation's
samples, ``Objective.log_weights``); the disentangling and regularised VAEs ``beta_tc`` (Chen et
al. 2018), ``factor_vae`` (Kim & Mnih 2018), ``dip_vae`` (Kumar et al. 2018), ``info_vae`` (Zhao
et al. 2017), ``wae`` (Tolstikhin et al. 2018) and ``capacity`` (Burgess et al. 2018). ``base``
holds what they share, ``regularized`` what the objectives that add terms to the ELBO share,
``mmd`` the MMD^2 estimator and ``kl_schedule`` the KL term's schedules. A new objective is a
module here, a YAML file in ``conf/model/objective/`` and its tests; one with parameters and an
optimizer of its own gives them through ``Objective.auxiliary``.
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
