"""Create the Administrators, Operators and Viewers groups with their model permissions (accounts.roles)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from accounts.roles import ADMINISTRATORS, OPERATORS, VIEWERS, sync_roles


def create_roles(apps, schema_editor):
    using = schema_editor.connection.alias
    # Permissions are normally created after all migrations (post_migrate); the roles need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=using)
        app_config.models_module = None
    sync_roles(apps, using=using)


def remove_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=[ADMINISTRATORS, OPERATORS, VIEWERS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("instruments", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
