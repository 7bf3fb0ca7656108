"""What Hydra, OmegaConf, the sweepers and failed writes raise, as the ``UserError`` it stands
for: one line naming the key, the value and what is accepted, with its exit code
(``errors.EXIT_CODES``); None where an error is a bug, to be raised as it is.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_lightning.errors import ConfigError, UserError


def user_error(err: Exception) -> UserError | None:
    """``err`` as the ``UserError`` it is or stands for (a failed write), else None: a bug."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, OSError | RuntimeError):
        from vae_lightning.checkpoints import unwritable

        return unwritable(getattr(err, "filename", None) or "the run's files", err)
    return None


def value_error(err: ValueError) -> UserError:
    """The ``UserError`` a ``ValueError`` out of Hydra or a sweeper stands for; else re-raise."""
    if str(err) == "Record does not exist.":  # Optuna's sweeper asks for the best trial of a
        from vae_lightning.sweeps import SWEEP_FAILED  # study in which no trial completed

        failure = UserError("no trial of the search completed (each failed: see its "
                            "results.json and log above), so the study has no best trial.")
        failure.exit_code = SWEEP_FAILED
        return failure
    if str(err).startswith("Config group override must be"):
        return ConfigError(_group_value_message() or str(err))
    raise err


def _group_value_message() -> str | None:
    """For ``group=<not a name>`` on the command line (``callbacks=3``, ``logger=null``): the
    override, and the group's options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae_lightning.groups import groups

    try:
        overrides = OverridesParser.create().parse_overrides(
            [arg for arg in sys.argv[1:] if not arg.startswith("-")])
    except Exception:
        return None
    for override in overrides:
        group = groups().get(override.key_or_group)
        if group is not None and not isinstance(override.value(), str | list):
            none = (f"; {override.key_or_group}=none for none" if "none" in group.options
                    else "")
            return (f"{override.input_line} is not allowed: {override.key_or_group} is a config "
                    f"group; choose one of its options: {', '.join(group.options)}{none}.")
    return None


def study_error(err: Exception) -> ConfigError | None:
    """An Optuna study's storage that cannot be read (SQLAlchemy's ``DatabaseError``), named."""
    if type(err).__module__.split(".")[0] != "sqlalchemy" or "DatabaseError" not in {
            c.__name__ for c in type(err).__mro__}:
        return None
    storage = OmegaConf.select(HydraConfig.get(), "sweeper.storage", default=None) \
        if HydraConfig.initialized() else None
    return ConfigError(f"The Optuna study storage {storage or '(hydra.sweeper.storage)'} cannot "
                       f"be read ({str(err.args[0] if err.args else err).splitlines()[0]}); "
                       "move the file away to start a new study, or choose another "
                       "hydra.sweep.dir.")


# Optuna's grid sampler (hydra/sweeper/sampler=grid) takes no seed, which hparams_search=optuna
# sets, nor intervals, which it searches: Hydra reported the first as a missing key of
# 'SamplerConfig'.
GRID_SAMPLER = (
    "hydra/sweeper/sampler=grid cannot be used with hparams_search=optuna (or a search built on "
    "it): the search seeds its sampler (hydra.sweeper.sampler.seed), which Optuna's grid "
    "sampler does not take, and it searches intervals (model.optimizer.lr), which a grid "
    "cannot list. For every combination of listed values use Hydra's own sweep, without "
    "hparams_search: vae-train -m model.latent=2,5,10 model.optimizer.lr=1e-3,3e-4 "
    "(vae-summarize compares the jobs); or keep hparams_search=optuna with "
    "hydra/sweeper/sampler=tpe (its default), random or cmaes.")


def hydra_message(err: Exception) -> str:
    """Hydra's and OmegaConf's multi-line messages as one paragraph; for a group named without
    its parent (``prior=vamp``) or a plugin's option whose extra is not installed, what to do."""
    from vae_lightning.groups import group_hint, plugin_extra

    text = str(err).split("Config search path:")[0]
    if isinstance(err, OverrideParseException) and isinstance(err.override, str):
        return _unparsed(err.override, err.message)
    if "Key 'seed' not in 'SamplerConfig'" in text:  # the one sampler config without a seed
        return GRID_SAMPLER
    nested = re.search(r"Could not override '([^']+)/([^'/]+)'\. No match in the defaults list",
                       text)
    if nested and (hint := _nested_group_hint(*nested.groups())):
        return hint
    # The value is the rest of Hydra's line: a mapping or a quoted string may hold spaces.
    override = re.search(r"Could not override '([^']+)'.*use \+\1=(.+)", text.strip(), re.S)
    if override and (hint := group_hint(override.group(1), override.group(2))):
        return hint
    if override and (hint := _unknown_key(err.__cause__, *override.groups())):
        return hint
    missing = re.search(r"Could not (?:find|load) '(hydra/[^']+)'", text)
    if missing and (extra := plugin_extra(missing.group(1))):
        return _missing_plugin(missing.group(1), extra)
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()
             and not line.strip().startswith(("object_type=", "Set the environment variable"))]
    guess = ""
    if any(line.startswith("Available options in") for line in lines):
        # Hydra lists a group's options one a line; its bases (data/_common.yaml) are not options.
        lines = [line for line in lines if not line.startswith("_")]
        wrong = re.search(r"Could not find '(.+)/([^'/]+)'", text)
        options = lines[[i for i, line in enumerate(lines)
                         if line.startswith("Available options in")][-1] + 1:]
        if wrong and (close := [o for o in options if o.lower() == wrong.group(2).lower()]
                      or [o for o in options if o.startswith(wrong.group(2))][:2]
                      or difflib.get_close_matches(wrong.group(2), options, n=2)):
            guess = f" Did you mean {' or '.join(f'{wrong.group(1)}={o}' for o in close)}?"
        elif wrong:  # no near option: most likely an option of one's own, not on the path
            guess = (f" An option of your own: put its file at <folder>/{wrong.group(1)}/"
                     f"{wrong.group(2)}.yaml and add the folder with "
                     "hydra.searchpath=[file://<folder>] (docs/configuration.md#adding-a-part).")
    message = re.sub(r":;", ":", "; ".join(lines)) + "." + guess
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).splitlines()[0] not in message:
        message += f" ({str(cause).splitlines()[0]})"
    return message


def _unparsed(override: str, why: str) -> str:
    """For a command-line word that is not an override (Hydra's grammar error, which named
    neither what was meant nor, for a sweep split by a space, the word): what to write."""
    reason = next((line.strip() for line in str(why).splitlines()
                   if line.strip() and not line.startswith(("See ", "Error parsing"))), "")
    if "=" not in override and override.endswith(".ckpt"):
        advice = f"a checkpoint is named with ckpt_path={override}"
    elif "=" not in override or (key := override.split("=", 1)[0]) != "".join(key.split()):
        advice = ("each override is key=value in one word, with no spaces around '=' "
                  "(data=mnist)")
    elif override.rstrip().endswith(","):
        advice = ("a sweep's values are one word, with no space after a comma "
                  "(model.objective.beta=0.5,1); quote a value that holds spaces "
                  "('model.encoder.net.hidden=[400, 400]')")
    else:
        advice = ("each override is key=value in one word; quote one whose value holds spaces "
                  "or brackets ('model.encoder.net.hidden=[400, 400]')")
    return (f"{override!r} is not an override: {advice}"
            f"{f' (Hydra: {reason})' if reason else ''}.")


def _nested_group_hint(parent: str, name: str) -> str | None:
    """For ``parent/name=...`` where the option chosen of ``parent`` has no ``name`` group in its
    defaults (``model/objective/kl_schedule=linear`` with ``model/objective=iwae``): the options
    of ``parent`` that have one. Hydra's own advice (+...) would add a key the class refuses."""
    from vae_lightning.groups import groups, option_text

    if parent not in groups():
        return None
    having = [option for option in groups()[parent].options
              if re.search(rf"^\s*- {re.escape(name)}:", option_text(parent, option), re.M)]
    if not having:
        return None
    return (f"{parent}/{name}=...: the {parent} chosen has no {name}; the options of {parent} "
            f"that take one: {', '.join(having)} (e.g. {parent}={having[0]} "
            f"{parent}/{name}=...).")


def _unknown_key(cause: BaseException | None, key: str, value: str) -> str | None:
    """For ``key=value`` where the config has no ``key`` (a typo: ``model.latnt=3``): the keys
    its parent node has, the closest first (another case first: ``K`` for ``k``), a node below
    that has it (``eval.k`` for vae-eval's ``k``), the options of the node's config group that
    have it (``model.objective.k``: ``model/objective=iwae``, ...), and how to add a key of
    one's own where the node's class takes one; None where OmegaConf's error does not name the
    node."""
    if "/" in key and "." not in key:  # a config group's path mistyped: model/objectiv=iwae
        return _unknown_group(key, value)
    parent = getattr(cause, "parent_node", None)
    if not OmegaConf.is_dict(parent):
        return None
    *path, name = key.split(".")
    inner = re.match(r"Key '(.+)' is not in struct", str(cause))
    if inner and inner.group(1) in path and inner.group(1) not in parent:
        # A key on the way that the node has not (model.encoder.nett.hidden): that key is the
        # unknown one, not a mapping merged into `key` (its advice, key.<key>=..., was wrong).
        path = path[:path.index(inner.group(1))]
        name = inner.group(1)
    elif inner and inner.group(1) != name:  # a mapping merged into the node `key`: a key it lacks
        keys = ", ".join(str(k) for k in parent if not str(k).startswith("_"))
        how = ("each search parameter is its own override in the sweeper's syntax, e.g. "
               "'model.objective.k=choice(1,5)'" if key == "hydra.sweeper.params"
               else f"set its keys one by one ({key}.<key>=...)")
        return (f"{key}={value}: {key} has no key {inner.group(1)} (a mapping given on the "
                f"command line is merged into the node, which takes only its own keys: {keys}); "
                f"{how}.")
    keys = [str(k) for k in parent if not str(k).startswith("_")]
    close = ([k for k in keys if k.lower() == name.lower()]
             or difflib.get_close_matches(name, keys, n=3, cutoff=0.6))
    node = ".".join(path)
    where = f"{node} has no key {name}" if path else f"there is no top-level key {name}"
    prefix = f"{node}." if path else ""
    # Unresolved: a sibling may interpolate what only a running Hydra app resolves
    # (trainer.default_root_dir: ${output_dir}: ${hydra:runtime.output_dir}), and vae-bench
    # composes its --override outside one.
    plain = OmegaConf.to_container(parent, resolve=False)
    nodes = {k: plain.get(k) for k in keys if k != "hydra"}
    below = _paths_to(name, nodes, prefix)[:3] or (  # BETA=4 too, where no key here is beta
        [] if close and close[0].lower() == name.lower() else
        _paths_to(name.lower(), nodes, prefix)[:3])
    owners = None
    for spelled in dict.fromkeys((name, name.lower())):  # as given, then in lower case
        if path and not below and spelled not in keys \
                and (owners := _options_with(node, spelled)):
            break
    if owners:
        group, options = owners
        guess = (f" {spelled} is a key of {group}={', '.join(options)}: choose one first "
                 f"({group}={options[0]} {prefix}{spelled}={value}).")
    else:
        guess = f" Did you mean {' or '.join(below or [prefix + k for k in close])}?" \
            if below or close else ""
    named = _named_arguments(parent)
    if named is not None and name in named:  # an argument the config leaves at its default
        return (f"{key}={value}: {where}, but {parent.get('_target_')} takes {name}: add it "
                f"with +{key}={value} (the config leaves it at the class's default).")
    extra = (f" (+{key}=... would add a new key)" if named is None
             else f" ({parent.get('_target_')} takes no other)")
    return (f"{key}={value}: {where}.{guess} {f'{node} has' if path else 'The top level has'} "
            f"{', '.join(keys)}{extra}.")


def _paths_to(name: str, node: Any, prefix: str = "", depth: int = 3) -> list[str]:
    """The dotted keys named ``name`` in the mapping ``node``, up to ``depth`` levels below it,
    the shallowest first (``beta=4`` at the top level: ``model.objective.beta``)."""
    if not isinstance(node, dict) or depth < 1:
        return []
    here = [f"{prefix}{k}.{name}" for k, v in node.items() if isinstance(v, dict) and name in v]
    deeper = [path for k, v in node.items() if isinstance(v, dict)
              for path in _paths_to(name, v, f"{prefix}{k}.", depth - 1)]
    return [*here, *(path for path in deeper if path not in here)]


def _unknown_group(key: str, value: str) -> str:
    """For ``group=value`` where no config group ``group`` exists (Hydra reads it as a key of
    that name, and the advice for a key, ``+key=...``, does not apply): the closest groups."""
    from vae_lightning.groups import groups

    known = groups()
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    if not close:
        return (f"{key}={value}: there is no config group {key}. The config groups are "
                f"{', '.join(known)}.")
    options = known[close[0]].options
    which = "" if value in options else f" ({close[0]} has {', '.join(options)})"
    return (f"{key}={value}: there is no config group {key}. Did you mean "
            f"{close[0]}={value}?{which}")


def _options_with(node: str, name: str) -> tuple[str, list[str]] | None:
    """The config group placed at ``node`` and those of its options that set a key ``name``."""
    from vae_lightning.groups import group_of, option_text

    found = group_of(node)
    if found is None:
        return None
    group, options = found[0], found[1].options
    having = [option for option in options
              if re.search(rf"^{re.escape(name)}:", option_text(group, option), re.M)]
    return (group, having) if having else None


def _named_arguments(parent: Any) -> set[str] | None:
    """The named arguments of ``parent``'s class (Adam's betas and eps, which its config leaves
    out: a key added with ``+`` sets them); None where any key added can be used: a node
    without a class, or one whose class takes keyword arguments beyond its named ones."""
    target = parent.get("_target_") if OmegaConf.is_dict(parent) else None
    if not isinstance(target, str):
        return None
    try:
        import hydra

        parameters = inspect.signature(hydra.utils.get_object(target)).parameters.values()
    except Exception:  # a target that cannot be resolved: Hydra will say so itself
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    # Those with a default only: one without (MLP's in_shape, an optimizer's params) is the
    # code's to give, and a config's value for it is refused (multiple values).
    return {p.name for p in parameters if p.default is not inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           inspect.Parameter.KEYWORD_ONLY)}


def _missing_plugin(option: str, extra: str) -> str:
    """A plugin's config option (``hydra/sweeper/optuna``) that Hydra cannot find: its extra,
    and the choice on the command line that asked for it (``hparams_search=optuna``)."""
    from vae_lightning.groups import groups, option_text

    group, name = option.rsplit("/", 1)
    chosen = f"{group}={name}"
    asked = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")
             and arg.split("=")[0].lstrip("+~") in groups()
             and re.search(rf"{group.removeprefix('hydra/')}: {name}\b",
                           option_text(arg.split("=")[0].lstrip("+~"), arg.split("=", 1)[1]))]
    via = f"{asked[0]} chooses {chosen}, which" if asked else chosen
    return (f"{via} needs a Hydra plugin that is not installed: "
            f'pip install "vae-lightning[{extra}]".')
