"""lazy_neuron.checks: each typed check accepts what it says, and refuses the rest with the one
message shape `<name>=<value!r> is not valid; <what is valid>` (one line, a UserError)."""
import numpy as np
import pytest

from lazy_neuron import checks
from lazy_neuron.errors import UserError

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("call, message", [
    (lambda: checks.integer("k", 0, min=1), "k=0 is not valid; use an integer >= 1"),
    (lambda: checks.integer("k", 9, min=1, max=8), "k=9 is not valid; use an integer >= 1 and <= 8"),
    (lambda: checks.integer("k", 2.0), "k=2.0 is not valid; use an integer"),
    (lambda: checks.integer("k", True), "k=True is not valid; use an integer"),
    (lambda: checks.integer("k", "3"), "k='3' is not valid; use an integer"),
    (lambda: checks.integer("k", None), "k=None is not valid; use an integer"),
    (lambda: checks.integer("k", -1, min=0, none_ok=True),
     "k=-1 is not valid; use an integer >= 0 or None"),
    (lambda: checks.integer("steps", checks.MAX_STEPS + 1, max=checks.MAX_STEPS),
     f"steps={checks.MAX_STEPS + 1} is not valid; use an integer <= {checks.MAX_STEPS}"),
    (lambda: checks.number("x", NAN), "x=nan is not valid; use a finite number"),
    (lambda: checks.number("x", INF, min=0), "x=inf is not valid; use a finite number >= 0"),
    (lambda: checks.number("x", 0.0, min=0, min_exclusive=True),
     "x=0.0 is not valid; use a finite number > 0"),
    (lambda: checks.number("x", 1.5, min=0, max=1), "x=1.5 is not valid; use a finite number >= 0 and <= 1"),
    (lambda: checks.number("x", False), "x=False is not valid; use a finite number"),
    (lambda: checks.number("x", "1"), "x='1' is not valid; use a finite number"),
    (lambda: checks.number("x", None, none_ok=False), "x=None is not valid; use a finite number"),
    (lambda: checks.fraction("p", 1.0), "p=1.0 is not valid; use a finite number >= 0 and < 1"),
    (lambda: checks.fraction("p", -0.1), "p=-0.1 is not valid; use a finite number >= 0 and < 1"),
    (lambda: checks.fraction("p", 0, min_exclusive=True),
     "p=0 is not valid; use a finite number > 0 and < 1"),
    (lambda: checks.fraction("p", NAN, none_ok=True),
     "p=nan is not valid; use a finite number >= 0 and < 1 or None"),
    (lambda: checks.fraction("p", True), "p=True is not valid; use a finite number >= 0 and < 1"),
    (lambda: checks.boolean("b", 1), "b=1 is not valid; use true or false"),
    (lambda: checks.boolean("b", "true"), "b='true' is not valid; use true or false"),
    (lambda: checks.choice("c", "d", ("a", "b")), "c='d' is not valid; choose one of a, b"),
    (lambda: checks.choice("c", 2, (1, 3)), "c=2 is not valid; choose one of 1, 3"),
    (lambda: checks.string("s", ""), "s='' is not valid; use a non-empty string"),
    (lambda: checks.string("s", 3, none_ok=True), "s=3 is not valid; use a non-empty string or None"),
    (lambda: checks.string("s", None, empty_ok=True), "s=None is not valid; use a string"),
])
def test_refusals(call, message):
  with pytest.raises(UserError) as e:
    call()
  assert str(e.value) == message


def test_fail_keeps_one_line():
  e = checks.fail("x", "a\nb", "use\nsomething  else")
  assert isinstance(e, UserError) and "\n" not in str(e)
  assert str(e) == "x='a\\nb' is not valid; use something else"


def test_accepted_values_come_back_converted():
  assert checks.integer("k", np.int64(3), min=1) == 3 and type(checks.integer("k", np.int64(3))) is int
  assert checks.integer("k", None, none_ok=True) is None
  assert checks.number("x", 1, min=0, max=1) == 1.0 and type(checks.number("x", 1)) is float
  assert checks.number("x", np.float32(0.5), min=0, min_exclusive=True) == 0.5
  assert checks.number("x", None, none_ok=True) is None
  assert checks.fraction("p", 0) == 0.0 and checks.fraction("p", 0.999, min_exclusive=True) == 0.999
  assert checks.fraction("p", None, none_ok=True) is None
  assert checks.boolean("b", False) is False
  assert checks.choice("c", 3, (1, 3)) == 3
  assert checks.string("s", "", empty_ok=True) == ""
  assert checks.string("s", None, none_ok=True) is None
