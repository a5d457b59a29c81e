"""The checks a config key's value can be given: each returns None when the value is fine,
else what is allowed ("must be ...")."""
import math
import re

__all__ = [
    "at_least",
    "between",
    "each_item",
    "each_of",
    "finite_number",
    "greater_than",
    "image_sides",
    "increasing_iterations",
    "is_number",
    "one_of",
    "regular_expressions",
]


def is_number(value):
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low, integer=False):
    """A check: a finite number (an integer if ``integer``) >= ``low``."""
    kind = "an integer" if integer else "a number"

    def check(value):
        if not is_number(value) or (integer and not isinstance(value, int)):
            return f"must be {kind} >= {low}"
        return None if value >= low else f"must be >= {low}"

    return check


def greater_than(low):
    """A check: a finite number > ``low``."""
    return lambda value: None if is_number(value) and value > low else f"must be a number > {low}"


def between(low, high, *, high_open=False, low_open=False):
    """A check: a finite number in [low, high] (``low_open`` / ``high_open`` exclude an end)."""
    text = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(value):
        if not is_number(value):
            return f"must be a number in {text}"
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"must be in {text}"

    return check


def one_of(choices):
    """A check: a value among ``choices`` (a tuple)."""
    return lambda value: None if value in choices else f"must be one of {', '.join(map(str, choices))}"


def each_item(single, non_empty=False):
    """A check: every item of a list or tuple passes the check ``single``; with ``non_empty``
    the value must also be a list or tuple of at least one item."""

    def check(value):
        if non_empty and (not isinstance(value, (list, tuple)) or not value):
            return "must be a non-empty list"
        for item in value:
            problem = single(item)
            if problem:
                return f"item {item!r} {problem}"
        return None

    return check


def each_of(choices):
    """A check: a list or tuple whose every item is among ``choices`` (as :func:`one_of`)."""
    return each_item(one_of(choices))


def image_sides(low):
    """A check: an image side in pixels, an integer >= ``low``, or a non-empty list / tuple of
    them (detectron2's ``INPUT.MIN_SIZE_TRAIN`` is either)."""
    single = at_least(low, integer=True)

    def check(value):
        if not isinstance(value, (list, tuple)):
            return single(value)
        if not value:
            return f"must list at least one image side (integers >= {low})"
        for item in value:
            if single(item):
                return f"item {item!r} must be an integer >= {low} (an image side in pixels)"
        return None

    return check


def increasing_iterations(value):
    """A check of ``SOLVER.STEPS``: a list / tuple of strictly increasing integers >= 1."""
    if not isinstance(value, (list, tuple)) or not all(is_number(v) and isinstance(v, int) and v >= 1 for v in value):
        return "must be a list of iterations (integers >= 1), e.g. (1000, 1150) or ()"
    if any(b <= a for a, b in zip(value, value[1:])):
        return "must be strictly increasing"
    return None


def regular_expressions(value):
    """A check: a non-empty list of regular expressions."""
    if not isinstance(value, (list, tuple)) or not value:
        return "must be a non-empty list of regular expressions"
    for pattern in value:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            return f"item {pattern!r} is not a regular expression ({e})"
    return None


def finite_number(value):
    """A check: any finite number."""
    return None if is_number(value) else "must be a finite number"
