"""Channels' units in one spelling ("deg C", "Deg C" and "°C" become "degC"; "W m-2" becomes "W/m^2"), as
``Channel.clean()`` now stores them, so that existing channels of one quantity share one plot axis.

Units that the check now refuses (a lone "C", read as the coulomb) are left as they are: a migration cannot
ask what was meant, and the admin says so the next time the channel is saved."""

from django.db import migrations, models

from instruments.units import check_units


def canonical_units(apps, schema_editor):
    Channel = apps.get_model("instruments", "Channel")
    for channel in Channel.objects.exclude(units="").only("pk", "units").iterator():
        try:
            units = check_units(channel.units)
        except ValueError:
            continue
        if units != channel.units:
            Channel.objects.filter(pk=channel.pk).update(units=units)


class Migration(migrations.Migration):
    dependencies = [
        ("instruments", "0007_datasource_target_set_by"),
    ]

    operations = [
        migrations.AlterField(
            model_name="channel",
            name="units",
            field=models.CharField(
                blank=True,
                help_text='For example "degC", "W/m^2", "V"; stored in one spelling ("deg C" and "°C" become "degC").',
                max_length=64,
            ),
        ),
        # Not reversed: the old spellings meant the same units.
        migrations.RunPython(canonical_units, migrations.RunPython.noop),
    ]
