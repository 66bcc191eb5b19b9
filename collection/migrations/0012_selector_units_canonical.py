"""The units that alarm rules and spike checks select channels by, in the one spelling channels' units now
have (instruments 0008: "deg C", "Deg C" and "°C" became "degC"), so that a rule saved as "deg C" still
selects the channels it selected before. ``ChannelSelection.clean()`` stores the same spelling from now on.

Units the check now refuses are left as they are (a migration cannot ask what was meant): such a rule
selects what it selected before, and the admin says so the next time it is saved."""

from django.db import migrations

from instruments.units import check_units


def canonical_selector_units(apps, schema_editor):
    for name in ("AlarmRule", "SpikeCheck"):
        model = apps.get_model("collection", name)
        for pk, units in model.objects.exclude(units="").values_list("pk", "units").iterator():
            try:
                canonical = check_units(units)
            except ValueError:
                continue
            if canonical != units:
                model.objects.filter(pk=pk).update(units=canonical)


class Migration(migrations.Migration):
    dependencies = [
        ("collection", "0011_rejection_kind"),
        ("instruments", "0008_channel_units_canonical"),
    ]

    # Not reversed: the old spellings meant the same units.
    operations = [migrations.RunPython(canonical_selector_units, migrations.RunPython.noop)]
