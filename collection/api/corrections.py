"""Undoing mistakes through the API: re-read a source, delete a channel's readings in a range.

Both need the ``change`` level on the instrument (the one permission gate: a hidden object answers 404, a
visible one without the level 403, read-only and agent tokens 403); both call
``collection.services.corrections``, which audits what they did. Replacing readings on purpose is
``POST /api/v1/ingest/?on_conflict=replace`` (``collection.api.views``).
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts import audit
from accounts.api.base import ScopedGenericViewSet
from collection.api.schema import ErrorDetail
from collection.services import corrections
from collection.services.ingest import KEEP, ON_CONFLICT, REPLACE
from daqbroker_agent.parsing import us_to_datetime
from instruments.models import Channel, DataSource

_ERRORS = {
    400: OpenApiResponse(ErrorDetail, description="the request cannot be done as asked (the reason is given)"),
    401: OpenApiResponse(ErrorDetail, description="not logged in, or no valid token"),
    403: OpenApiResponse(ErrorDetail, description="you may see it but not change it, or a read-only or agent token"),
    404: OpenApiResponse(ErrorDetail, description="no such object, or not one you may see"),
}


class RereadRequestSerializer(serializers.Serializer):
    start = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Read each file from its first line stamped at or after this time; empty: from the start.",
    )
    on_conflict = serializers.ChoiceField(
        choices=ON_CONFLICT,
        default=KEEP,
        help_text="keep: a value differing from the stored one is quarantined as a conflict; replace: it "
        "replaces the stored one (audited with the old value).",
    )


class RereadAnswerSerializer(serializers.Serializer):
    # The serializer's metaclass moves declared fields out of the class: Field.source is not shadowed.
    source = serializers.IntegerField()  # type: ignore[assignment]
    start = serializers.DateTimeField(allow_null=True)
    on_conflict = serializers.CharField()
    requested_at = serializers.DateTimeField()


class SourceRereadViewSet(ScopedGenericViewSet):
    queryset = DataSource.objects.select_related("instrument")
    pagination_class = None
    audited = False  # corrections.request_reread records its own event
    serializer_class = RereadRequestSerializer

    @extend_schema(
        operation_id="reread_source",
        summary="Read a file source again",
        description=(
            "The source's next collection run reads its files again: from their start, or from each file's "
            "first line stamped at or after `start`. Readings already stored count as duplicates (a differing "
            "value as a conflict, or replaces it with `on_conflict=replace`), so it is safe to repeat. Only "
            "file sources: serial and TCP streams cannot be read again, and an agent keeps its own cursor "
            "(400 with the reason). Needs the change level on the instrument."
        ),
        request=RereadRequestSerializer,
        responses={202: RereadAnswerSerializer, **_ERRORS},
    )
    def reread(self, request, pk=None):
        source = self.get_object()
        form = RereadRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            corrections.request_reread(
                source,
                start=form.validated_data["start"],
                replace=form.validated_data["on_conflict"] == REPLACE,
                **audit.origin(request),
            )
        except corrections.CorrectionRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            {
                "source": source.pk,
                "start": None if source.reread_from is None else us_to_datetime(source.reread_from),
                "on_conflict": form.validated_data["on_conflict"],
                "requested_at": source.reread_requested_at,
            },
            status=status.HTTP_202_ACCEPTED,
        )


class DeleteReadingsSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="First instant of the range (included).")
    end = serializers.DateTimeField(help_text="End of the range (excluded).")
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)
    dry_run = serializers.BooleanField(required=False, default=False, help_text="Only count what would go.")


class DeletionAnswerSerializer(serializers.Serializer):
    channel = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    readings = serializers.IntegerField(required=False, help_text="dry run: readings in the range")
    deleted = serializers.IntegerField(required=False, help_text="readings deleted")


class ChannelReadingsDeletionViewSet(ScopedGenericViewSet):
    queryset = Channel.objects.select_related("instrument")
    pagination_class = None
    audited = False  # the deletion records its own event (samples.deleted)
    serializer_class = DeleteReadingsSerializer

    @extend_schema(
        operation_id="delete_channel_readings",
        summary="Delete a channel's readings in a time range",
        description=(
            "Deletes the channel's readings in [start, end): audited with the count and range, the rollup tiers "
            "and the derived channels reading it recomputed there, alarms not evaluated. `dry_run` counts "
            "first. At most DAQBROKER_CORRECTION_MAX_READINGS readings per request: a larger range answers 400 "
            "and nothing is deleted. Needs the change level on the instrument."
        ),
        request=DeleteReadingsSerializer,
        responses={200: DeletionAnswerSerializer, **_ERRORS},
    )
    def delete_readings(self, request, pk=None):
        channel = self.get_object()
        form = DeleteReadingsSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            if data["dry_run"]:
                plan = corrections.plan_deletion(channel, data["start"], data["end"])
                if plan.too_many:
                    raise corrections.CorrectionRefused(
                        f"more than {plan.count - 1:,} readings in this range (DAQBROKER_CORRECTION_MAX_READINGS): "
                        "delete it in shorter ranges"
                    )
            else:
                plan = corrections.delete_channel_readings(
                    channel, data["start"], data["end"], reason=data["reason"], **audit.origin(request)
                )
        except corrections.CorrectionRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(plan.as_dict())
