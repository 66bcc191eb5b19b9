"""Unit validation with pint, so "degC", "W/m^2" and "V" are accepted and "bananas/parsec²" is refused."""

from functools import cache

import pint


@cache
def registry() -> pint.UnitRegistry:
    return pint.UnitRegistry()


# Units instrument people write that pint spells differently.
ALIASES = {"%": "percent", "°C": "degC", "°F": "degF", "ºC": "degC", "deg": "degree"}


def check_units(units: str) -> str:
    """The canonical pint spelling of ``units``; raises ValueError with a readable reason."""
    text = units.strip()
    if not text:
        return ""
    try:
        parsed = registry().parse_units(ALIASES.get(text, text))
    except (pint.UndefinedUnitError, pint.DefinitionSyntaxError) as exc:
        raise ValueError(f"{units!r} is not a unit DAQBroker knows ({exc})") from None
    except Exception as exc:  # pint raises assorted parser errors (AttributeError, TypeError, TokenError)
        raise ValueError(f"{units!r} is not a unit expression ({type(exc).__name__})") from None
    return str(parsed)
