"""Which correction methods a run uses when a preset and the command line disagree.

A preset chooses its methods (``override /correction: [maxt, npc]``) and may set their parameters in its body
(``correction.npc.n_permutations: 500``). Hydra merges that body whatever the command line chooses, so
``+experiment=palm_contrasts correction=[maxt]`` would compose an ``npc`` entry as well, and npc would run although
the user asked for max-T alone. The command line's choice is what the user means: methods it leaves out are dropped
(with a line in the log saying so), and the recorded config.yaml holds only the methods that ran.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("runner")


def chosen_corrections(overrides: list[str]) -> list[str] | None:
    """The methods a command line chooses with ``correction=[a,b]`` or ``correction=a`` (None: it does not choose).

    A sweep (``correction=fdr,tfce``) is one job's value at a time: Hydra hands each job its single choice.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = None
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group != "correction" or override.package is not None or override.is_delete():
            continue
        value = override.value()
        if isinstance(value, dict) or override.is_sweep_override():
            continue  # a mapping sets keys; a sweep is split into jobs before this matters
        chosen = [str(v) for v in value] if isinstance(value, list) else ([] if value is None else [str(value)])
    return chosen


def drop_unchosen_corrections(config: Any, overrides: list[str], warn: bool = True) -> list[str]:
    """Remove from the composed ``config`` the correction entries the command line did not choose; their names.

    ``config`` is the composed DictConfig (or a plain dict); entries come only from a preset's body then. ``warn``:
    say so in the log (the run does; the check of the command line before it does not).
    """
    from omegaconf import DictConfig, open_dict

    chosen = chosen_corrections(overrides)
    correction = config.get("correction") if hasattr(config, "get") else None
    if chosen is None or not hasattr(correction, "keys"):
        return []
    dropped = [str(name) for name in list(correction.keys()) if str(name) not in chosen]
    if not dropped:
        return []
    if isinstance(config, DictConfig):
        with open_dict(config):
            for name in dropped:
                del config.correction[name]
    else:
        for name in dropped:
            del correction[name]
    if warn:
        log.warning("correction %s: the preset's settings are not used, since the command line chooses correction=[%s]",
                    ", ".join(dropped), ",".join(chosen))
    return dropped
