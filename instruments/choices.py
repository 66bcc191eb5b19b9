from django.db import models


class SourceKind(models.TextChoices):
    FILE = "file", "File"
    SERIAL = "serial", "Serial port"
    TCP = "tcp", "TCP instrument"
    MODBUS = "modbus", "Modbus device (TCP or RTU)"
    MQTT = "mqtt", "MQTT broker"
    OPCUA = "opcua", "OPC UA server"
    AGENT = "agent", "Remote agent"


# Sources read over a connection kept open by a long-lived collector (manage.py run_stream_collectors), not
# by the periodic dispatcher: daqbroker_agent.config.STREAMING_KINDS.
STREAMING_KINDS = (SourceKind.MQTT, SourceKind.OPCUA)


class ChannelKind(models.TextChoices):
    NUMERIC = "numeric", "Numeric"
    TEXT = "text", "Text"
    DERIVED = "derived", "Derived (computed from other channels)"


class ColumnKind(models.TextChoices):
    """The type of a run list's parameter column: what a run's value in it must be."""

    NUMBER = "number", "Number (with units)"
    TEXT = "text", "Text"
    BOOLEAN = "boolean", "Yes/no"
    CHOICE = "choice", "Choice from a list"
