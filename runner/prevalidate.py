"""Check a command line before Hydra runs it: unknown keys, bad values and bad config options are refused with one
line and exit code 2, before any data is read or any run directory is made.

Hydra composes the config from the group choices (``data=vbm``, ``correction=[fdr]``, ``+experiment=...``); the
key=value overrides are then applied here, to a copy that accepts any key, so that
:func:`runner.config.build_settings` -- the one validation pass -- sees them all and names a mistyped key with the
closest valid one. Every value of a sweep is checked the same way (one at a time, with the other sweeps at their
first value), so a sweep never starts with a job that is bound to be refused.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from runner.config import RunSettings, build_settings
from runner.errors import RunnerError
from runner.selection import drop_unchosen_corrections

# Flags of Hydra's command line that show something instead of running an analysis.
_NO_ANALYSIS = ("help", "hydra_help", "version", "cfg", "info", "shell_completion", "experimental_rerun",
                "config_path")


def command_line_parser() -> argparse.ArgumentParser:
    """Hydra's command-line flags (as ``python -m runner --hydra-help`` lists them), parsed without Hydra's internals.

    Only what prevalidation needs is interpreted (which flags mean "do not run", the config name and folder); every
    flag is declared so that its value is never mistaken for an override. Hydra parses the command line again itself.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag, short in (("--help", "-h"), ("--hydra-help", None), ("--version", None), ("--resolve", None),
                        ("--run", "-r"), ("--multirun", "-m"), ("--shell-completion", "-sc")):
        parser.add_argument(*[f for f in (flag, short) if f], action="store_true")
    for flag, short in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"),
                        ("--config-dir", "-cd"), ("--experimental-rerun", None)):
        parser.add_argument(*[f for f in (flag, short) if f])
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser


def prevalidate(argv: list[str], config_dir: str, config_name: str = "config") -> RunSettings | None:
    """Compose and validate the command line (every value of a sweep); RunnerError with one line when it cannot
    make a valid analysis. Returns the settings of the first job.

    Returns None for invocations that do not run an analysis (--help, --cfg, --info, shell completion) and for
    command lines Hydra itself will refuse with its usage message (an unknown flag).
    """
    try:
        args, unknown = command_line_parser().parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):  # a flag without its value: Hydra prints its usage message
        return None
    modes = [flag for flag, given in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                      ("--info", args.info), ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        raise RunnerError(f"{' and '.join(modes)} cannot be given together; give one of them")
    if unknown or any(getattr(args, flag) for flag in _NO_ANALYSIS):
        return None
    name = args.config_name or config_name
    for override in parse(list(args.overrides)):
        if override.key_or_group == "experiment" and not override.is_delete():
            check_preset_names(override)
    composed: dict[Any, Any] = {}  # sweeps of values share one composition
    first, *others = sweep_variants(list(args.overrides))
    settings = settings_for(config_dir, name, first, args.config_dir, composed)
    for overrides in others:
        settings_for(config_dir, name, overrides, args.config_dir, composed)
    if not args.multirun:
        run_dir = composed.get("run_dir")
        if run_dir:
            check_run_dir(Path(run_dir), log_name="run.log")
    return settings  # the first job's


def show_job_config(argv: list[str], config_dir: str, config_name: str = "config") -> str | None:
    """``--cfg job`` of one job whose command line chooses its methods (``correction=[...]``): the job's config as
    YAML with the preset's unchosen methods dropped, as the run drops them (Hydra's own printing would still show
    them). None for every other command line, which Hydra shows itself."""
    from omegaconf import OmegaConf

    from runner.selection import chosen_corrections

    try:
        args, unknown = command_line_parser().parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    overrides = list(args.overrides)
    if (args.cfg != "job" or unknown or args.resolve or args.package or args.multirun or args.help
            or args.hydra_help or args.info or chosen_corrections(overrides) is None
            or any(o.is_sweep_override() for o in parse(overrides))):
        return None
    config, _ = compose(config_dir, args.config_name or config_name, overrides, args.config_dir, values=True)
    job = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    job.pop("hydra", None)
    drop_unchosen_corrections(job, overrides, warn=False)
    return OmegaConf.to_yaml(job)


def parse(overrides: list[str]) -> list[Any]:
    """Hydra's parse of the overrides (public grammar); a syntax error becomes one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    check_shell_splitting(overrides)
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise RunnerError(f"cannot parse the command line: {str(error).splitlines()[0]}"
                          + _unquoted_value_hint(overrides)) from None


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """Single-valued command lines covering every value of every sweep (``a=1,2 b=x,y`` -> a=1 b=x, a=2 b=x,
    a=1 b=y): linear in the number of values, not the size of the grid."""
    parsed = parse(overrides)
    choices: list[list[str]] = []
    for override, text in zip(parsed, overrides):
        values: list[str] = []
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # interval sweeps (optimisers) have no list of values; each job checks its own
                values = []
        key = text.split("=", 1)[0]
        choices.append([f"{key}={v}" for v in values] or [text])
    first = [c[0] for c in choices]
    variants = [first]
    for i, options in enumerate(choices):
        variants += [first[:i] + [option] + first[i + 1:] for option in options[1:]]
    return variants


def settings_for(config_dir: str, config_name: str, overrides: list[str], user_config_dir: str | None = None,
                 composed: dict[Any, Any] | None = None) -> RunSettings:
    """Compose the group choices with Hydra, apply the key=value overrides, and build the validated settings.

    ``composed`` (optional) keeps compositions for later calls, keyed by the overrides that went to Hydra.
    """
    from omegaconf import OmegaConf

    parsed = parse(overrides)
    composed = {} if composed is None else composed
    groups = composed.get("groups")
    key = tuple(t for t, o in zip(overrides, parsed) if _is_for_hydra(o, groups)) if groups else None
    if key is not None and key in composed:
        config = composed[key]
    else:
        config, groups = compose(config_dir, config_name, overrides, user_config_dir)
        composed["groups"] = groups
        composed[tuple(t for t, o in zip(overrides, parsed) if _is_for_hydra(o, groups))] = config
    values = [o for o in parsed if not _is_for_hydra(o, groups)]
    composed.setdefault("run_dir", _select(config, "hydra.run.dir"))
    plain = OmegaConf.create(OmegaConf.to_container(config, resolve=False))  # accepts any key
    plain.pop("hydra", None)
    absent = [o for o in values if not _apply(plain, o)]
    drop_unchosen_corrections(plain, overrides, warn=False)  # as the run will (runner.selection)
    settings = build_settings(plain)  # the one validation pass: unknown keys, types, ranges
    if absent:  # a known key that this composition does not have: Hydra would refuse to set it
        raise RunnerError(_absent_message(absent[0].key_or_group, plain))
    return settings


def _is_for_hydra(override: Any, groups: set[str]) -> bool:
    """Group choices and Hydra's own settings go to Hydra's composition; the rest are key=value overrides."""
    key = override.key_or_group
    if key == "hydra" or key.startswith("hydra.") or "/" in key or override.package is not None:
        return True
    if isinstance(override.value(), dict):
        return False  # as Hydra: a mapping always sets keys, even on a group's name
    return key in groups


def compose(config_dir: str, config_name: str, overrides: list[str],
            user_config_dir: str | None = None, values: bool = False) -> tuple[Any, set[str]]:
    """Compose the config as Hydra would from the group choices and Hydra settings among ``overrides`` (the
    key=value overrides are left out unless ``values``); returns it and the names of the top-level config groups."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.hydra_setup import register

    register()
    extra = []
    if user_config_dir:
        user = Path(user_config_dir).expanduser().resolve()
        if not user.is_dir():
            raise RunnerError(f"--config-dir {user_config_dir} is not a folder")
        extra = [f"hydra.searchpath=[file://{user}]"]
    GlobalHydra.instance().clear()
    try:
        if config_dir.startswith("pkg://"):
            from hydra import initialize_config_module

            context = initialize_config_module(config_module=config_dir[len("pkg://"):], version_base="1.3")
        else:
            context = initialize_config_dir(config_dir=config_dir, version_base="1.3")
        with context:
            groups = set(GlobalHydra.instance().config_loader().list_groups(""))
            chosen = [text for text, o in zip(overrides, parse(overrides)) if values or _is_for_hydra(o, groups)]
            return hydra_compose(config_name=config_name, overrides=chosen + extra, return_hydra_config=True), groups
    except RunnerError:
        raise
    except Exception as error:  # Hydra's composition errors (missing option, bad override) have many types
        raise RunnerError(_composition_message(error)) from None
    finally:
        GlobalHydra.instance().clear()


_ABSENT = object()


def _apply(config: Any, override: Any) -> bool:
    """Apply one key=value override as Hydra would; False when a plain override names a key the config lacks."""
    from omegaconf import OmegaConf

    key, value = override.key_or_group, override.value()
    present = OmegaConf.select(config, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT
    if override.is_delete():
        if not present:
            raise RunnerError(f"cannot delete {key}: the config has no such key")
        parent, _, leaf = key.rpartition(".")
        del (OmegaConf.select(config, parent) if parent else config)[leaf]
        return True
    if override.is_add() and present and OmegaConf.select(config, key) is not None \
            and not isinstance(value, (dict, list)):
        raise RunnerError(f"{key} is already set: write {override.input_line[1:]} to change it")
    OmegaConf.update(config, key, value, merge=True, force_add=True)
    return present or override.is_add() or override.is_force_add()


def _absent_message(key: str, config: Any) -> str:
    parts = key.split(".")
    if parts[0] == "correction" and len(parts) > 1:
        chosen = [m for m in (config.get("correction") or {}) if m != parts[1]]
        return (f"{key}: {parts[1]} is not among the chosen corrections; choose it too: "
                f"correction=[{','.join(chosen + [parts[1]])}]")
    from omegaconf import OmegaConf

    from runner.errors import closest

    parent, _, leaf = key.rpartition(".")
    siblings = OmegaConf.select(config, parent) if parent else config
    near = closest(leaf, [k for k in siblings.keys() if k != leaf]) if hasattr(siblings, "keys") else []
    hint = f" — did you mean {' or '.join(f'{parent}.{n}' if parent else n for n in near)}?" if near else ""
    return f"{key} is not in the composed config{hint} (a new key is added with a plus: +{key}=...)"


def _composition_message(error: Exception) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = lines[0]
    if "Available options" in text:
        listing = text.split("Available options", 1)[1].split("Config search path", 1)[0]
        options = [line.strip(" :") for line in listing.splitlines()
                   if line.strip(" :") and not line.strip().startswith("in '")]
        first += " (available: " + ", ".join(o.strip() for o in options[:20]) + ")"
    return first


_OVERRIDE_WORD = re.compile(r"^(\+{1,2}|~)?[A-Za-z_][\w./@:-]*(=|$)")  # key=value, +key=value, ~key


def check_shell_splitting(words: list[str]) -> None:
    """Refuse a ``key=value`` that the shell cut at its spaces (``design.formula=age + C(sex)`` arrives as the words
    ``design.formula=age``, ``+``, ``C(sex)``), saying how to quote it.

    Every override starts with a key and ``=`` (or is a deletion ``~key``), so words that do not, after a
    ``key=value`` word, are the rest of that value.
    """
    for index, word in enumerate(words):
        if index == 0 or _is_override(word) or "=" not in words[index - 1]:
            continue
        end = index
        while end < len(words) and not _is_override(words[end]):
            end += 1
        pasted = " ".join(words[index - 1:end])
        raise RunnerError(f"the shell split '{pasted}' into {end - index + 1} words at its spaces; quote the whole "
                          f"override: {_quoted(pasted)}")


def _is_override(word: str) -> bool:
    match = _OVERRIDE_WORD.match(word)
    return bool(match) and (match.group(2) == "=" or word.startswith("~"))


def _quoted(override: str) -> str:
    """How to type an override holding spaces or parentheses in bash: double quotes around it for the shell,
    single quotes around the value for Hydra (``"design.formula='age + C(sex)'"``)."""
    key, _, value = override.partition("=")
    value = value.strip()
    if value[:1] in "'\"" and value[-1:] == value[:1] and len(value) > 1:
        value = value[1:-1]
    inner = f"'{value}'" if "'" not in value else '"' + value.replace('"', '\\"') + '"'
    text = f"{key}={inner}"
    return '"' + text.replace('"', '\\"') + '"' if "'" in inner else f"'{text}'"


def _unquoted_value_hint(overrides: list[str]) -> str:
    """For a value Hydra cannot parse because it holds spaces or parentheses unquoted: how to quote it."""
    for text in overrides:
        key, sep, value = text.partition("=")
        if sep and value and value[0] not in "'\"[{" and re.search(r"[\s()]", value):
            return f"; quote the value for Hydra and the whole override for the shell: {_quoted(text)}"
    return ""


PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def check_preset_names(override: Any) -> None:
    """``+experiment=`` takes the name of a preset in the config search path, never a path (``../../etc/x``)."""
    values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
    for value in values:
        if not isinstance(value, str) or not PRESET_NAME.fullmatch(value):
            raise RunnerError(f"experiment={value!r} is not a preset name: give the name of a file in conf/experiment "
                              "without folder or extension (e.g. +experiment=one_sample); put your own presets in "
                              "a folder passed with --config-dir")


def _select(config: Any, key: str) -> str | None:
    """A value of the composed Hydra config, or None when it cannot be resolved here."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(config, key)
    except Exception:  # an interpolation only Hydra's runtime can resolve
        return None
    return None if value is None else str(value)


def check_run_dir(run_dir: Path, log_name: str = "run.log") -> None:
    """Refuse, before Hydra makes it, a run directory that is a file, lies under a file, or cannot be written.

    Writability is probed with an anonymous temporary file (no name appears in the folder) in the run directory,
    or in its nearest existing parent when it does not exist yet.
    """
    run_dir = Path(os.path.abspath(run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise RunnerError(f"hydra.run.dir {run_dir} is a file, not a folder; choose another hydra.run.dir")
    existing = run_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise RunnerError(f"hydra.run.dir {run_dir} cannot be made: {existing} is a file, not a folder; choose "
                          "another hydra.run.dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "is not writable" if existing == run_dir else f"cannot be made: {existing} is not writable"
        raise RunnerError(f"hydra.run.dir {run_dir} {where} ({error.strerror or error}); choose a folder you can "
                          "write to") from None
    if (run_dir / log_name).is_dir():
        raise RunnerError(f"hydra.run.dir {run_dir} holds a folder named {log_name}, where the runner writes its "
                          "log; move it away or choose another hydra.run.dir")
