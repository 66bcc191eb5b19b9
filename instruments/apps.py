from django.apps import AppConfig


class InstrumentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "instruments"
    verbose_name = "Instrument registry"

    def ready(self) -> None:
        from instruments import signals  # noqa: F401 -- connects the receivers
