"""How every rule's thresholds are read from its config section (`diagnostics.<section>`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class FromSettings:
    """Mixin of the rule dataclasses: `Rule.from_settings(section)` takes the section's keys that
    are the rule's fields; other keys (`mode`, `every_n_steps`: the callback's) and nulls (the
    default stands) are left out."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (settings or {}).items() if k in names and v is not None})
