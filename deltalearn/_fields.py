"""Reading a dataclass back from a dict without losing a misspelt key."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["checked_fields"]


def checked_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``d`` once every key is a field of the dataclass ``cls``; raises ``ValueError``
    naming the unknown keys and the allowed ones. A dropped key would leave its field at the
    default without a word: a run or a variant that is not what its file says."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; allowed: {sorted(names)}")
    return dict(d)
