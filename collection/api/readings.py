"""Reading data back over the API: plots (``samples``), statistics, exports and latest values.

Thin views over the query service (``collection.services.query``, ``statistics``, ``export``). Every
view derives from the accounts base viewset: channels are looked up among the ones the requester may
see (a hidden or unknown channel answers 404), agent tokens are refused (403), read-only tokens may read.
Plot and statistics answers are rendered with orjson, numpy arrays and all.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import orjson
from django.conf import settings
from django.db.models import Q
from django.http import Http404, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.negotiation import BaseContentNegotiation

from accounts import permissions
from accounts.api.base import ScopedGenericViewSet, instrument_or_404
from collection.alarms.models import AlarmEvent
from collection.api.schema import ErrorDetail
from collection.services import export as export_service
from collection.services import export_read, slots
from collection.services.expression_curves import expression_curve
from collection.services.histogram import MAX_BINS, MAX_TIME_BINS, channel_histogram
from collection.services.query import MAX_POINTS_LIMIT, latest_values, query_series
from collection.services.statistics import range_statistics
from daqbroker_agent.parsing import datetime_to_us, us_to_datetime
from instruments import runs, units
from instruments.expressions import ExpressionError
from instruments.models import Channel, LogbookEntry

MAX_CHANNELS = 100
DEFAULT_MAX_POINTS = 1000
DEFAULT_SPAN = 86_400 * 1_000_000
_INTEGER = re.compile(r"^-?\d{1,19}$")
_CHANNEL_REF = re.compile(r"^(?:[0-9]{1,18}|[-a-zA-Z0-9_]+/[-a-zA-Z0-9_]+)$")  # an id, or two slugs
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_instant(text: str) -> int:
    """µs since the epoch from ISO 8601 (naive means UTC) or an integer number of µs (as in answers)."""
    text = text.strip()
    if _INTEGER.match(text):
        value = int(text)
        if abs(value) >= 2**62:
            raise ValueError("out of range")
        return value
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return datetime_to_us(parsed)


@extend_schema_field(OpenApiTypes.STR)
class InstantField(serializers.Field):
    default_error_messages = {
        "invalid": "Expected an ISO 8601 time (e.g. 2024-05-06T07:00:00Z; naive means UTC) or µs since 1970."
    }

    def to_internal_value(self, data) -> int:
        try:
            return parse_instant(str(data))
        except (ValueError, OverflowError):
            self.fail("invalid")

    def to_representation(self, value):
        return value


class ChannelRefsField(serializers.CharField):
    """Comma-separated channel ids or ``instrument-slug/channel-slug`` references."""

    def to_internal_value(self, data) -> list[str]:  # type: ignore[override]  # a CharField parsed into a list
        refs = [ref.strip() for ref in super().to_internal_value(data).split(",") if ref.strip()]
        if not refs:
            raise ValidationError("Name at least one channel.")
        if len(refs) > MAX_CHANNELS:
            raise ValidationError(f"At most {MAX_CHANNELS} channels per request.")
        for ref in refs:
            if not _CHANNEL_REF.match(ref):
                raise ValidationError(f"{ref!r} is neither a channel id nor instrument-slug/channel-slug.")
        return list(dict.fromkeys(refs))


class RunRangeMixin(serializers.Serializer):
    """``run=<run list>/<run>`` (or ``<first>-<last>``) as the range: from its start to its end (docs/runs.md)."""

    run = serializers.CharField(
        required=False, max_length=200, help_text="a run as the range: run-list-slug/1234, /1234.01 or /1230-1235"
    )

    def validate(self, attrs):
        ref = attrs.pop("run", None)
        if ref is not None:
            if "start" in attrs or "end" in attrs:
                raise ValidationError({"run": "Give either run or start and end."})
            try:
                start, end, _ = runs.run_range(self.context.get("request"), ref)
            except ValueError as exc:
                raise ValidationError({"run": str(exc)}) from None
            attrs["start"] = datetime_to_us(start)
            attrs["end"] = max(datetime_to_us(end), attrs["start"] + 1)
        return super().validate(attrs)


class RangeParams(RunRangeMixin, serializers.Serializer):
    channels = ChannelRefsField(help_text="channel ids or instrument-slug/channel-slug, comma-separated")
    start = InstantField(required=False, help_text="ISO 8601 or µs since 1970 (default: a day before end)")
    end = InstantField(required=False, help_text="ISO 8601 or µs since 1970, excluded (default: now)")

    def validate(self, attrs):
        attrs = super().validate(attrs)
        end = attrs.get("end", time.time_ns() // 1000)
        start = attrs.get("start", end - DEFAULT_SPAN)
        if end <= start:
            raise ValidationError({"end": "The end must be after the start."})
        return {**attrs, "start": start, "end": end}


class ConvertField(serializers.CharField):
    """``<channel id>:<unit>,...``: show those channels' values in another unit of the same kind."""

    def to_internal_value(self, data) -> dict[int, str]:  # type: ignore[override]  # parsed into a dict
        out: dict[int, str] = {}
        for part in super().to_internal_value(data).split(","):
            if not part.strip():
                continue
            ref, _, unit = part.partition(":")
            if not ref.strip().isdigit() or len(ref.strip()) > 18 or not unit.strip() or len(unit) > 40:
                raise ValidationError(f"{part!r}: write a channel id, a colon and a unit (3:degF).")
            out[int(ref)] = unit.strip()
        return out


class SamplesParams(RangeParams):
    max_points = serializers.IntegerField(
        required=False, default=DEFAULT_MAX_POINTS, min_value=2, max_value=MAX_POINTS_LIMIT
    )
    include_flagged = serializers.BooleanField(
        required=False, default=False, help_text="raw and lttb answers also hold flagged readings, with quality"
    )
    convert = ConvertField(
        required=False,
        default="",
        allow_blank=True,
        max_length=2000,
        help_text="show channels in other units: <channel id>:<unit>,... (3:degF,4:mbar); pint converts",
    )


class StatisticsParams(RangeParams):
    percentiles = serializers.CharField(required=False, default="", help_text="e.g. 5,50,95")

    def validate_percentiles(self, value: str) -> list[float]:
        try:
            found = [float(p) for p in value.split(",") if p.strip()]
        except ValueError:
            raise ValidationError("Percentiles are numbers between 0 and 100, comma-separated.") from None
        if any(not 0 <= p <= 100 for p in found) or len(found) > 20:
            raise ValidationError("At most 20 percentiles, each between 0 and 100.")
        return found


def one_of(choices) -> str:
    """A refusal that names the accepted values."""
    return '"{input}" is not one of ' + ", ".join(choices) + "."


MAX_HISTOGRAM_CHANNELS = 12  # overlaid histograms: as many as the plot has distinct colours


class HistogramParams(RangeParams):
    channels = ChannelRefsField(
        help_text=f"up to {MAX_HISTOGRAM_CHANNELS} channels (one with time_bins above 1): ids or "
        "instrument-slug/channel-slug, comma-separated"
    )
    bins = serializers.IntegerField(required=False, default=50, min_value=1, max_value=MAX_BINS)
    time_bins = serializers.IntegerField(
        required=False, default=1, min_value=1, max_value=MAX_TIME_BINS, help_text="above 1: a histogram per time slice"
    )
    lo = serializers.FloatField(
        required=False,
        help_text="bottom of the first bin, in the unit shown (default: each channel's smallest reading)",
    )
    hi = serializers.FloatField(
        required=False, help_text="top of the last bin, in the unit shown (default: each channel's largest reading)"
    )
    convert = ConvertField(
        required=False,
        default="",
        allow_blank=True,
        max_length=2000,
        help_text="count channels in other units: <channel id>:<unit>,... (3:degF); pint converts, as for samples",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if len(attrs["channels"]) > MAX_HISTOGRAM_CHANNELS:
            raise ValidationError({"channels": f"At most {MAX_HISTOGRAM_CHANNELS} channels in one histogram."})
        if attrs["time_bins"] > 1 and len(attrs["channels"]) != 1:
            raise ValidationError({"channels": "A histogram over time (time_bins above 1) is of one channel."})
        for name in ("lo", "hi"):
            if name in attrs and not math.isfinite(attrs[name]):
                raise ValidationError({name: "A finite number."})
        if "lo" in attrs and "hi" in attrs and not attrs["hi"] > attrs["lo"]:
            raise ValidationError({"hi": "hi must be above lo."})
        return attrs


class ExportParams(RunRangeMixin, serializers.Serializer):
    channels = ChannelRefsField(required=False, help_text="channels to export (or instrument)")
    instrument = serializers.SlugField(required=False, help_text="export every channel of this instrument")
    start = InstantField(required=False, help_text="ISO 8601 or µs since 1970 (default: the first reading)")
    end = InstantField(required=False, help_text="ISO 8601 or µs since 1970, excluded (default: after the last)")
    format = serializers.ChoiceField(
        choices=export_read.FORMATS, default="csv", error_messages={"invalid_choice": one_of(export_read.FORMATS)}
    )
    layout = serializers.ChoiceField(
        choices=export_read.LAYOUTS, default="long", help_text="wide: one column per channel of one instrument"
    )
    time_format = serializers.ChoiceField(
        choices=export_read.TIME_FORMATS,
        default="iso",
        error_messages={"invalid_choice": one_of(export_read.TIME_FORMATS)},
        help_text="CSV times: iso, epoch_s, epoch_ms (Unix ms), epoch_us, matlab (datenum), igor (seconds since 1904)",
    )
    tz = serializers.CharField(default="UTC", max_length=64, help_text="IANA time zone for ISO times (CSV, Parquet)")
    quality = serializers.BooleanField(default=False, help_text="add the quality flags")
    include_flagged = serializers.BooleanField(
        default=False,
        help_text="also export readings flagged with a quality other than OK (out of range, a missing-value "
        "sentinel); left out by default, as the plot leaves them out",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if bool(attrs.get("channels")) == bool(attrs.get("instrument")):
            raise ValidationError("Give either channels or instrument.")
        return attrs


# --- response documentation -----------------------------------------------------------------------


class SeriesSchema(serializers.Serializer):
    channel = serializers.IntegerField()
    # The serializer's metaclass moves declared fields out of the class: Field.source is not shadowed.
    source = serializers.ChoiceField(choices=["raw", "lttb", "tier"])  # type: ignore[assignment]
    t = serializers.ListField(child=serializers.IntegerField(), help_text="µs since 1970 (bucket starts for tiers)")
    value = serializers.ListField(child=serializers.FloatField(), required=False, help_text="raw and lttb")
    quality = serializers.ListField(child=serializers.IntegerField(), required=False)
    tier = serializers.CharField(required=False, help_text="tier answers: the tier read (10s, 1min, ...)")
    bucket_us = serializers.IntegerField(required=False, help_text="width of each returned bucket")
    mean = serializers.ListField(child=serializers.FloatField(), required=False)
    min = serializers.ListField(child=serializers.FloatField(), required=False)
    max = serializers.ListField(child=serializers.FloatField(), required=False)
    count = serializers.ListField(child=serializers.IntegerField(), required=False)
    stale = serializers.BooleanField(required=False)


class SamplesSchema(serializers.Serializer):
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    max_points = serializers.IntegerField()
    series = SeriesSchema(many=True)


class StatisticsSchema(serializers.Serializer):
    channel = serializers.IntegerField()
    count = serializers.IntegerField()
    flagged = serializers.IntegerField()
    min = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)
    mean = serializers.FloatField(allow_null=True)
    std = serializers.FloatField(allow_null=True, help_text="sample standard deviation (ddof=1)")
    percentiles = serializers.DictField(child=serializers.FloatField(allow_null=True))
    raw_readings_read = serializers.IntegerField()
    buckets_read = serializers.IntegerField()
    raw_available_from = serializers.IntegerField(allow_null=True)


class StatisticsListSchema(serializers.Serializer):
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    statistics = StatisticsSchema(many=True)


class LatestSchema(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    units = serializers.CharField()
    ts = serializers.IntegerField(allow_null=True, help_text="µs since 1970")
    time = serializers.CharField(allow_null=True, help_text="ISO 8601, UTC")
    value = serializers.JSONField(allow_null=True, help_text="a number, or text for text channels")
    quality = serializers.IntegerField(allow_null=True)


class LatestListSchema(serializers.Serializer):
    instrument = serializers.CharField()
    channels = LatestSchema(many=True)


ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="a parameter is missing or malformed"),
    401: OpenApiResponse(ErrorDetail, description="not authenticated"),
    403: OpenApiResponse(ErrorDetail, description="an agent token"),
    404: OpenApiResponse(ErrorDetail, description="a channel or instrument you may not see, or none such"),
}

TOO_BUSY = {
    429: OpenApiResponse(
        ErrorDetail, description="too many exports or percentile requests of yours at once: retry after Retry-After"
    )
}

# --- views ----------------------------------------------------------------------------------------


def heavy_slot(request) -> slots.Slot:
    """One of the requester's DAQBROKER_HEAVY_REQUESTS_PER_USER slots for an export or percentiles; 429
    with Retry-After when all are taken (docs/security.md, "Bounded work per request")."""
    slot = slots.acquire(f"user:{request.user.pk}")
    if slot is None:
        raise Throttled(
            wait=slots.RETRY_AFTER_SECONDS,
            detail=(
                f"at most {settings.DAQBROKER_HEAVY_REQUESTS_PER_USER} exports or percentile requests at once "
                "per user; retry when one of yours has finished"
            ),
        )
    return slot


def json_response(payload: dict) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload, option=JSON_OPTIONS), content_type="application/json")


class ReadingsViewSet(ScopedGenericViewSet):
    """Base: the channels named in the request, among those the requester may see (one query)."""

    queryset = Channel.objects.select_related("instrument")
    filter_backends: list = []
    pagination_class = None
    params_class: type[serializers.Serializer] = RangeParams

    def get_serializer_class(self):
        return self.params_class

    def params(self) -> dict:
        serializer = self.params_class(data=self.request.query_params, context={"request": self.request})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def visible_channels(self, refs: list[str]) -> list[Channel]:
        ids = [int(ref) for ref in refs if ref.isdigit()]
        pairs = [ref.split("/", 1) for ref in refs if not ref.isdigit()]
        wanted = Q(pk__in=ids)
        for instrument, channel in pairs:
            wanted |= Q(instrument__slug=instrument, slug=channel)
        found = list(self.filter_queryset(self.get_queryset()).filter(wanted))
        by_ref = {str(c.pk): c for c in found} | {f"{c.instrument.slug}/{c.slug}": c for c in found}
        missing = [ref for ref in refs if ref not in by_ref]
        if missing:
            # The same answer for a channel that does not exist and one the requester may not see.
            raise Http404(f"No such channel ({len(missing)} of the {len(refs)} named), or not one you may see.")
        return list(dict.fromkeys(by_ref[ref] for ref in refs))


def display_converters(channels: list[Channel], wanted: dict[int, str]) -> dict[int, tuple[str, Callable]]:
    """channel id -> (unit, conversion) for the channels ``convert`` names; a 400 naming the problem for a
    channel not in the request, a unit pint does not know, or one of another kind (degC in hPa)."""
    by_id = {c.pk: c for c in channels}
    out: dict[int, tuple[str, Callable]] = {}
    for pk, unit in wanted.items():
        channel = by_id.get(pk)
        if channel is None:
            raise ValidationError({"convert": f"channel {pk} is not one of the channels asked for"})
        try:
            out[pk] = (unit, units.converter(channel.units, unit))
        except ValueError as exc:
            raise ValidationError({"convert": f"{channel.name}: {exc}"}) from None
    return out


class SamplesViewSet(ReadingsViewSet):
    params_class = SamplesParams

    @extend_schema(
        operation_id="query_samples",
        summary="Readings of channels over a time range, at screen resolution",
        description=(
            "For each channel: raw readings when the range holds at most max_points of them; otherwise "
            "MinMax-LTTB over raw readings (short ranges) or buckets of a rollup tier with min/max envelope, "
            "mean and count. Readings flagged bad are left out unless include_flagged (raw and lttb answers)."
        ),
        parameters=[SamplesParams],
        responses={200: SamplesSchema, **ERRORS},
    )
    def read(self, request):
        params = self.params()
        channels = self.visible_channels(params["channels"])
        converters = display_converters(channels, params["convert"] or {})
        series = query_series(
            [c.pk for c in channels],
            params["start"],
            params["end"],
            params["max_points"],
            include_flagged=params["include_flagged"],
        )
        answers = []
        for s in series:
            answer = s.as_dict()
            if s.channel_id in converters:
                unit, convert = converters[s.channel_id]
                for key in ("value", "mean", "min", "max"):
                    if answer.get(key) is not None:
                        answer[key] = convert(answer[key])
                answer["units"] = unit
            answers.append(answer)
        return json_response(
            {
                "start": params["start"],
                "end": params["end"],
                "max_points": params["max_points"],
                "series": answers,
            }
        )


class HistogramSchema(serializers.Serializer):
    channel = serializers.IntegerField()
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    edges = serializers.ListField(child=serializers.FloatField(), help_text="bins + 1 value edges, in units")
    units = serializers.CharField(help_text="the unit of the edges: the channel's, or the one convert asked for")
    time_edges = serializers.ListField(child=serializers.IntegerField(), help_text="time_bins + 1 edges, µs")
    counts = serializers.JSONField(help_text="counts per bin; with time_bins > 1, one list per time slice")
    below = serializers.IntegerField(help_text="readings under lo")
    above = serializers.IntegerField(help_text="readings over hi")
    total = serializers.IntegerField()
    exact = serializers.FloatField(help_text="share of the readings counted exactly (1: all of them)")
    # The serializer's metaclass moves declared fields out of the class: Field.source is not shadowed.
    source = serializers.CharField(help_text="raw, or the rollup tier read")  # type: ignore[assignment]


class HistogramListSchema(serializers.Serializer):
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    histograms = HistogramSchema(many=True, help_text="one per channel, in the order asked")
    elapsed_ms = serializers.FloatField()


class HistogramViewSet(ReadingsViewSet):
    params_class = HistogramParams

    @extend_schema(
        operation_id="channel_histogram",
        summary="Histograms of channels' readings over a time range, or one channel's per time slice (a heatmap)",
        description=(
            "One histogram per channel (at most 12; one channel with time_bins above 1), each counted on the "
            "server in bounded work: from raw readings for short ranges; otherwise from the rollup tiers where a "
            "bucket's readings fall in one bin, raw readings for the buckets that straddle bins within a budget, "
            "and beyond it those buckets spread between their min and max (see exact). Flagged readings are not "
            "counted. With convert, the edges (and lo and hi) are in the unit asked for, converted by pint as "
            "on /samples/."
        ),
        parameters=[HistogramParams],
        responses={200: HistogramListSchema, **ERRORS},
    )
    def read(self, request):
        params = self.params()
        channels = self.visible_channels(params["channels"])
        converters = display_converters(channels, params["convert"] or {})
        started = time.perf_counter()
        answers = []
        for channel in channels:
            conversion = converters.get(channel.pk)
            unit = conversion[0] if conversion else channel.units
            lo, hi = params.get("lo"), params.get("hi")
            if conversion:  # limits given in the unit shown: counted in the channel's own
                back = units.converter(unit, channel.units)  # the same pint conversion, the other way
                lo, hi = (None if v is None else float(back(v)) for v in (lo, hi))
                if not all(v is None or math.isfinite(v) for v in (lo, hi)):
                    raise ValidationError({"convert": f"{channel.name}: lo or hi is beyond what {channel.units} holds"})
            try:
                result = channel_histogram(
                    channel.pk,
                    params["start"],
                    params["end"],
                    bins=params["bins"],
                    time_bins=params["time_bins"],
                    lo=lo,
                    hi=hi,
                ).as_dict()
            except ValueError as exc:
                raise ValidationError({"detail": str(exc)}) from None
            if conversion:
                result["edges"] = np.asarray(conversion[1](result["edges"]), dtype=np.float64)
                if not np.isfinite(result["edges"]).all():
                    raise ValidationError({"convert": f"{channel.name}: the bins are beyond what {unit} holds"})
            answers.append({**result, "units": unit})
        return json_response(
            {
                "start": params["start"],
                "end": params["end"],
                "histograms": answers,
                "elapsed_ms": (time.perf_counter() - started) * 1000,
            }
        )


class ExpressionParams(serializers.Serializer):
    expression = serializers.CharField(max_length=500, help_text="e.g. a/temp - b/temp (instrument/channel)")
    start = InstantField(required=False, help_text="ISO 8601 or µs since 1970 (default: a day before end)")
    end = InstantField(required=False, help_text="ISO 8601 or µs since 1970, excluded (default: now)")
    max_points = serializers.IntegerField(required=False, default=DEFAULT_MAX_POINTS, min_value=2, max_value=5000)

    def validate(self, attrs):
        end = attrs.get("end", time.time_ns() // 1000)
        start = attrs.get("start", end - DEFAULT_SPAN)
        if end <= start:
            raise ValidationError({"end": "The end must be after the start."})
        return {**attrs, "start": start, "end": end}


class ExpressionViewSet(ReadingsViewSet):
    params_class = ExpressionParams

    @extend_schema(
        operation_id="expression_curve",
        summary="An expression over channels of any instruments, aligned on time at the plot's resolution",
        description=(
            "Channels are written instrument-slug/channel-slug (spaces around / and - between two channels); "
            "the functions and operators are the derived channels'. Each channel's mean in each of max_points "
            "equal slices of the range; the expression where every channel has one. 400 for an expression "
            "that does not parse or names a channel that does not exist or that you may not see."
        ),
        parameters=[ExpressionParams],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def read(self, request):
        params = self.params()

        def resolve(refs):
            try:
                return {ref: channel.pk for ref, channel in zip(refs, self.visible_channels(list(refs)), strict=True)}
            except Http404:
                # By position, not by name: an answer never repeats the name of a channel one may not see.
                hidden = [str(i + 1) for i, ref in enumerate(refs) if not self._visible(ref)]
                raise ExpressionError(
                    f"no channel {', '.join(hidden)} of the expression (counting channels from the left), or not "
                    "one you may see; write channels as instrument-slug/channel-slug"
                ) from None

        started = time.perf_counter()
        try:
            curve = expression_curve(
                params["expression"], resolve, params["start"], params["end"], params["max_points"]
            )
        except ExpressionError as exc:
            raise ValidationError({"expression": str(exc)}) from None
        return json_response(
            {
                "start": params["start"],
                "end": params["end"],
                **curve.as_dict(),
                "elapsed_ms": (time.perf_counter() - started) * 1000,
            }
        )

    def _visible(self, ref: str) -> bool:
        try:
            self.visible_channels([ref])
        except Http404:
            return False
        return True


ANNOTATIONS_LIMIT = 200


class AnnotationsViewSet(ReadingsViewSet):
    @extend_schema(
        operation_id="plot_annotations",
        summary="Logbook entries and alarm events to draw on a plot of channels over a time range",
        description=(
            "The logbook entries of the channels' instruments that occurred in [start, end), and the alarm "
            f"events of the channels active at some time in it; at most {ANNOTATIONS_LIMIT} of each, the "
            "earliest first (truncated says when more were left out). Runs are at /api/v1/runs/."
        ),
        parameters=[RangeParams],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def read(self, request):
        params = self.params()
        channels = self.visible_channels(params["channels"])
        start, end = us_to_datetime(params["start"]), us_to_datetime(params["end"])
        entries = list(
            LogbookEntry.objects.filter(
                instrument_id__in={c.instrument_id for c in channels}, occurred_at__gte=start, occurred_at__lt=end
            )
            .select_related("instrument", "author")
            .order_by("occurred_at", "pk")[: ANNOTATIONS_LIMIT + 1]
        )
        events = list(
            AlarmEvent.objects.filter(channel_id__in=[c.pk for c in channels], raised_at__lt=end)
            .filter(Q(cleared_at__isnull=True) | Q(cleared_at__gte=start))
            .order_by("raised_at", "pk")[: ANNOTATIONS_LIMIT + 1]
        )
        return json_response(
            {
                "start": params["start"],
                "end": params["end"],
                "logbook": [
                    {
                        "time": e.occurred_at.isoformat(),
                        "instrument": e.instrument.slug,
                        "author": e.author.get_username() if e.author else None,
                        "text": e.text[:2000],
                    }
                    for e in entries[:ANNOTATIONS_LIMIT]
                ],
                "alarms": [
                    {
                        "channel": a.channel_id,
                        "severity": a.severity,
                        "message": a.message,
                        "raised_at": a.raised_at.isoformat(),
                        "cleared_at": a.cleared_at.isoformat() if a.cleared_at else None,
                    }
                    for a in events[:ANNOTATIONS_LIMIT]
                ],
                "truncated": len(entries) > ANNOTATIONS_LIMIT or len(events) > ANNOTATIONS_LIMIT,
            }
        )


class StatisticsViewSet(ReadingsViewSet):
    params_class = StatisticsParams

    @extend_schema(
        operation_id="range_statistics",
        summary="Count, min, max, mean, std and percentiles of channels over a time range",
        description="From the rollup tiers where whole buckets fit, raw readings for the rest and for percentiles.",
        parameters=[StatisticsParams],
        responses={200: StatisticsListSchema, **ERRORS, **TOO_BUSY},
    )
    def read(self, request):
        params = self.params()
        channels = self.visible_channels(params["channels"])
        slot = heavy_slot(request) if params["percentiles"] else None
        try:
            results = range_statistics(
                [c.pk for c in channels], params["start"], params["end"], percentiles=params["percentiles"]
            )
        except ValueError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        finally:
            if slot is not None:
                slot.release()
        return json_response(
            {"start": params["start"], "end": params["end"], "statistics": [r.as_dict() for r in results]}
        )


class JsonErrorsNegotiation(BaseContentNegotiation):
    """Exports are CSV, Parquet, NetCDF or HDF5 whatever the Accept header; errors are JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ExportViewSet(ReadingsViewSet):
    params_class = ExportParams
    content_negotiation_class = JsonErrorsNegotiation

    @extend_schema(
        operation_id="export_readings",
        summary="Export readings as CSV, Parquet, NetCDF or HDF5, streamed",
        description=(
            "long: one row per reading (time, channel, value[, quality]), by channel then time. wide: one "
            "instrument's channels side by side, one row per timestamp, headers with units. CSV time as ISO 8601 "
            "in the chosen zone, epoch seconds/milliseconds (exact decimals) or microseconds, a MATLAB datenum or "
            "Igor seconds since 1904. NetCDF and HDF5 (the same netCDF4 file): CF conventions, a variable per "
            "channel with units and long_name, time as microseconds since 1970, each channel on its own time "
            "axis (long) or one shared axis with _FillValue where a channel has no reading (wide). Flagged "
            "readings are left out, as the plot leaves them out, unless include_flagged (NetCDF/HDF5: kept as "
            "_FillValue with their flag); quality adds the quality flags."
        ),
        parameters=[ExportParams],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
            (200, "application/x-netcdf"): OpenApiTypes.BINARY,
            (200, "application/x-hdf5"): OpenApiTypes.BINARY,
            **ERRORS,
            **TOO_BUSY,
        },
    )
    def read(self, request):
        params = self.params()
        if params.get("instrument"):
            instrument = instrument_or_404(request, params["instrument"], permissions.VIEW)
            channels = list(instrument.channels.select_related("instrument").order_by("slug"))
        else:
            channels = self.visible_channels(params["channels"])
        slot = heavy_slot(request)
        try:
            export_request = export_read.ExportRequest(
                channels=channels,
                start=params.get("start", export_read.MIN_TS),
                end=params.get("end", export_read.MAX_TS),
                format=params["format"],
                layout=params["layout"],
                time_format=params["time_format"],
                time_zone=params["tz"],
                quality=params["quality"],
                include_flagged=params["include_flagged"],
            )
            stream = export_service.export(export_request)
        except ValueError as exc:
            slot.release()
            raise ValidationError({"detail": str(exc)}) from None
        except BaseException:
            slot.release()
            raise
        # The slot is held until the download ends or is dropped (Django closes the stream either way).
        response = StreamingHttpResponse(slots.HeldStream(iter(stream), slot), content_type=export_request.content_type)
        response["Content-Disposition"] = f'attachment; filename="{export_request.filename}"'
        return response


class LatestViewSet(ReadingsViewSet):
    @extend_schema(
        operation_id="instrument_latest",
        summary="The latest reading of every channel of an instrument",
        parameters=[OpenApiParameter("slug", str, OpenApiParameter.PATH)],
        responses={200: LatestListSchema, **ERRORS},
    )
    def read(self, request, slug: str):
        instrument = instrument_or_404(request, slug, permissions.VIEW)
        return json_response(
            {
                "instrument": instrument.slug,
                "channels": [
                    {**row, "time": None if row["ts"] is None else us_to_datetime(row["ts"]).isoformat()}
                    for row in latest_values(instrument.pk)
                ],
            }
        )
