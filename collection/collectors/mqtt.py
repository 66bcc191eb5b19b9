"""MQTT messages to a batch for ``ingest_samples``: shared by the stream collector (``collection.streams``) and
the quarantine's replay and preview (``collection.services.quarantine``). The protocol and the mapping of
topics and payloads are the agent's (``daqbroker_agent.mqtt``)."""

from __future__ import annotations

import numpy as np

from collection.services.ingest import Rejection, SampleBatch
from daqbroker_agent.mqtt import Message, MessageMapper
from instruments.choices import SourceKind
from instruments.models import DataSource


def mqtt_config(source: DataSource, config: dict) -> dict | None:
    """The MQTT settings of a source reading a broker (the server's, or an agent's ``collect``), else None.
    ``config`` is the source's validated configuration."""
    if source.kind == SourceKind.MQTT:
        return config
    if source.kind == SourceKind.AGENT and config.get("collect", {}).get("kind") == "mqtt":
        return config["collect"]
    return None


def message_from(payload: str, context: dict, received_us: int) -> Message:
    """A quarantined message as it arrived (its payload kept as text, its topic in the context)."""
    return Message(str(context.get("topic", "")), payload.encode(), received_us)


def to_batch(
    mapper: MessageMapper,
    by_field: dict[str, list[int]],
    messages: list[Message],
    contexts: list[dict] | None = None,
) -> tuple[SampleBatch, list[Rejection]]:
    """The readings of ``messages`` for the channels taking their fields, and the rejections (with topic).
    ``contexts``: what to keep with each message's rejections (default: its topic and receipt time)."""
    ids: list[int] = []
    stamps: list[int] = []
    values: list[object] = []
    origin: list[dict] = []
    rejections: list[Rejection] = []
    for n, message in enumerate(messages):
        readings, problems = mapper.map(message)
        context = contexts[n] if contexts is not None else {"topic": message.topic, "received": message.received_us}
        for name, ts, value in readings:
            for channel_id in by_field.get(name, ()):
                ids.append(channel_id)
                stamps.append(ts)
                values.append(value)
                origin.append(context)
        for problem in problems:
            known: list[int | None] = list(by_field.get(problem.field, ())) if problem.field else []
            for refused in known or [None]:
                rejections.append(
                    Rejection(
                        reason=problem.reason,
                        channel_id=refused,
                        channel_ref=str(refused) if refused else "",
                        raw_value=problem.payload,
                        context={**context, **problem.context, "connection": f"mqtt {problem.topic}"},
                    )
                )
    batch = SampleBatch(
        np.array(ids, dtype=np.int64),
        np.array(stamps, dtype=np.int64),
        np.array(values, dtype=object),
        where=lambda i: origin[i],
    )
    return batch, rejections
