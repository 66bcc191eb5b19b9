from django.apps import AppConfig


class CollectionConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "collection"
    verbose_name = "Data collection"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which Django loads only once every app is.
        from collection.services.ingest import samples_ingested
        from collection.services.rollups import on_samples_ingested

        # Rollup tiers follow every ingest (a Celery task per batch, never per reading).
        samples_ingested.connect(on_samples_ingested, dispatch_uid="collection.rollups")

        from collection.alarms.tasks import on_samples_ingested as evaluate_after_ingest

        # Spike checks, derived channels and alarm rules follow every ingest (a Celery task per batch).
        samples_ingested.connect(evaluate_after_ingest, dispatch_uid="collection.alarms")
