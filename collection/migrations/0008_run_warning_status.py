# A collection run that read lines and stored nothing is recorded as "warning" (issue 15, point 1).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("collection", "0007_rejected_sample_sender"),
    ]

    operations = [
        migrations.AlterField(
            model_name="collectionrun",
            name="status",
            field=models.CharField(
                choices=[
                    ("running", "Running"),
                    ("success", "Succeeded"),
                    ("warning", "Warning"),
                    ("failed", "Failed"),
                ],
                default="running",
                max_length=16,
            ),
        ),
    ]
