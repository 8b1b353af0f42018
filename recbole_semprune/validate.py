"""The checks of a config value, shared by every reader of settings (models, data, trainer).

Each takes the key (named in the error, so a one-line message says what to fix), the value
and the bounds, and returns the value as the type it must have; a bad value raises
ValueError. ``hint`` is appended to the message (what the value means, how to switch off).
"""

__all__ = ["integer", "number", "boolean", "choice"]


def _fail(key, value, need, hint):
    raise ValueError(f"{key}={value!r} must be {need}" + (f" {hint}" if hint else ""))


def integer(key, value, low=None, high=None, hint=""):
    """``value`` as an int in ``[low, high]`` (a bool is not an int here)."""
    inside = (low is None or value >= low) if isinstance(value, int) else False
    inside = inside and (high is None or value <= high)
    if isinstance(value, bool) or not isinstance(value, int) or not inside:
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        _fail(key, value, f"an int {bounds}", hint)
    return value


def number(key, value, low=None, hint=""):
    """``value`` as a float ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        low is not None and not value >= low
    ):
        _fail(key, value, f"a number >= {low}", hint)
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
