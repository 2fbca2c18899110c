"""Projected output sizes of the string filters and methods that can multiply their input.

Each check runs before the filter or method does, from the arguments alone, so a template such as
``('x' * 999999) | replace('x', 'y' * 8000)`` is refused instead of building gigabytes and then failing the
rendered-size cap. Estimates are upper bounds (never smaller than the real output).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2.sandbox import SecurityError

# printf-style conversion: optional (key), flags, width, precision, conversion.
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
# str.format replacement field; its spec may nest one level of {} (a width given as an argument).
_FORMAT_FIELD = re.compile(r"\{\{|\}\}|\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")
_DIGITS = re.compile(r"\d+")


def refuse_over(projected: int, limit: int, what: str) -> None:
    if projected > limit:
        raise SecurityError(f"{what} result too large ({projected} characters projected, limit {limit})")


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


def _widest(args: Iterable[Any], kwargs: Mapping[str, Any]) -> int:
    values = [*args, *kwargs.values()]
    for value in list(values):
        if isinstance(value, Mapping):
            values.extend(value.values())
    return max((_text_len(value) for value in values), default=0)


def printf_size(template: str, args: Iterable[Any], kwargs: Mapping[str, Any], star: int) -> int:
    """``template % args``: every conversion may print the widest argument, padded to its width."""
    widest = _widest(args, kwargs)
    total = len(template)
    for width, precision, _conversion in _PRINTF_SPEC.findall(template):
        pad = max(star if item == "*" else int(item or 0) for item in (width, precision))
        total += max(pad, widest) + 2
    return total


def format_size(template: str, args: Iterable[Any], kwargs: Mapping[str, Any], star: int) -> int:
    """``template.format(...)``: every field may print the widest argument, padded to the widest number in
    its spec (or ``star`` for a nested ``{}`` width)."""
    widest = _widest(args, kwargs)
    total = len(template)
    for field in _FORMAT_FIELD.findall(template):
        if field in ("{{", "}}"):
            continue
        spec = field.partition(":")[2]
        pad = max((int(number) for number in _DIGITS.findall(spec)), default=0)
        if "{" in spec:
            pad = max(pad, star)
        total += max(pad, widest) + 2
    return total


def replace_size(text: str, old: str, new: str, count: int | None = None) -> int:
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


def join_size(items: list[Any], separator: str) -> int:
    return sum(_text_len(item) for item in items) + len(separator) * max(0, len(items) - 1)


def indent_size(text: str, width: int | str, first: bool = False, blank: bool = False) -> int:
    pad = len(width) if isinstance(width, str) else max(0, int(width))
    return len(text) + (text.count("\n") + 1) * pad


def wordwrap_size(text: str, width: int, wrapstring: str) -> int:
    # textwrap puts at least one chunk on a line and splits a long word into pieces of ``width``.
    lines = len(text.split()) + len(text) // max(1, width) + text.count("\n") + 1
    return len(text) + lines * len(wrapstring)


def expandtabs_size(text: str, tabsize: int = 8) -> int:
    return len(text) + text.count("\t") * max(0, tabsize)


def urlize_size(text: str, target: str | None, rel: str | None) -> int:
    # Each word may become <a href="word" rel=".." target="..">word</a>.
    words = len(text.split())
    return 3 * len(text) + words * (len(target or "") + len(rel or "") + 64)


def _bound(function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    arguments = inspect.signature(function).bind(*args, **kwargs)
    arguments.apply_defaults()
    return arguments.arguments


def check_filter(function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                 limit: int, star: int) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
    """Refuses a filter call whose projected output is over ``limit``; returns the arguments to call it with
    (``join`` gets its iterable as a list, which it builds anyway, so it can be measured)."""
    name = function.__name__
    if name not in _FILTER_SIZES:
        return args, kwargs
    try:
        bound = _bound(function, args, kwargs)
    except TypeError:
        return args, kwargs  # the filter itself reports the wrong arguments
    if name == "do_join":
        items = list(bound["value"])
        args = (args[0], items, *args[2:])
        bound["value"] = items
    refuse_over(_FILTER_SIZES[name](bound, star), limit, name.removeprefix("do_"))
    return args, kwargs


def _environment_newline(bound: Mapping[str, Any]) -> str:
    return bound["wrapstring"] if bound["wrapstring"] is not None else bound["environment"].newline_sequence


_FILTER_SIZES: dict[str, Callable[[Mapping[str, Any], int], int]] = {
    "do_replace": lambda b, _star: replace_size(str(b["s"]), str(b["old"]), str(b["new"]), b["count"]),
    "do_indent": lambda b, _star: indent_size(str(b["s"]), b["width"]),
    "do_wordwrap": lambda b, _star: wordwrap_size(str(b["s"]), int(b["width"]), _environment_newline(b)),
    "do_center": lambda b, _star: max(_text_len(b["value"]), int(b["width"])),
    "do_format": lambda b, star: printf_size(str(b["value"]), b["args"], b["kwargs"], star),
    "do_join": lambda b, _star: join_size(b["value"], str(b["d"])),
    "do_urlize": lambda b, _star: urlize_size(str(b["value"]), b["target"], b["rel"]),
}


def check_str_method(receiver: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                     limit: int) -> tuple[Any, ...]:
    """Refuses the str methods whose output can outgrow their input many times over; returns the arguments
    to call with (``join`` gets a generator as a list, so it can be measured)."""
    if name not in ("replace", "join", "expandtabs"):
        return args
    if name == "join" and len(args) == 1 and not kwargs and not isinstance(args[0], str | list | tuple):
        args = (list(args[0]),)
    try:
        bound = inspect.signature(getattr(str, name)).bind(receiver, *args, **kwargs).arguments
    except (TypeError, ValueError):
        return args
    if name == "replace" and isinstance(bound.get("old"), str) and isinstance(bound.get("new"), str):
        projected = replace_size(receiver, bound["old"], bound["new"], bound.get("count"))
    elif name == "join" and isinstance(bound.get("iterable"), str | list | tuple):
        projected = join_size(list(bound["iterable"]), receiver)
    elif name == "expandtabs" and isinstance(bound.get("tabsize", 8), int):
        projected = expandtabs_size(receiver, bound.get("tabsize", 8))
    else:
        return args
    refuse_over(projected, limit, name)
    return args
