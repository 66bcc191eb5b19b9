"""Run lists and their runs through the API (docs/runs.md): the list, start, stop, runs, edits, comments, CSV.

Everything goes through ``instruments.runs`` (the services the pages, the admin and the agent use too).
Agents (``daqbroker-agent run start``) may only call ``start`` and ``stop``, on run lists that concern an
instrument they are scoped to (``accounts.permissions.run_lists_for``).
"""

from __future__ import annotations

from typing import Any

import django_filters
import django_filters.rest_framework
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Prefetch, Q
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.response import Response

from accounts import audit, permissions
from accounts.api.base import PermittedSlugRelatedField, ScopedModelViewSet, ScopedReadOnlyModelViewSet, as_drf_detail
from instruments import runs as run_services
from instruments.api.filters import UtcIsoDateTimeFilter
from instruments.models import MAX_RUN_NUMBER, MAX_STAGE, Instrument, Run, RunColumn, RunComment, RunList


def _drf(exc: DjangoValidationError) -> exceptions.ValidationError:
    return exceptions.ValidationError(as_drf_detail(exc))


class RunColumnSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunColumn
        fields = ["name", "kind", "units", "choices", "required"]

    def validate(self, attrs):
        column = RunColumn(run_list=RunList(), **attrs)
        try:
            column.full_clean(exclude=["run_list", "position"], validate_unique=False, validate_constraints=False)
        except DjangoValidationError as exc:
            raise _drf(exc) from None
        return {**attrs, "units": column.units}


class RunCommentSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author_name", read_only=True)

    class Meta:
        model = RunComment
        fields = ["at", "author", "text"]
        read_only_fields = ["at", "author"]


class RunSerializer(serializers.ModelSerializer):
    # label and active are the model's properties (read-only fields made by the ModelSerializer).
    run_list = serializers.CharField(source="run_list.slug", read_only=True)
    comments = RunCommentSerializer(many=True, read_only=True)

    class Meta:
        model = Run
        fields = [
            "run_list", "label", "number", "stage", "start", "end", "active", "parameters", "summary",
            "started_by", "comments",
        ]  # fmt: skip
        read_only_fields = ["number", "stage", "started_by"]


class RunListSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    instruments = PermittedSlugRelatedField(
        queryset=Instrument.objects.all(), many=True, required=False, level=permissions.VIEW
    )
    columns = RunColumnSerializer(many=True, required=False)
    active_run = serializers.SerializerMethodField()

    class Meta:
        model = RunList
        fields = ["id", "name", "slug", "description", "owner", "instruments", "columns", "active_run", "created"]
        read_only_fields = ["id", "owner", "created"]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        # Instruments the reader may not see are not named (the run list may be shared more widely).
        request = self.context.get("request")
        visible = set(permissions.instruments_visible_to(request).values_list("slug", flat=True)) if request else set()
        data["instruments"] = [slug for slug in data.get("instruments", []) if slug in visible]
        return data

    def get_active_run(self, run_list: RunList) -> str | None:
        active = [run for run in getattr(run_list, "active_runs", []) if run.end is None]
        return active[0].label if active else None

    def validate_columns(self, columns: list[dict]) -> list[dict]:
        names = [c["name"] for c in columns]
        if len(set(names)) != len(names):
            raise serializers.ValidationError("Each column needs its own name.")
        if len(columns) > run_services.MAX_PARAMETERS:
            raise serializers.ValidationError(f"At most {run_services.MAX_PARAMETERS} columns.")
        return columns

    def _save_columns(self, run_list: RunList, columns: list[dict] | None) -> None:
        if columns is None:
            return
        run_list.columns.exclude(name__in=[c["name"] for c in columns]).delete()
        for position, column in enumerate(columns):
            RunColumn.objects.update_or_create(
                run_list=run_list, name=column["name"], defaults={**column, "position": position}
            )

    def create(self, validated_data):
        columns = validated_data.pop("columns", None)
        instruments = validated_data.pop("instruments", [])
        run_list = RunList.objects.create(**validated_data)
        run_list.instruments.set(instruments)
        self._save_columns(run_list, columns)
        return run_list

    def update(self, instance, validated_data):
        columns = validated_data.pop("columns", None)
        instruments = validated_data.pop("instruments", None)
        for name, value in validated_data.items():
            setattr(instance, name, value)
        instance.save()
        if instruments is not None:
            # Instruments the editor may not see stay attached (they cannot name them, so cannot keep them).
            hidden = instance.instruments.exclude(pk__in=permissions.instruments_visible_to(self.context["request"]))
            instance.instruments.set([*instruments, *hidden])
        self._save_columns(instance, columns)
        return instance


class StartSerializer(serializers.Serializer):
    number = serializers.IntegerField(required=False, min_value=1, max_value=MAX_RUN_NUMBER)
    stage = serializers.IntegerField(required=False, default=0, min_value=0, max_value=MAX_STAGE)
    parameters = serializers.DictField(required=False, default=dict)
    summary = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)


class StartedSerializer(serializers.Serializer):
    run = RunSerializer()
    ended = RunSerializer(allow_null=True)


class CommentSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=run_services.MAX_COMMENT_CHARS)


class RunEditSerializer(serializers.Serializer):
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False, allow_null=True)
    parameters = serializers.DictField(required=False)
    summary = serializers.CharField(required=False, allow_blank=True, max_length=10_000)


class RunInRangeSerializer(serializers.ModelSerializer):
    run_list = serializers.CharField(source="run_list.slug", read_only=True)
    run_list_name = serializers.CharField(source="run_list.name", read_only=True)

    class Meta:
        model = Run
        fields = ["run_list", "run_list_name", "label", "number", "stage", "start", "end", "parameters"]


class RunFilter(django_filters.FilterSet):
    run_list = django_filters.CharFilter(field_name="run_list__slug")
    instrument = django_filters.BaseInFilter(field_name="run_list__instruments__slug", distinct=True)
    start = UtcIsoDateTimeFilter(method="ends_after", label="runs that end after this instant (ISO 8601)")
    end = UtcIsoDateTimeFilter(field_name="start", lookup_expr="lt", label="runs that start before this instant")

    class Meta:
        model = Run
        fields = ["run_list", "instrument", "start", "end"]

    def ends_after(self, queryset, name, value):
        return queryset.filter(Q(end__isnull=True) | Q(end__gt=value))


class RunViewSet(ScopedReadOnlyModelViewSet):
    """Runs of every run list you may see, newest first; ``start``/``end`` keep those overlapping a range
    (the plot page draws them as bands), ``instrument`` those of run lists concerning these instruments."""

    queryset = Run.objects.select_related("run_list")
    serializer_class = RunInRangeSerializer
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend]
    filterset_class = RunFilter
    ordering = ["-start"]

    def get_queryset(self):
        return super().get_queryset().order_by("-start", "-id")


class RunListFilter(django_filters.FilterSet):
    owner = django_filters.CharFilter(field_name="owner__username")
    instrument = django_filters.CharFilter(field_name="instruments__slug", distinct=True)

    class Meta:
        model = RunList
        fields = ["owner", "instrument"]


PARQUET = "application/vnd.apache.parquet"


def run_list_download(run_list: RunList, kind: str) -> HttpResponseBase:
    """The run list as a CSV (streamed) or Parquet download; the same for the API and the page."""
    runs = Run.objects.filter(run_list=run_list).order_by("number", "stage").iterator(chunk_size=500)
    if kind == "parquet":
        try:
            body = run_services.run_list_parquet(run_list, runs)
        except DjangoValidationError as exc:
            raise _drf(exc) from None
        response: HttpResponseBase = HttpResponse(body, content_type=PARQUET)
        response["Content-Disposition"] = f'attachment; filename="{run_list.slug}-runs.parquet"'
        return response
    if kind != "csv":
        raise exceptions.ValidationError({"as": "csv or parquet"})
    response = StreamingHttpResponse(run_services.run_list_csv_rows(run_list, runs), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{run_list.slug}-runs.csv"'
    return response


class RunListViewSet(ScopedModelViewSet):
    """Run lists you may see, their runs, and starting and stopping runs (``collect`` on the list)."""

    queryset = RunList.objects.select_related("owner").prefetch_related("instruments", "columns")
    serializer_class = RunListSerializer
    lookup_field = "slug"
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend, SearchFilter, OrderingFilter]
    filterset_class = RunListFilter
    search_fields = ["name", "slug", "description"]
    ordering_fields = ["name", "slug", "created"]
    ordering = ["name"]
    agent_access = ("start", "stop")  # acquisition scripts mark runs with the agent's token
    action_levels = {
        "destroy": permissions.SHARE,
        "start": permissions.COLLECT,
        "stop": permissions.COLLECT,
        "comment": permissions.COLLECT,
        "runs": permissions.VIEW,
        "run": permissions.VIEW,
        "download": permissions.VIEW,
    }

    def get_queryset(self):
        queryset = super().get_queryset()
        if permissions.is_agent(self.request):
            # An agent sees no run list; it may reach the ones it may collect on (start, stop) only.
            return queryset.filter(pk__in=permissions.run_lists_for(self.request, permissions.COLLECT).values("pk"))
        return queryset.prefetch_related(Prefetch("runs", Run.objects.filter(end__isnull=True), to_attr="active_runs"))

    def filter_queryset(self, queryset):
        if permissions.is_agent(self.request):
            return queryset  # narrowed to what it may collect on by get_queryset
        return super().filter_queryset(queryset)

    def perform_create(self, serializer):
        serializer.validated_data["owner"] = self.request.user
        with transaction.atomic():
            super().perform_create(serializer)

    def perform_update(self, serializer):
        with transaction.atomic():
            super().perform_update(serializer)

    @extend_schema(request=StartSerializer, responses={201: StartedSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, slug=None):
        """Start a run (the next number unless given), ending the active one at the same instant."""
        run_list = self.get_object()
        body = StartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            run, ended = run_services.start_run(run_list, **body.validated_data, **audit.origin(request))
        except DjangoValidationError as exc:
            raise _drf(exc) from None
        except DjangoPermissionDenied as exc:
            raise exceptions.PermissionDenied(str(exc)) from None
        data = {"run": RunSerializer(run).data, "ended": RunSerializer(ended).data if ended else None}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: RunSerializer, 409: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def stop(self, request, slug=None):
        """End the active run. 409 when no run is active."""
        run_list = self.get_object()
        try:
            run = run_services.stop_run(run_list, **audit.origin(request))
        except DjangoValidationError as exc:
            raise _drf(exc) from None
        if run is None:
            return Response({"detail": f"No run of {run_list.slug} is active."}, status=status.HTTP_409_CONFLICT)
        return Response(RunSerializer(run).data)

    @extend_schema(responses={200: RunSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def runs(self, request, slug=None):
        """The runs, newest first (paginated); ``?active=true`` for the active one only."""
        run_list = self.get_object()
        runs = Run.objects.filter(run_list=run_list).select_related("run_list").prefetch_related("comments")
        if request.query_params.get("active") in ("true", "1", "yes"):
            runs = runs.filter(end__isnull=True)
        page = self.paginate_queryset(runs.order_by("-number", "-stage"))
        return self.get_paginated_response(RunSerializer(page, many=True).data)

    @extend_schema(
        methods=["GET"], responses={200: RunSerializer}, description="One run, by its label (1234 or 1234.01)."
    )
    @extend_schema(methods=["PATCH"], request=RunEditSerializer, responses={200: RunSerializer})
    @action(detail=True, methods=["get", "patch"], url_path=r"runs/(?P<label>[0-9]+(?:\.[0-9]+)?)")
    def run(self, request, slug=None, label=None):
        """One run; PATCH edits its start, end, parameters or summary (``change`` on the list; audited)."""
        run_list = self.get_object()
        run = self._run(run_list, label)
        if request.method == "PATCH":
            if not permissions.has_perm(request, permissions.CHANGE, run_list):
                raise exceptions.PermissionDenied("Editing a run needs the change level on its run list.")
            body = RunEditSerializer(data=request.data, partial=True)
            body.is_valid(raise_exception=True)
            try:
                run = run_services.update_run(run, body.validated_data, **audit.origin(request))
            except DjangoValidationError as exc:
                raise _drf(exc) from None
        return Response(RunSerializer(run).data)

    @extend_schema(request=CommentSerializer, responses={201: RunCommentSerializer})
    @action(detail=True, methods=["post"], url_path=r"runs/(?P<label>[0-9]+(?:\.[0-9]+)?)/comments")
    def comment(self, request, slug=None, label=None):
        """Add a dated comment to a run (``collect`` on the list)."""
        run_list = self.get_object()
        run = self._run(run_list, label)
        body = CommentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            comment = run_services.add_comment(run, body.validated_data["text"], **audit.origin(request))
        except DjangoValidationError as exc:
            raise _drf(exc) from None
        except DjangoPermissionDenied as exc:
            raise exceptions.PermissionDenied(str(exc)) from None
        return Response(RunCommentSerializer(comment).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("as", str, enum=["csv", "parquet"], description="csv (default) or parquet")],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, PARQUET): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"])
    def download(self, request, slug=None):
        """The whole run list, one run per line, a typed column per parameter: CSV (units in the header) or,
        with ``?as=parquet``, Parquet (typed columns; units in the field metadata)."""
        return run_list_download(self.get_object(), request.query_params.get("as", "csv"))

    @staticmethod
    def _run(run_list: RunList, label: Any) -> Run:
        try:
            run = run_services.find_run(run_list, str(label))
        except ValueError as exc:
            raise exceptions.ValidationError({"run": str(exc)}) from None
        if run is None:
            raise Http404(f"No run {label} in {run_list.slug}.")
        return run
