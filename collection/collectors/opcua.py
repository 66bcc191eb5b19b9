"""OPC UA data changes to a batch for ``ingest_samples`` (the stream collector, ``collection.streams``). The
protocol and the status mapping are the agent's (``daqbroker_agent.opcua``): Good values are stored, Uncertain
ones stored flagged *suspect*, Bad ones (and values that are not a number or text) quarantined with the node
id and the status name."""

from __future__ import annotations

import numpy as np

from collection.choices import Quality
from collection.services.ingest import Rejection, SampleBatch
from daqbroker_agent.opcua import Change, ChangeMapper
from daqbroker_agent.parsing import us_to_datetime


def to_batch(
    mapper: ChangeMapper, by_field: dict[str, list[int]], changes: list[Change]
) -> tuple[SampleBatch, list[Rejection]]:
    ids: list[int] = []
    stamps: list[int] = []
    values: list[object] = []
    quality: list[int] = []
    origin: list[dict] = []
    rejections: list[Rejection] = []
    for change in changes:
        readings, problems = mapper.map(change)
        context = {"node": change.node, "received": change.received_us, "connection": f"opcua {change.node}"}
        for name, ts, value, uncertain in readings:
            for channel_id in by_field.get(name, ()):
                ids.append(channel_id)
                stamps.append(ts)
                values.append(value)
                quality.append(int(Quality.SUSPECT) if uncertain else int(Quality.OK))
                origin.append(context if not uncertain else {**context, "status": mapper.uncertain_reason(change)})
        for problem in problems:
            known: list[int | None] = list(by_field.get(problem.field, ()))
            for refused in known or [None]:
                rejections.append(
                    Rejection(
                        reason=problem.reason,
                        channel_id=refused,
                        channel_ref=str(refused) if refused else "",
                        raw_time=us_to_datetime(change.ts).isoformat(),  # a reading: replay stores it as sent
                        raw_value=problem.value,
                        context={**context, **problem.context},
                    )
                )
    batch = SampleBatch(
        np.array(ids, dtype=np.int64),
        np.array(stamps, dtype=np.int64),
        np.array(values, dtype=object),
        where=lambda i: origin[i],
        quality=np.array(quality, dtype=np.int16),
    )
    return batch, rejections
