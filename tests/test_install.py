"""The package as installed: console scripts from outside the checkout, configs shipped inside
the package, optional extras named when missing (a logger, a launcher or sweeper plugin, or its
library), one console line per log record, and (slow) a built wheel in a fresh virtual
environment."""

import json
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import distribution
from pathlib import Path

import pytest
from compose import REPO
from test_hostile import run

from vae_lightning import cli

BIN = Path(sysconfig.get_path("scripts"))
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures.n_points=0"]
SCRIPTS = [entry.name for entry in distribution("vae-lightning").entry_points
           if entry.group == "console_scripts"]


def _run(args, cwd, env=None, timeout=300):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_the_configs_are_the_checkout_s_conf_shipped_as_a_package():
    """One copy: the top-level conf/ is the package vae_lightning.conf (pkg://vae_lightning.conf)
    in a checkout's editable install, and inside the wheel (the slow test below)."""
    from importlib import resources

    import vae_lightning.conf

    assert Path(vae_lightning.conf.__file__).parent == REPO / "conf"
    assert resources.files("vae_lightning.conf").joinpath("train.yaml").is_file()
    assert not (Path(vae_lightning.__file__).parent / "conf").exists()


def test_every_subpackage_is_declared():
    """pyproject.toml lists the packages (conf/ is mapped into the package): a new subpackage
    missing from the list would be left out of the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    src = REPO / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found | {"vae_lightning.conf"} == declared


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_is_installed_and_answers_help(script, tmp_path):
    proc = _run([str(BIN / script), "--help"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


def test_vae_train_trains_from_a_directory_outside_the_checkout(tmp_path):
    run = tmp_path / "run"
    proc = _run([str(BIN / "vae-train"), "model.latent=2", "data=frey", "trainer.max_epochs=1",
                 "logger=csv", f"hydra.run.dir={run}", *QUIET], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert (results["data"], results["latent"], results["epochs"]) == ("frey", 2, 1)
    # One console line per log record: Lightning's own handler is not added to Hydra's.
    assert (proc.stdout + proc.stderr).count("Seed set to 0") == 1
    assert (run / "train.log").read_text().count("Seed set to 0") == 1


BLOCK_TENSORBOARD = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorboard", "tensorboardX"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""


def test_a_missing_optional_integration_is_one_line_naming_the_extra(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_TENSORBOARD)
    run = tmp_path / "run"
    proc = _run([sys.executable, str(REPO / "train.py"), "logger=tensorboard",
                 f"hydra.run.dir={run}", *QUIET], cwd=tmp_path,
                env={"PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'pip install "vae-lightning[tensorboard]"' in proc.stderr
    assert "logger.tensorboard" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "checkpoints").exists()


def _lacking(tmp_path: Path, plugin: str | None = None, modules: tuple[str, ...] = ()) -> dict:
    """The environment of a Python that lacks an extra: a Hydra plugin left out of the
    ``hydra_plugins`` namespace (a regular package of that name first on the path, holding the
    other plugins, shadows it), or modules whose import is blocked (a meta-path finder)."""
    import hydra_plugins

    site = tmp_path / "site"
    (site / "hydra_plugins").mkdir(parents=True)
    (site / "hydra_plugins" / "__init__.py").write_text("")
    for folder in map(Path, hydra_plugins.__path__):
        for found in folder.iterdir():
            if found.is_dir() and found.name.startswith("hydra_") and found.name != plugin:
                (site / "hydra_plugins" / found.name).symlink_to(found)
    (site / "sitecustomize.py").write_text(BLOCK_TENSORBOARD.replace(
        '("tensorboard", "tensorboardX")', repr(modules)) if modules else "")
    return {"PYTHONPATH": str(site)}


PLUGIN_CASES = [  # (the command line, the plugin it needs, a module of its extra, the extra)
    (["-m", "hydra/launcher=joblib", "model.latent=2,3"], "hydra_joblib_launcher", "joblib",
     "sweep"),
    (["-m", "hydra/launcher=submitit_local", "model.latent=2,3"], "hydra_submitit_launcher",
     "submitit", "slurm"),
    (["hparams_search=optuna"], "hydra_optuna_sweeper", "optuna", "search"),
    (["hparams_search=optuna"], "hydra_optuna_sweeper", "sqlalchemy", "search"),
]
CHOICES = {"hydra_joblib_launcher": "hydra/launcher=joblib",
           "hydra_submitit_launcher": "hydra/launcher=submitit_local",
           "hydra_optuna_sweeper": "hydra/sweeper=optuna"}


@pytest.mark.parametrize("args, plugin, module, extra", PLUGIN_CASES,
                         ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("lacking", ["plugin", "library"])
def test_a_missing_sweep_integration_is_one_line_naming_the_extra(args, plugin, module, extra,
                                                                  lacking, tmp_path):
    """Without the plugin Hydra finds no such option ("Could not find 'hydra/launcher/joblib'");
    with the plugin but not its library the sweep would fail at its first job."""
    pytest.importorskip(f"hydra_plugins.{plugin}")
    env = _lacking(tmp_path, plugin=plugin) if lacking == "plugin" else _lacking(
        tmp_path, modules=(module,))
    sweep = tmp_path / "sweep"
    proc = _run([sys.executable, str(REPO / "train.py"), *args, f"hydra.sweep.dir={sweep}"],
                cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert f'pip install "vae-lightning[{extra}]"' in lines[0]
    assert CHOICES[plugin] in lines[0]  # the choice that needs it
    assert not sweep.exists()


def test_common_trainer_arguments_need_no_plus(tmp_path, monkeypatch, capsys):
    """vae-train in this process (the installed script: the tests above)."""
    directory = tmp_path / "run"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    proc = run(cli.train, ["trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2",
                           "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                           "trainer.num_sanity_val_steps=0", "trainer.max_epochs=1",
                           "trainer.deterministic=true", "logger=none",
                           f"hydra.run.dir={directory}", *QUIET], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-3000:]
    results = json.loads((directory / "results.json").read_text())
    assert results["steps"] == 2  # 4 batches, 2 accumulated per step


@pytest.mark.slow
def test_the_built_wheel_trains_frey_face_in_a_fresh_venv(tmp_path):
    """`pip install <wheel>` into a new venv (dependencies borrowed from this environment through
    a path entry, so no network is needed) and one epoch of Frey Face from outside the checkout,
    with the package imported from the venv, not from the checkout."""
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", str(wheels), str(REPO)], cwd=tmp_path, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("vae_lightning-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                     cwd=tmp_path, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                cwd=tmp_path).stdout.strip()
    # This environment's packages (torch, Lightning, Hydra, ...) as a plain path entry: its .pth
    # files, among them the editable install of the checkout, are not run.
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = _run([str(python), "-c", "import vae_lightning; print(vae_lightning.__file__)"],
                 cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    run = tmp_path / "run"
    proc = _run([str(venv / "bin" / "vae-train"), "model.latent=2", "data=frey",
                 "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={run}", *QUIET],
                cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["epochs"] == 1
