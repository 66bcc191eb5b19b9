"""Units as loggers write them: read as what they mean, stored in one spelling (so one quantity gets one
axis on the plot page, which groups channels by their units text), and refused with a "did you mean" when
pint would read them as something else (``C`` is the coulomb)."""

from __future__ import annotations

import importlib
import re

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.urls import reverse

from collection.alarms.models import AlarmRule
from instruments.models import Channel
from instruments.tests.factories import make_channel, make_instrument
from instruments.units import check_units

SPELLINGS = [
    # temperature, as logger headers write it
    ("degC", "degC"),
    ("deg C", "degC"),
    ("Deg C", "degC"),
    ("DEG C", "degC"),
    ("deg.C", "degC"),
    ("degrees C", "degC"),
    ("°C", "degC"),
    ("° C", "degC"),
    ("ºC", "degC"),
    ("degree_Celsius", "degC"),
    ("deg F", "degF"),
    ("°F", "degF"),
    ("deg K", "K"),
    ("K", "K"),
    # irradiance and other powers
    ("W/m^2", "W/m^2"),
    ("W/m2", "W/m^2"),
    ("W m-2", "W/m^2"),
    ("W m^-2", "W/m^2"),
    ("W/m²", "W/m^2"),
    ("umol m-2 s-1", "µmol/m^2/s"),
    ("µmol/m²/s", "µmol/m^2/s"),
    ("m s-1", "m/s"),
    ("m/s", "m/s"),
    ("kg/m3", "kg/m^3"),
    # humidity, pressure, energy
    ("%RH", "%"),
    ("% RH", "%"),
    ("RH%", "%"),
    ("%", "%"),
    ("mbar", "mbar"),
    ("hPa", "hPa"),
    ("kWhr", "kWh"),
    ("kWh", "kWh"),
    ("Whr", "Wh"),
    # as they were
    ("deg", "deg"),
    ("V", "V"),
    ("mV", "mV"),
    ("ppm", "ppm"),
    ("mm/h", "mm/h"),
    ("  ", ""),
]


@pytest.mark.parametrize(("spelling", "stored"), SPELLINGS)
def test_a_spelling_is_read_as_what_it_means(spelling, stored):
    assert check_units(spelling) == stored
    assert check_units(stored) == stored  # the canonical spelling is its own


@pytest.mark.parametrize(
    ("spelling", "reason"),
    [
        ("C", "'C' reads as the coulomb (electric charge); did you mean 'degC'?"),
        ("F", "'F' reads as the farad (capacitance); did you mean 'degF'?"),
        ("mb", "'mb' reads as the millibarn (an area); did you mean 'mbar'?"),
        (
            "deg coulomb",
            "'deg coulomb' reads as degree times coulomb, an angle times another unit; did you mean 'degC'?",
        ),
        ("degree*C", "'degree*C' reads as degree times coulomb, an angle times another unit; did you mean 'degC'?"),
        ("deg m", "'deg m' reads as degree times meter, an angle times another unit; write a product with '*'"),
        ("bananas", "'bananas' is not a unit DAQBroker knows"),
        ("H2O", "'H2O' is not a unit DAQBroker knows"),
        ("m-", "'m-' is not a unit expression"),
    ],
)
def test_a_surprising_or_unknown_unit_is_refused(spelling, reason):
    with pytest.raises(ValueError) as refused:
        check_units(spelling)
    assert str(refused.value).startswith(reason), str(refused.value)


@pytest.mark.django_db
@pytest.mark.parametrize(("spelling", "stored"), [("deg C", "degC"), ("W m-2", "W/m^2"), ("%RH", "%")])
def test_the_api_stores_the_canonical_spelling(world, owner, spelling, stored):
    body = {"instrument": "alpha-station", "name": "New", "slug": "new", "units": spelling}
    response = owner.client.post("/api/v1/channels/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["units"] == stored
    assert Channel.objects.get(instrument=world.alpha, slug="new").units == stored


@pytest.mark.django_db
def test_the_api_refuses_a_lone_c_with_a_did_you_mean(world, owner):
    body = {"instrument": "alpha-station", "name": "New", "slug": "new", "units": "C"}
    response = owner.client.post("/api/v1/channels/", body, format="json")
    assert response.status_code == 400
    assert "did you mean 'degC'?" in response.json()["units"][0]
    assert not Channel.objects.filter(slug="new").exists()


@pytest.mark.django_db
def test_the_admin_stores_the_canonical_spelling(admin_client):
    instrument = make_instrument()
    form = {"instrument": instrument.pk, "name": "Air", "slug": "air", "kind": "numeric", "units": "Deg C"}
    form |= {"missing_values": "[]", "description": "", "source_field": "", "expression": ""}
    response = admin_client.post(reverse("admin:instruments_channel_add"), form)
    assert response.status_code == 302, re.findall(r'class="errorlist[^>]*>(.*?)</ul>', response.content.decode())
    assert Channel.objects.get(instrument=instrument, slug="air").units == "degC"


@pytest.mark.django_db
def test_two_spellings_of_one_quantity_share_one_plot_axis(admin_client):
    instrument = make_instrument()
    for slug, spelling in (("t1", "deg C"), ("t2", "°C"), ("t3", "degC")):
        channel = Channel(instrument=instrument, name=slug, slug=slug, units=spelling)
        channel.full_clean()
        channel.save()
    page = admin_client.get(reverse("collection:plot"), {"c": [f"{instrument.slug}/t1"]})
    assert page.status_code == 200
    units = set(re.findall(r'data-name="t\d" data-units="([^"]*)"', page.content.decode()))
    assert units == {"degC"}  # the page draws one axis per distinct units text


@pytest.mark.django_db
def test_an_alarm_rule_selects_channels_by_any_spelling_of_their_units(tmp_path):
    channel = make_channel(make_instrument(), units="degC")
    rule = AlarmRule(name="hot", units="deg C", threshold=30)
    rule.full_clean()
    assert rule.units == "degC"
    rule.save()
    assert rule.selected_channels() == [channel]
    with pytest.raises(ValidationError) as refused:
        AlarmRule(name="hot", units="C", threshold=30).full_clean()
    assert "did you mean 'degC'?" in refused.value.message_dict["units"][0]


@pytest.mark.django_db
def test_the_migration_rewrites_existing_spellings_and_keeps_what_it_cannot_read():
    instrument = make_instrument()
    rows = {"a": "deg C", "b": "W m-2", "c": "C", "d": "", "e": "degC"}
    for slug, units in rows.items():
        Channel.objects.create(instrument=instrument, name=slug, slug=slug, units=units)  # as an older release saved
    migration = importlib.import_module("instruments.migrations.0008_channel_units_canonical")
    migration.canonical_units(apps, None)
    stored = dict(Channel.objects.filter(instrument=instrument).values_list("slug", "units"))
    assert stored == {"a": "degC", "b": "W/m^2", "c": "C", "d": "", "e": "degC"}


# --- shown in another unit (the plot's "Y axes" menu) -----------------------------------------------


def test_display_choices_are_the_units_of_the_same_kind_its_own_first():
    from instruments.units import display_choices

    assert display_choices("degC") == ("degC", "K", "degF")
    assert display_choices("°C") == ("degC", "K", "degF")
    assert display_choices("hPa")[:1] == ("hPa",) and {"Pa", "mbar", "bar", "psi"} <= set(display_choices("hPa"))
    assert display_choices("") == () and display_choices("not a unit") == ()


def test_conversions_follow_pint_offsets_included():
    import numpy as np

    from instruments.units import converter

    assert converter("degC", "degF")(np.array([-40.0, 0.0, 100.0])) == pytest.approx([-40.0, 32.0, 212.0])
    assert converter("degC", "K")(np.array([0.0])) == pytest.approx([273.15])
    assert converter("hPa", "mbar")(np.array([1013.25])) == pytest.approx([1013.25])
    assert converter("Pa", "hPa")(np.array([101325.0])) == pytest.approx([1013.25])


@pytest.mark.parametrize(
    ("source", "target", "problem"),
    [("degC", "hPa", "measure different things"), ("", "K", "no units"), ("degC", "C", "coulomb")],
)
def test_a_conversion_that_cannot_be_made_says_why(source, target, problem):
    from instruments.units import converter

    with pytest.raises(ValueError, match=problem):
        converter(source, target)
