"""Documentation-only serializers for the ingest endpoint (the body is decoded without DRF for speed)."""

from rest_framework import serializers


class ReadingRow(serializers.Serializer):
    channel = serializers.CharField(help_text="instrument-slug/channel-slug, or the channel id")
    t = serializers.CharField(help_text="ISO 8601 time (naive = UTC) or seconds/ms/µs since 1970")
    v = serializers.JSONField(help_text="a number, or text for text channels")


class ChannelColumns(serializers.Serializer):
    t = serializers.ListField(child=serializers.JSONField(), help_text="times, as in the row form")
    v = serializers.ListField(child=serializers.JSONField(), help_text="values, one per time")


class IngestBody(serializers.Serializer):
    batch_id = serializers.CharField(
        required=False, max_length=100, help_text="your id for this upload: a retry with the same id is recognised"
    )
    time_unit = serializers.ChoiceField(
        choices=["s", "ms", "us"], required=False, help_text="unit of numeric times (default: by magnitude)"
    )
    readings = ReadingRow(many=True, required=False, help_text="row form (or send the list itself as the body)")
    channels = serializers.DictField(
        child=ChannelColumns(), required=False, help_text="columnar form: channel -> {t: [...], v: [...]}"
    )


class Rejected(serializers.Serializer):
    index = serializers.IntegerField(allow_null=True, help_text="position of the reading in the body")
    channel = serializers.JSONField(help_text="the channel as you named it")
    reason = serializers.CharField()


class IngestResult(serializers.Serializer):
    batch_id = serializers.CharField(allow_null=True)
    received = serializers.IntegerField(help_text="readings in the body")
    accepted = serializers.IntegerField(help_text="readings newly stored")
    duplicates = serializers.IntegerField(
        help_text="readings whose very value is already stored (or repeated in the body)"
    )
    conflicts = serializers.IntegerField(
        help_text="readings whose time already holds another value (stored, or earlier in the body): the stored value "
        "stays; these are kept server-side in quarantine with both values"
    )
    replaced = serializers.IntegerField(
        required=False,
        help_text="with on_conflict=replace only: stored readings whose value was replaced (audited with the old "
        "value)",
    )
    flagged = serializers.IntegerField(help_text="valid readings flagged out of range or missing")
    rejected = serializers.IntegerField(help_text="readings refused; each is kept server-side with its reason")
    rejections = Rejected(many=True, help_text="the refused readings (at most 1,000 listed)")
    rejections_truncated = serializers.BooleanField()
    rejections_aggregated = serializers.IntegerField(
        help_text="of the refused readings, those counted in one aggregate quarantine record instead of kept one "
        "by one: readings for channels you may not write (or that do not exist), and those past the quarantine "
        "limits per request and per sender and hour"
    )
    replayed = serializers.BooleanField(help_text="true when batch_id was seen before: nothing was stored again")


class ErrorDetail(serializers.Serializer):
    detail = serializers.CharField()
