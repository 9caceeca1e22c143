"""Check a command line before Hydra runs it: unknown keys, bad values and bad config options are refused with one
line and exit code 2, before any data is read or any run directory is made.

The command line is composed once with Hydra's compose API (for a sweep, with the first value of every swept key;
each job validates its own values again when it starts) and converted into the typed settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runner.config import (DataConfig, DesignConfig, ExecutorConfig, RunSettings, build_settings,
                           correction_schemas)
from runner.errors import RunnerError, closest

GROUP_SCHEMAS: dict[str, Any] = {"data": DataConfig, "design": DesignConfig, "executor": ExecutorConfig}
GROUPS = ("data", "design", "correction", "executor", "experiment", "hydra")
_FIELDS = lambda cls: [f for f in cls.__dataclass_fields__]  # noqa: E731


def check_key(key: str) -> None:
    """Refuse an override of a key that no schema has, naming the closest valid key."""
    parts = key.split(".")
    head = parts[0]
    if head in ("hydra", "contrasts", "experiment") or key.startswith("hydra/"):
        return
    top = _FIELDS(RunSettings) + ["experiment"]
    if head not in top:
        _unknown(key, top)
    if len(parts) == 1:
        return
    if head in GROUP_SCHEMAS:
        fields = _FIELDS(GROUP_SCHEMAS[head])
        if parts[1] not in fields:
            _unknown(key, [f"{head}.{f}" for f in fields])
    elif head == "correction":
        method = parts[1]
        known = correction_schemas()
        if method not in known:
            _unknown(key, [f"correction.{m}" for m in known], what="correction")
        if len(parts) > 2:
            fields = _FIELDS(known[method])
            if parts[2] not in fields:
                _unknown(key, [f"correction.{method}.{f}" for f in fields])
    else:
        raise RunnerError(f"{head} is a single setting; {key} is not a key")


def _unknown(key: str, valid: list[str], what: str = "key") -> None:
    near = closest(key, valid)
    hint = f"did you mean {' or '.join(near)}?" if near else "allowed: " + ", ".join(valid)
    raise RunnerError(f"unknown {what} {key} — {hint}")


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


def first_of_sweeps(overrides: list[str]) -> tuple[list[str], list[Any]]:
    """Parse overrides; replace every sweep (a=1,2) by its first value. Returns the list and the parsed overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    check_shell_splitting(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise RunnerError(f"cannot parse the command line: {str(error).splitlines()[0]}"
                          + _unquoted_value_hint(overrides)) from None
    single = []
    for override, text in zip(parsed, overrides):
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            key = text.split("=", 1)[0]
            single.append(f"{key}={values[0]}" if values else text)
        else:
            single.append(text)
    return single, parsed


def prevalidate(argv: list[str], config_dir: str, config_name: str = "config") -> RunSettings | None:
    """Compose and validate the command line; RunnerError with one line when it cannot make a valid analysis.

    Returns None for invocations that do not run an analysis (--help, --cfg, --info, shell completion).
    """
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return None  # argparse already printed its usage message; let Hydra handle it the same way
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun:
        return None
    overrides, parsed = first_of_sweeps(list(args.overrides))
    for override in parsed:
        if override.is_delete():
            continue
        if not override.is_add() and not override.is_force_add():
            check_key(override.key_or_group)
    config = compose(config_dir, args.config_name or config_name, overrides, args.config_dir)
    return build_settings(config)


def compose(config_dir: str, config_name: str, overrides: list[str], user_config_dir: str | None = None) -> Any:
    """Compose the config as Hydra would for the command line; composition errors become one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf.errors import OmegaConfBaseException

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
            return hydra_compose(config_name=config_name, overrides=overrides + extra)
    except Exception as error:  # Hydra's composition errors (missing option, bad override) have many types
        typed = _omegaconf_cause(error, OmegaConfBaseException)
        if typed is not None:
            raise RunnerError(_type_message(typed)) from None
        raise RunnerError(_composition_message(error)) from None
    finally:
        GlobalHydra.instance().clear()


def _omegaconf_cause(error: BaseException, kind: type) -> Any:
    """The OmegaConf validation error behind a Hydra composition error, if any."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, kind):
            return error
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
        seen += 1
    return None


def _type_message(error: Any) -> str:
    """``data.smoothing_fwhm must be a number, got 'abc'`` from an OmegaConf validation error."""
    key = getattr(error, "full_key", None) or "a value"
    value = getattr(error, "value", None)
    expected = getattr(error, "ref_type", None) or getattr(error, "object_type", None)
    text = str(getattr(error, "msg", None) or error).splitlines()[0]
    names = {"float": "a number", "int": "an integer", "integer": "an integer", "bool": "true or false",
             "str": "text", "string": "text"}
    if "valid bool" in text:
        return f"{key} must be true or false, got {value!r}"
    match = re.search(r"to (\w+)", text) or re.search(r"type '(\w+)'", str(expected))
    wanted = names.get(match.group(1).lower(), match.group(1)) if match else None
    if wanted and value is not None:
        return f"{key} must be {wanted}, got {value!r}"
    return f"{key}: {text}"


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
