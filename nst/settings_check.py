"""Type and range checks of the settings dataclasses (`ExperimentConfig`,
`PipelineConfig`, `FilterConfig`), the types taken from their field annotations.

absl flags arrive typed, but gin passes any Python literal through, so without a check
`ExperimentConfig.unlabel_ratio = 'two'` would fail deep in the trainer as a TypeError
that names neither the setting nor the gin line. `check` names the setting, its value,
where it was set (when the caller knows) and what is allowed:

    ExperimentConfig.unlabel_ratio = 'two' (set in gin) must be a number, not a str.
    ExperimentConfig.train_batch_size = 0 (set by --train_batch_size) must be >= 1.

Types: `bool` takes only True/False (1 is no bool setting, True no int one); `int` any
integer but a bool; `float` any real number but a bool (an int is fine); `str` a string;
`Optional[T]` also None; `Tuple[...]` / `List[...]` a tuple or list of such items.
"""

import dataclasses
import numbers
import typing
from typing import Any, Dict, Mapping, Optional, Tuple


class SettingError(ValueError):
    """A setting of the wrong type or outside its range."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a number setting: `low` .. `high` (each inclusive unless
    `*_open`, each unbounded if None), plus the sentinel values in `also` (e.g. -1 for
    "off")."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    also: Tuple = ()

    def __contains__(self, value) -> bool:
        if value in self.also:
            return True
        if self.low is not None and not (value > self.low if self.low_open
                                         else value >= self.low):
            return False
        if self.high is not None and not (value < self.high if self.high_open
                                          else value <= self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.low_open else '['}{self.low}, "
                    f"{self.high}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            text = "any number"
        return " or ".join([repr(v) for v in self.also] + [text])

    def flag_bounds(self) -> Dict[str, Any]:
        """The same range as absl's `lower_bound` / `upper_bound` (inclusive ones only)."""
        if self.low_open or self.high_open or self.also:
            raise ValueError(f"absl flag bounds cannot say {self}")
        return {key: value for key, value in (("lower_bound", self.low),
                                              ("upper_bound", self.high))
                if value is not None}


@dataclasses.dataclass(frozen=True)
class OneOf:
    """The allowed values of a setting that is one of a few names, e.g. 'local' | 'beam'
    (used in the RANGES tables like a `Range`)."""

    values: Tuple

    def __contains__(self, value) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_PLAIN = {bool: ("True or False", lambda v: isinstance(v, bool)),
          int: ("an integer", _is_int),
          float: ("a number", _is_number),
          str: ("a string", lambda v: isinstance(v, str))}


def expected(annotation, value) -> Optional[str]:
    """None if `value` fits the type `annotation`, else what it should be ("an
    integer or None")."""
    if annotation is Any:
        return None
    if annotation in _PLAIN:
        description, fits = _PLAIN[annotation]
        return None if fits(value) else description
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if all(expected(option, value) for option in options):
            descriptions = [expected(option, value) for option in options]
            if len(options) < len(args):
                descriptions.append("None")
            return " or ".join(descriptions)
        return None
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return f"a {origin.__name__}"
        items = args[:1] if origin is list or (len(args) == 2 and args[1] is Ellipsis) \
            else args
        if origin is tuple and items is args and args and len(value) != len(args):
            return f"a tuple of {len(args)} items"
        for index, item in enumerate(value):
            item_type = items[0] if len(items) == 1 else items[index]
            problem = expected(item_type, item)
            if problem:
                return f"a {origin.__name__} whose items are each {problem}"
        return None
    if isinstance(annotation, type):
        return None if isinstance(value, annotation) else f"a {annotation.__name__}"
    return None  # an annotation this checker does not know: not checked


def check_values(cls, values: Mapping[str, Any], ranges: Mapping[str, Range] = None, *,
                 name: Optional[str] = None, sources: Mapping[str, str] = None,
                 where: str = ""):
    """Checks `values` ({field: value}) against the annotations of the dataclass `cls`
    and the `ranges` ({field: Range}).

    Args:
      name: how settings are named in errors (default: the class name), e.g.
        "ExperimentConfig" -> "ExperimentConfig.train_steps".
      sources: {field: where its value came from}, e.g. "set by --train_steps",
        "set in gin"; fields without one are named without.
      where: a prefix of errors, e.g. "student 2: ".

    Raises:
      SettingError: the first value of the wrong type or out of its range.
    """
    hints = typing.get_type_hints(cls)
    ranges, sources = ranges or {}, sources or {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        source = f" ({sources[field.name]})" if sources.get(field.name) else ""
        setting = f"{where}{name or cls.__name__}.{field.name} = {value!r}{source}"
        problem = expected(hints[field.name], value)
        if problem:
            kind = type(value).__name__
            article = "an" if kind[0] in "aeiou" else "a"
            raise SettingError(f"{setting} must be {problem}, not {article} {kind}.")
        allowed = ranges.get(field.name)
        if allowed is not None and value is not None and value not in allowed:
            raise SettingError(f"{setting} must be {allowed}.")


def check(config, ranges: Mapping[str, Range] = None, **kwargs):
    """`check_values` of every field of the dataclass instance `config`."""
    check_values(type(config), {f.name: getattr(config, f.name)
                                for f in dataclasses.fields(config)}, ranges, **kwargs)
