"""Quarantined MQTT messages: kept with their topic, previewed and replayed with the source's current fields
(the same mapping as the stream collector's, ``collection.collectors.mqtt``)."""

from __future__ import annotations

import json

import pytest

from collection.choices import Origin
from collection.collectors.mqtt import to_batch
from collection.models import RejectedSample, Sample
from collection.services import quarantine as q
from collection.services.ingest import ingest_samples
from daqbroker_agent.mqtt import Message, MessageMapper
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000


def test_a_payload_quarantined_for_its_path_is_stored_once_the_field_is_fixed():
    owner = make_user()
    instrument = make_instrument(owner)
    source = DataSource.objects.create(
        instrument=instrument,
        name="broker",
        kind=SourceKind.MQTT,
        config={
            "host": "127.0.0.1",
            "fields": [{"name": "t", "topic": "lab/+/env", "path": "temp"}],
            "timestamp": {"path": "ts", "format": "epoch"},
        },
    )
    channel = make_channel(instrument, slug="t", source=source, source_field="t")
    config = source.validated_config()
    messages = [
        Message("lab/a/env", json.dumps({"ts": T0, "temperature": 21.5}).encode(), 1),  # the publisher renamed it
        Message("lab/a/env", b"{garbled", 2),
    ]
    batch, rejections = to_batch(MessageMapper(config), {"t": [channel.pk]}, messages)
    ingest_samples(batch, origin=Origin.MQTT, source_id=source.pk, rejections=rejections)
    renamed = RejectedSample.objects.get(source=source, channel=channel)
    assert renamed.context["topic"] == "lab/a/env" and "'temp' is missing" in renamed.reason
    assert renamed.where().startswith("mqtt lab/a/env")
    assert q.parse_preview(renamed) == {"error": renamed.reason}

    source.config = {**source.config, "fields": [{"name": "t", "topic": "lab/+/env", "path": "temperature"}]}
    source.save()
    assert q.parse_preview(RejectedSample.objects.get(pk=renamed.pk))["fields"] == {"t": "21.5"}
    outcome = q.replay(q.visible_to(owner, q.permissions.CHANGE), actor=owner)
    assert (outcome.records, outcome.stored, outcome.still_rejected) == (2, 1, 1)
    assert list(Sample.objects.filter(channel=channel).values_list("ts", "value")) == [(T0 * 1_000_000, 21.5)]
    again = RejectedSample.objects.get(source=source)
    assert again.raw_value == "{garbled" and again.reason.startswith("payload is not JSON")
    assert again.context["topic"] == "lab/a/env" and again.context["replay_of"]
