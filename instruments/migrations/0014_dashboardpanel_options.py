from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('instruments', '0013_opcua_sources'),
    ]

    operations = [
        migrations.AddField(
            model_name='dashboardpanel',
            name='options',
            field=models.JSONField(blank=True, default=dict, help_text="The plot's view, y axes and expression curves."),
        ),
    ]
