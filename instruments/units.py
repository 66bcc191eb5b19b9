"""Units: read as the loggers that write them mean them, stored in one canonical spelling.

Loggers and their headers spell one unit many ways (``deg C``, ``Deg C``, ``°C``, ``degC``; ``W/m2``,
``W m-2``, ``W/m^2``; ``%RH``; ``kWhr``). ``check_units`` reads each with pint after a few rewrites of
those habits, and answers pint's compact spelling (``degC``, ``W/m^2``, ``%``, ``kWh``), so one quantity
is stored one way and gets one axis on the plot page (which groups channels by their units text).

Some spellings pint reads literally as something nobody monitoring an instrument means: ``C`` alone is the
coulomb, ``F`` the farad, ``mb`` the millibarn, and an angle times something (``deg coulomb``) is rarely
meant. Those are refused with a "did you mean", so a reading is never stored under a unit it is not in.
"""

from __future__ import annotations

import re
from functools import cache
from typing import cast

import pint


@cache
def registry() -> pint.UnitRegistry:
    return pint.UnitRegistry()


# Whole spellings read as another (case-insensitive, blanks ignored).
_TEMPERATURE = re.compile(r"^(?:°|º|deg(?:ree)?s?\.?)[\s_]*([CFK])$", re.IGNORECASE)
_PERCENT = re.compile(r"^(?:%\s*(?:RH|rel\.?\s*hum\.?)|RH\s*%|percent\s*RH)$", re.IGNORECASE)
ALIASES = {"%": "percent", "deg": "degree", "degrees": "degree", "ohms": "ohm"}
# "Whr", "kWhr", "MWhr": watt-hours.
_WATT_HOURS = re.compile(r"(?<![A-Za-z])([kMG]?)Whr?s?(?![A-Za-z])")
# An exponent written without "^": m2, m-2, s-1 (tried only when the spelling is not a unit as it is).
_BARE_EXPONENT = re.compile(r"(?<=[A-Za-zµ])(-?\d+)(?![\d.])")

# Single symbols pint reads literally that loggers mean otherwise: what pint reads, and the likely meaning.
SURPRISING = {
    "C": ("coulomb (electric charge)", "degC"),
    "F": ("farad (capacitance)", "degF"),
    "mb": ("millibarn (an area)", "mbar"),
    "MB": ("megabarn (an area)", "mbar"),
    "b": ("barn (an area)", "bar"),
}
# Factors that, multiplied by an angle, are a misread temperature.
_TEMPERATURE_LETTERS = {"coulomb": "degC", "farad": "degF", "kelvin": "K"}
_ANGLES = {"degree", "radian", "arcminute", "arcsecond", "turn", "gradian"}


def _rewrite(text: str) -> str:
    temperature = _TEMPERATURE.match(text)
    if temperature:
        letter = temperature.group(1).upper()
        return "K" if letter == "K" else f"deg{letter}"
    if _PERCENT.match(text):
        return "%"
    text = _WATT_HOURS.sub(lambda m: f"{m.group(1)}Wh", text)
    return ALIASES.get(text.lower(), text)


def _parse(text: str) -> pint.Unit:
    try:
        return registry().parse_units(ALIASES.get(text, text))
    except (
        Exception
    ) as first:  # undefined (m2), or a parser error (m-2): with the exponents spelt out, or the first error
        rewritten = _BARE_EXPONENT.sub(r"^\1", text)
        if rewritten == text:
            raise
        try:
            return registry().parse_units(rewritten)
        except Exception:
            raise first from None


def _surprise(spelling: str, text: str, parsed: pint.Unit) -> str | None:
    """Why ``parsed`` is not what ``spelling`` most likely means, with a "did you mean"; None if it is."""
    if text in SURPRISING:
        meaning, suggestion = SURPRISING[text]
        return (
            f"{spelling!r} reads as the {meaning}; did you mean {suggestion!r}? "
            "(write the unit's full name if you do mean it)"
        )
    # A unit's powers are real numbers (pint types them as any number).
    factors: dict[str, float] = {str(name): float(cast(float, power)) for name, power in parsed._units.items()}
    angle = [name for name, power in factors.items() if name in _ANGLES and power > 0]
    others = [name for name, power in factors.items() if name not in _ANGLES and power > 0]
    if angle and others:
        reading = " times ".join(f"{name}^{power:g}" if power != 1 else name for name, power in factors.items())
        found = next((_TEMPERATURE_LETTERS[name] for name in others if name in _TEMPERATURE_LETTERS), None)
        hint = f"did you mean {found!r}?" if found else "write a product with '*' if you mean one"
        return f"{spelling!r} reads as {reading}, an angle times another unit; {hint}"
    return None


def canonical(parsed: pint.Unit) -> str:
    """pint's compact spelling, with ``^`` for powers and ``degC``/``degF`` (as typed, and ASCII)."""
    text = f"{parsed:~C}".replace("**", "^")
    return {"°C": "degC", "°F": "degF"}.get(text, text)


def check_units(units: str) -> str:
    """The canonical spelling of ``units`` ("" for none); raises ValueError with a readable reason."""
    spelling = " ".join(units.split())
    if not spelling:
        return ""
    text = _rewrite(spelling)
    try:
        parsed = _parse(text)
    except (pint.UndefinedUnitError, pint.DefinitionSyntaxError) as exc:
        raise ValueError(f"{units!r} is not a unit DAQBroker knows ({exc})") from None
    except Exception as exc:  # pint raises assorted parser errors (AttributeError, TypeError, TokenError)
        raise ValueError(f"{units!r} is not a unit expression ({type(exc).__name__})") from None
    problem = _surprise(spelling, text, parsed)
    if problem:
        raise ValueError(problem)
    return canonical(parsed)


# Units a reading may be shown in (the plot's "show in"): those of the same dimension as the channel's.
DISPLAY_UNITS = [
    "degC",
    "K",
    "degF",
    "Pa",
    "hPa",
    "kPa",
    "MPa",
    "mbar",
    "bar",
    "psi",
    "torr",
    "atm",
    "m",
    "cm",
    "mm",
    "um",
    "km",
    "in",
    "ft",
    "m/s",
    "km/h",
    "kn",
    "mph",
    "W",
    "kW",
    "MW",
    "Wh",
    "kWh",
    "MWh",
    "J",
    "kJ",
    "MJ",
    "V",
    "mV",
    "kV",
    "A",
    "mA",
    "s",
    "min",
    "h",
    "g",
    "kg",
    "t",
    "%",
    "ppm",
    "W/m^2",
    "Hz",
    "kHz",
    "L",
    "m^3",
    "L/min",
    "m^3/h",
]


@cache
def display_choices(units: str) -> tuple[str, ...]:
    """The units of DISPLAY_UNITS that ``units`` converts to (itself first); () when it names no unit."""
    try:
        unit = _parse(_rewrite(units)) if units else None
    except Exception:
        return ()
    if unit is None:
        return ()
    own = canonical(unit)
    same = [u for u in DISPLAY_UNITS if _parse(_rewrite(u)).dimensionality == unit.dimensionality]
    return tuple([own, *[u for u in same if u != own]]) if same else ()


def converter(from_units: str, to_units: str):
    """A function turning values in ``from_units`` into ``to_units`` (offsets included: degC to degF);
    raises ValueError, saying why, when either is not a unit or they measure different things."""
    if not from_units:
        raise ValueError("the channel has no units to convert from")
    source = _parse(_rewrite(check_units(from_units)))
    target = _parse(_rewrite(check_units(to_units)))
    if source.dimensionality != target.dimensionality:
        raise ValueError(f"{from_units!r} cannot be shown in {to_units!r}: they measure different things")
    quantity = registry().Quantity

    def convert(values):
        return quantity(values, source).to(target).magnitude

    return convert
