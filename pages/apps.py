from django.apps import AppConfig


class PagesConfig(AppConfig):
    """The collaborators' pages that show readings: home, instrument page, plot, dashboards, alarms, sharing.

    The top layer: it may import collection, the registry and accounts; none of them imports it."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "pages"
    verbose_name = "Pages for collaborators"
