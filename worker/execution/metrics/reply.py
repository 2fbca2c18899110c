"""What a judge provider gives back, whichever provider it was."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class JudgeReply:
    text: str
    #: The model that answered, as the provider names it.
    model: str
    #: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``; None when the provider reported none.
    usage: Mapping[str, int] | None


def token_count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
