"""Argument checks shared by the subpackages: one notion of a bool and of an int, one message shape.

Every check names the argument and the value it received, and raises a `TypeError` for a value
of the wrong kind and a `ValueError` for a value of the right kind out of range, e.g.

>>> check_int("epochs", 3)
3
>>> check_bool("renorm", np.bool_(True))
True
>>> check_bool("renorm", "False")
Traceback (most recent call last):
...
TypeError: `renorm` must be a bool. Received: renorm='False'
"""

from __future__ import annotations

import numpy as np


def check_bool(name: str, value, *, allow_none: bool = False) -> bool | None:
    """`value` as a Python bool (NumPy bools included; `None` passes when allowed).

    A string such as ``"False"`` would read as True, and 0 / 1 hide a swapped argument, so
    anything but a bool is a `TypeError` naming `name`.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool{' or None' if allow_none else ''}. Received: {name}={value!r}")
    return bool(value)


def check_int(name: str, value, minimum: int | None = None, *, allow_none: bool = False,
              why: str = "") -> int | None:
    """`value` as a Python int >= `minimum` (NumPy ints included; `None` passes when allowed).

    `why`, when given, is added to the message in parentheses, e.g. ``check_int("runs", 1, 2,
    why="a standard deviation needs two runs")`` says "`runs` must be an int >= 2 (a standard
    deviation needs two runs). Received: runs=1".

    Raises:
        TypeError: a bool, a float (even 3.0), a string or any other non-integer.
        ValueError: an int below `minimum`.
    """
    if value is None and allow_none:
        return None
    expected = f"an int{'' if minimum is None else f' >= {minimum}'}{' or None' if allow_none else ''}"
    if why:
        expected += f" ({why})"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)
