from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts and access"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which Django loads only once every app is.
        from accounts import api, signals  # noqa: F401  (receivers; the OpenAPI description of Bearer tokens)
        from accounts.roles import sync_roles_after_migrate

        post_migrate.connect(sync_roles_after_migrate, dispatch_uid="accounts.sync_roles")
