"""``GET /api/v1/runlists/<slug>/statistics/``: the per-run statistics table (docs/runs.md).

Above the registry (it reads readings), so it lives in collection, beside the other reading endpoints.
"""

from __future__ import annotations

from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from accounts import permissions
from collection.api.readings import ERRORS, ChannelRefsField, JsonErrorsNegotiation, ReadingsViewSet, json_response
from collection.services import run_statistics
from instruments.models import Run, parse_run_label


class RunStatisticsParams(serializers.Serializer):
    channels = ChannelRefsField(help_text="channel ids or instrument-slug/channel-slug, comma-separated")
    runs = serializers.CharField(
        required=False, max_length=100, help_text="a range of runs, 1230-1235 (default: the latest 200)"
    )
    format = serializers.ChoiceField(choices=["json", "csv", "parquet"], default="json")

    def validate_channels(self, value):
        if len(value) > run_statistics.MAX_CHANNELS:
            raise ValidationError(f"At most {run_statistics.MAX_CHANNELS} channels.")
        return value

    def validate_runs(self, value: str):
        first, dash, last = value.partition("-")
        try:
            low = parse_run_label(first)
            high = parse_run_label(last) if dash else low
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return (min(low, high), max(low, high))


class RunStatisticsViewSet(ReadingsViewSet):
    params_class = RunStatisticsParams
    content_negotiation_class = JsonErrorsNegotiation  # ?format=csv is ours, not DRF's renderer choice

    @extend_schema(
        operation_id="run_statistics",
        summary="Per-run statistics: count, min, max and mean of chosen channels for each run of a run list",
        parameters=[RunStatisticsParams],
        responses={
            200: OpenApiTypes.OBJECT,
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
            **ERRORS,
        },
    )
    def read(self, request, slug: str):
        run_list = permissions.run_lists_for(request).filter(slug=slug).first()
        if run_list is None:
            raise Http404("No such run list.")
        params = self.params()
        channels = self.visible_channels(params["channels"])
        runs = Run.objects.filter(run_list=run_list).order_by("-number", "-stage")
        if params.get("runs"):
            (n1, s1), (n2, s2) = params["runs"]
            runs = runs.filter(number__gte=n1, number__lte=n2)
            chosen = [r for r in runs[: run_statistics.MAX_RUNS * 2] if (n1, s1) <= (r.number, r.stage) <= (n2, s2)]
        else:
            chosen = list(runs[: run_statistics.MAX_RUNS])
        rows = run_statistics.per_run_statistics(chosen, channels)
        if params["format"] == "parquet":
            response = HttpResponse(
                run_statistics.as_parquet(rows, channels), content_type="application/vnd.apache.parquet"
            )
            response["Content-Disposition"] = f'attachment; filename="{run_list.slug}-run-statistics.parquet"'
            return response
        if params["format"] == "csv":
            response = HttpResponse(run_statistics.as_csv(rows, channels), content_type="text/csv")
            response["Content-Disposition"] = f'attachment; filename="{run_list.slug}-run-statistics.csv"'
            return response
        return json_response(
            {
                "run_list": run_list.slug,
                "channels": [{"id": c.pk, "ref": f"{c.instrument.slug}/{c.slug}", "units": c.units} for c in channels],
                "runs": [
                    {"run": row.run.label, "start": row.start, "end": row.end, "statistics": row.cells} for row in rows
                ],
            }
        )
