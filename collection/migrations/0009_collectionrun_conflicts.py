from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("collection", "0008_run_warning_status"),
    ]

    operations = [
        migrations.AlterField(
            model_name="collectionrun",
            name="duplicates",
            field=models.PositiveIntegerField(default=0, help_text="readings whose very value was already stored"),
        ),
        migrations.AddField(
            model_name="collectionrun",
            name="conflicts",
            field=models.PositiveIntegerField(
                default=0,
                help_text="readings whose time already held another value: that one stays, these are quarantined",
            ),
        ),
    ]
