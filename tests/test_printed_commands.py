"""The commands a stopped run prints run as printed: a config of one's own
(``hydra.searchpath``) is kept, and a run with nothing to resume runs again in its directory."""

from __future__ import annotations

import shlex

from test_hostile import TINY, run

from vae_lightning import cli


def test_the_resume_command_keeps_the_search_path_of_one_s_own_groups(
        tmp_path, monkeypatch, capsys):
    """A prior of one's own (a group option in a folder on hydra.searchpath): the printed
    "Resume with" left out hydra.searchpath, which Hydra records apart from the task's
    overrides, so the command as printed failed: "Could not find 'model/prior/mine'"."""
    own = tmp_path / "my_conf" / "model" / "prior"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("_target_: vae_lightning.priors.StandardNormal\n")
    run_dir = tmp_path / "run"
    given = [*TINY, "data=frey", "trainer.max_epochs=1", "model/prior=mine",
             f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", f"hydra.run.dir={run_dir}"]
    stopped = run(cli.train, [*given, "+callbacks.term._target_=fault_injection.SigtermAt",
                              "+callbacks.term.fn=fit", "+callbacks.term.hook=on_train_end"],
                  monkeypatch, capsys, tmp_path)
    assert stopped.code == 143, stopped.err[-3000:]
    line = next(line for line in stopped.err.splitlines() if "Resume with: " in line)
    words = shlex.split(line.split("Resume with: ", 1)[1].rstrip("."))
    assert words[0] == "vae-train"
    assert f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]" in words
    again = [w for w in words[1:] if "callbacks.term" not in w and "max_epochs" not in w]
    resumed = run(cli.train, [*again, "trainer.max_epochs=2"], monkeypatch, capsys, tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
