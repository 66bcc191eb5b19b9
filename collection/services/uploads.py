"""Uploads through the ingest API: decode the body, recognise a retried batch, call ``ingest_samples``."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction

from collection.choices import Origin
from collection.ingest_formats import decode_ingest_body, iter_slug_pairs
from collection.models import IngestBatch
from collection.services.ingest import ingest_samples
from instruments.models import Channel

MAX_LISTED_REJECTIONS = 1000


@dataclass
class UploadResult:
    body: dict
    replayed: bool


def channel_resolver(writable_instruments: set[int] | None):
    """Maps ``instrument-slug/channel-slug`` references to ids, among the instruments the sender may write."""

    def resolve(refs: set[str]) -> dict[str, int]:
        instruments, channels = iter_slug_pairs(refs)
        rows = Channel.objects.filter(instrument__slug__in=instruments, slug__in=channels)
        if writable_instruments is not None:
            rows = rows.filter(instrument_id__in=writable_instruments)
        found = {f"{inst}/{chan}": pk for inst, chan, pk in rows.values_list("instrument__slug", "slug", "id")}
        return {ref: found[ref] for ref in refs if ref in found}

    return resolve


def ingest_upload(
    body: bytes,
    content_type: str,
    *,
    sender: str,
    writable_instruments: set[int] | None,
    max_readings: int,
    origin: str = Origin.API,
    batch_id: str = "",
    time_unit: str = "",
) -> UploadResult:
    """Store an uploaded batch; raises ``PayloadError`` for a body that cannot be read at all."""
    payload = decode_ingest_body(
        body,
        content_type,
        max_readings=max_readings,
        resolve=channel_resolver(writable_instruments),
        batch_id=batch_id,
        time_unit=time_unit,
    )
    if payload.batch_id:
        previous = IngestBatch.objects.filter(sender=sender, batch_id=payload.batch_id).first()
        if previous is not None:
            return UploadResult(previous.result, replayed=True)
    try:
        with transaction.atomic():
            result = ingest_samples(
                payload.batch,
                origin=origin,
                writable_instruments=writable_instruments,
                rejections=payload.rejections,
                batch_id=payload.batch_id,
            )
            response = {
                "batch_id": payload.batch_id or None,
                **result.as_dict(),
                "rejections": [
                    {"index": r.index, "channel": _as_sent(payload.refs, r), "reason": r.reason}
                    for r in sorted(result.rejected, key=lambda r: -1 if r.index is None else r.index)[
                        :MAX_LISTED_REJECTIONS
                    ]
                ],
                "rejections_truncated": result.rejected_count > MAX_LISTED_REJECTIONS,
            }
            if payload.batch_id:
                IngestBatch.objects.create(sender=sender, batch_id=payload.batch_id, result=response)
    except IntegrityError:
        # The same batch arrived concurrently and the other request stored it first.
        previous = IngestBatch.objects.filter(sender=sender, batch_id=payload.batch_id).first()
        if previous is None:
            raise
        return UploadResult(previous.result, replayed=True)
    return UploadResult(response, replayed=False)


def _as_sent(refs: list, rejection) -> object:
    if rejection.index is not None and 0 <= rejection.index < len(refs):
        ref = refs[rejection.index]
        return ref if isinstance(ref, str | int) else repr(ref)
    return rejection.channel_ref
