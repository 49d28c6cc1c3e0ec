"""The one validation layer: typed checks of user input, one message shape.

Every check takes the user-facing `name` of the value (`total_steps`, `model.topk`, `--k`, ...) and
raises `UserError("<name>=<value> is not valid; <what is valid>")`, which every command prints as
one line `lazy-neuron: error: ...` and exits 2. Each returns the value (converted where said), so a
check reads as an assignment: `k = checks.integer("--k", args.k, min=1)`.

Booleans are never accepted where a number is asked for (`True` is an int in Python).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

from lazy_neuron.errors import UserError

# Largest value a step counter or a step-count key may hold: the train state's step is int32.
MAX_STEPS = 2**31 - 1


def fail(name: str, value: Any, valid: str) -> UserError:
  """The one message shape; `raise checks.fail(...)` where no typed check below fits."""
  return UserError(f"{name}={value!r} is not valid; {valid}")


def _bounds(min: Optional[float], max: Optional[float], min_exclusive: bool = False) -> str:
  lo = None if min is None else (f"> {min}" if min_exclusive else f">= {min}")
  hi = None if max is None else f"<= {max}"
  return " and ".join(b for b in (lo, hi) if b)


def integer(name: str, value: Any, *, min: Optional[int] = None, max: Optional[int] = None,
            none_ok: bool = False) -> Optional[int]:
  """An int (numpy ints too; not bool, not float) in [min, max]; None only if `none_ok`."""
  if value is None and none_ok:
    return None
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if ok:
    value = int(value)
    ok = (min is None or value >= min) and (max is None or value <= max)
  if not ok:
    bounds = _bounds(min, max)
    raise fail(name, value, f"use an integer{' ' + bounds if bounds else ''}"
                            f"{' or None' if none_ok else ''}")
  return value


def number(name: str, value: Any, *, min: Optional[float] = None, max: Optional[float] = None,
           min_exclusive: bool = False, none_ok: bool = False) -> Optional[float]:
  """A finite real number (int or float, not bool) in its bounds, returned as float."""
  if value is None and none_ok:
    return None
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  if ok:
    v = float(value)
    ok = ((min is None or (v > min if min_exclusive else v >= min)) and
          (max is None or v <= max))
  if not ok:
    bounds = _bounds(min, max, min_exclusive)
    raise fail(name, value, f"use a finite number{' ' + bounds if bounds else ''}"
                            f"{' or None' if none_ok else ''}")
  return float(value)


def fraction(name: str, value: Any, *, min_exclusive: bool = False,
             none_ok: bool = False) -> Optional[float]:
  """A finite number in [0, 1) ((0, 1) if `min_exclusive`): a probability or decay rate that must
  stay below 1 (`number` has inclusive upper bounds only)."""
  if value is None and none_ok:
    return None
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  if ok:
    v = float(value)
    ok = (v > 0 if min_exclusive else v >= 0) and v < 1
  if not ok:
    raise fail(name, value, f"use a finite number {'> 0' if min_exclusive else '>= 0'} and < 1"
                            f"{' or None' if none_ok else ''}")
  return float(value)


def boolean(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise fail(name, value, "use true or false")
  return value


def choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
  choices = list(choices)
  if value not in choices:
    raise fail(name, value, f"choose one of {', '.join(str(c) for c in choices)}")
  return value


def string(name: str, value: Any, *, none_ok: bool = False, empty_ok: bool = False) -> Optional[str]:
  if value is None and none_ok:
    return None
  if not isinstance(value, str) or (not empty_ok and not value):
    raise fail(name, value, f"use a {'' if empty_ok else 'non-empty '}string"
                            f"{' or None' if none_ok else ''}")
  return value
