"""Gold labels in one place: which field names carry them, and the one check that none leaked.

Gold answers are for evaluation (and for runs marked ``supervised: true``) only. Every label-free
path (prompt records handed to generation, the columns handed to a reward or a judge, the scored
records a data builder reads, the rows a trainer gets) calls :func:`check_no_gold` on what it
receives. A name is gold-named when, lower-cased, it is one of :data:`GOLD_FIELDS` or starts with
``gold`` (``Gold``, ``gold_answer``, ``GOLD_LABEL``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from selfimprove.errors import LabelLeakError

# Names a gold field may have (compared lower-cased; any name starting with "gold" counts too).
GOLD_FIELDS = frozenset({"answer", "gold", "label", "solution", "ground_truth", "target"})


def is_gold_name(name: Any) -> bool:
    """Whether a field or column name is gold-named (case-insensitive; ``gold*`` included)."""
    low = str(name).lower()
    return low in GOLD_FIELDS or low.startswith("gold")


def gold_names_in(names: Iterable[Any]) -> list[str]:
    """The gold-named names among ``names``, sorted."""
    return sorted(str(n) for n in names if is_gold_name(n))


def find_gold_keys(obj: Any, path: str = "") -> list[str]:
    """Key paths of every gold-named field anywhere inside ``obj`` (dicts and lists, nested)."""
    found: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else str(k)
            if is_gold_name(k):
                found.append(sub)
            found.extend(find_gold_keys(v, sub))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found.extend(find_gold_keys(v, f"{path}[{i}]"))
    return found


def check_no_gold(names: Iterable[Any], where: str) -> None:
    """Raise :class:`LabelLeakError` naming ``where`` if any of ``names`` is gold-named."""
    leaked = gold_names_in(names)
    if leaked:
        raise LabelLeakError(
            f"{where} is label-free but received gold-named field(s) {leaked}; gold labels may only "
            "reach evaluation and supervised rewards (in runs marked `supervised: true`). Drop or "
            f"rename these fields (gold-named: {', '.join(sorted(GOLD_FIELDS))}, or any name starting "
            "with 'gold')"
        )


def check_record_no_gold(record: Mapping[str, Any], where: str) -> None:
    """:func:`check_no_gold` on a record's fields and on the fields of its ``meta`` (prompt, rollout, scored)."""
    check_no_gold(record.keys(), where)
    meta = record.get("meta")
    if isinstance(meta, Mapping):
        check_no_gold(meta.keys(), f"{where} meta")


def supervised_reward(factory: Any) -> Any:
    """Mark a reward (or the factory that builds it) as reading gold labels: ``supervised: true`` runs only."""
    factory.supervised = True
    return factory


def reads_gold(reward: Any) -> bool:
    """Whether a reward (or reward factory) is marked with :func:`supervised_reward`."""
    return bool(getattr(reward, "supervised", False))
