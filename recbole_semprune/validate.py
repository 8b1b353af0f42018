"""The checks of a config value, shared by every reader of settings (models, data, trainer).

Each takes the key (named in the error, so a one-line message says what to fix), the value
and the bounds, and returns the value as the type it must have; a bad value raises
ValueError. ``hint`` is appended to the message (what the value means, how to switch off).
"""

import numbers

__all__ = ["integer", "number", "boolean", "choice"]


def _fail(key, value, need, hint):
    raise ValueError(f"{key}={value!r} must be {need}" + (f" {hint}" if hint else ""))


def integer(key, value, low=None, high=None, hint=""):
    """``value`` as an int in ``[low, high]`` (numpy ints too; a bool is not an int here)."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or (low is not None and value < low) or (high is not None and value > high):
        bounds = {(False, False): "in [{}, {}]", (False, True): ">= {}",
                  (True, False): "<= {1}", (True, True): ""}[low is None, high is None]
        _fail(key, value, f"an int {bounds.format(low, high)}".rstrip(), hint)
    return int(value)


def number(key, value, low=None, hint="", strict=False):
    """``value`` as a float ``>= low`` (``> low`` when ``strict``)."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not real or (low is not None and not (value > low if strict else value >= low)):
        bound = "" if low is None else f" {'>' if strict else '>='} {low}"
        _fail(key, value, "a number" + bound, hint)
    return float(value)


def boolean(key, value):
    """``value`` as a bool: True or False (YAML's and the command line's spellings)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}")
    return value


def choice(key, value, options, hint=""):
    """``value``, one of ``options``."""
    if value not in options:
        _fail(key, value, f"one of {', '.join(options)}", hint)
    return value
