# A collection run's note (a re-read's progress), apart from its error; and the quarantined NaN or
# infinite epoch times that 0011 classified as not_finite, reclassified with today's rules (bad_time).

from django.db import migrations, models

from collection.reasons import classify_reason


def reclassify_not_finite_times(apps, schema_editor):
    """Only rows kept as not_finite whose reason names a timestamp: few, and bounded by that filter."""
    rejected = apps.get_model("collection", "RejectedSample")
    db = schema_editor.connection.alias
    rows = rejected.objects.using(db).filter(kind="not_finite", reason__icontains="timestamp")
    for pk, reason, raw_time in rows.values_list("pk", "reason", "raw_time").iterator(chunk_size=2000):
        kind = classify_reason(reason, whole_line=not raw_time)
        if kind != "not_finite":
            rejected.objects.using(db).filter(pk=pk).update(kind=kind)


class Migration(migrations.Migration):
    dependencies = [
        ("collection", "0013_source_config_snapshot"),
    ]

    operations = [
        migrations.AddField(
            model_name="collectionrun",
            name="note",
            field=models.TextField(
                blank=True, help_text="what the run did besides collecting, such as how far a re-read has come"
            ),
        ),
        migrations.AlterField(
            model_name="collectionrun",
            name="error",
            field=models.TextField(blank=True, help_text="why it failed, or (a warning run) what looks wrong"),
        ),
        migrations.RunPython(reclassify_not_finite_times, migrations.RunPython.noop),
    ]
