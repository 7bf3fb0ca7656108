"""A run started before an argument existed resumes with its default: the resume check compares
the run's saved config with this one, and a key the saved config lacks is the default the run
was built with (the constructor's, read from the class this config builds there), so a newer
version's key (model.encoder.net.log_input) no longer refuses every older run's resume
(newcomer walkthrough eight); a value other than that default is still refused, naming it."""

import copy

import pytest
from compose import compose_train
from omegaconf import OmegaConf

from vae_lightning.checkpoints import CONFIG_KEY
from vae_lightning.errors import CheckpointError
from vae_lightning.resume import check_resumable


def _config(tmp_path, *overrides):
    cfg = compose_train(["data=frey", *overrides], tmp_path)
    cfg.model.data_shape = [1, 28, 20]  # as train.py sets it from the data module
    return OmegaConf.to_container(cfg, resolve=True)


def _older(config, *keys):
    """The checkpoint of a run whose config had none of ``keys`` (an older version's)."""
    saved = copy.deepcopy(config)
    for key in keys:
        *parents, last = key.split(".")
        node = saved
        for part in parents:
            node = node[part]
        del node[last]
    return {CONFIG_KEY: saved}


@pytest.mark.parametrize("key", ["model.encoder.net.log_input", "model.encoder.net.hidden",
                                 "model.decoder.likelihood.min_var"])
def test_a_key_added_since_the_run_started_resumes_at_its_default(tmp_path, key):
    config = _config(tmp_path)
    check_resumable(config, _older(config, key), "old.ckpt")


@pytest.mark.parametrize("overrides, key, words", [
    (["model.encoder.net.log_input=true"], "model.encoder.net.log_input",
     r"model.encoder.net.log_input=None \(this run: True\)"),
    (["model.encoder.net.hidden=[500]"], "model.encoder.net.hidden",
     r"model.encoder.net.hidden=None \(this run: \[500\]\)"),
])
def test_a_key_added_since_but_set_otherwise_is_refused(tmp_path, overrides, key, words):
    config = _config(tmp_path, *overrides)
    with pytest.raises(CheckpointError, match=words):
        check_resumable(config, _older(config, key), "old.ckpt")


def test_a_key_the_saved_run_holds_is_compared_as_it_is(tmp_path):
    """A saved null is a value the run chose, not an absent key: compared as before."""
    config = _config(tmp_path)
    checkpoint = {CONFIG_KEY: copy.deepcopy(config)}
    checkpoint[CONFIG_KEY]["model"]["encoder"]["net"]["log_input"] = None
    with pytest.raises(CheckpointError, match=r"log_input=None \(this run: False\)"):
        check_resumable(config, checkpoint, "old.ckpt")
