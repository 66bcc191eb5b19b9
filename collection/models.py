"""Readings storage.

Readings live in narrow tables keyed by (channel, ts). Timestamps are stored as whole microseconds since
the Unix epoch (UTC) in a BIGINT on every engine: it is exact, the same on SQLite, PostgreSQL and
MariaDB, makes bucket arithmetic for rollups a portable integer division, and is the cheapest form to
bulk-load (PERFORMANCE.md: BIGINT µs loads ~1.5x faster than DATETIME(6) on MariaDB). The channel key
has no database-level foreign key constraint and no index of its own (the primary key leads with it):
``ingest_samples`` checks every channel before writing, and a per-row constraint check would cost on
every bulk load; deleting a channel deletes its readings through Django's cascade. On SQLite the
tables are WITHOUT ROWID (migration 0002): the key is the table, ~27 instead of ~48 bytes a reading.
"""

from django.conf import settings
from django.db import models

from collection.choices import Origin, Quality, RejectionKind, RollupTier, RunStatus
from collection.reasons import visible_text


class Sample(models.Model):
    pk = models.CompositePrimaryKey("channel_id", "ts")
    channel = models.ForeignKey(
        "instruments.Channel", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="samples"
    )
    ts = models.BigIntegerField(help_text="µs since the Unix epoch, UTC")
    value = models.FloatField()
    quality = models.PositiveSmallIntegerField(choices=Quality.choices, default=Quality.OK)

    class Meta:
        verbose_name = "numeric reading"

    def __str__(self) -> str:
        return f"{self.channel_id}@{self.ts}={self.value}"


class TextSample(models.Model):
    pk = models.CompositePrimaryKey("channel_id", "ts")
    channel = models.ForeignKey(
        "instruments.Channel",
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,
        related_name="text_samples",
    )
    ts = models.BigIntegerField(help_text="µs since the Unix epoch, UTC")
    value = models.TextField()
    quality = models.PositiveSmallIntegerField(choices=Quality.choices, default=Quality.OK)

    class Meta:
        verbose_name = "text reading"

    def __str__(self) -> str:
        return f"{self.channel_id}@{self.ts}={self.value[:40]}"


class ReadingBlock(models.Model):
    """One channel's readings of one closed time window, compressed (``collection.codec``, docs/storage.md).

    ``window_start`` is the window's start in µs since the epoch, a multiple of ``BLOCK_WIDTH_US``; the three
    byte strings are the window's timestamps, values (float64, or text for a text channel) and quality
    flags, each self-describing. Written only by ``collection.services.blocks``, read through its merged
    read by every raw reader; compaction is off unless ``DAQBROKER_COMPACT_AFTER`` is set.
    """

    pk = models.CompositePrimaryKey("channel_id", "window_start")
    channel = models.ForeignKey(
        "instruments.Channel", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    window_start = models.BigIntegerField(help_text="window start, µs since the Unix epoch, UTC")
    count = models.PositiveIntegerField(help_text="readings in the block")
    first_ts = models.BigIntegerField()
    last_ts = models.BigIntegerField()
    ts_data = models.BinaryField()
    value_data = models.BinaryField()
    quality_data = models.BinaryField()

    class Meta:
        verbose_name = "reading block"

    def __str__(self) -> str:
        return f"{self.channel_id}@{self.window_start} n={self.count}"


class RejectedSample(models.Model):
    """A reading that could not be stored, kept with its raw form and the reason, never silently lost."""

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    source = models.ForeignKey(
        "instruments.DataSource",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,  # covered by the (source, received_at) index
        related_name="rejected_samples",
    )
    channel = models.ForeignKey(
        "instruments.Channel",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,  # covered by the (channel, received_at) index
        related_name="rejected_samples",
    )
    channel_ref = models.CharField(max_length=300, blank=True, help_text="The channel as the sender named it.")
    raw_time = models.CharField(max_length=100, blank=True)
    raw_value = models.TextField(blank=True, help_text="The value, or the whole line when the line did not parse.")
    reason = models.CharField(max_length=300)
    kind = models.CharField(
        max_length=20,
        choices=RejectionKind.choices,
        default=RejectionKind.OTHER,
        help_text="The kind of problem, a stable code for grouping and filtering; the reason keeps the detail.",
    )
    batch_id = models.CharField(max_length=100, blank=True)
    context = models.JSONField(default=dict, blank=True, help_text="Where it came from: file and line, index, ...")
    # Who sent it, for uploads through the API: a user (personal token or session) or an agent. Server
    # collectors leave both empty: their data source (``source``) is the sender.
    sender_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,  # covered by the (sender_user, received_at) index
        related_name="+",
        help_text="The user who sent it (API uploads).",
    )
    sender_agent = models.ForeignKey(
        "accounts.Agent",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,  # covered by the (sender_agent, received_at) index
        related_name="+",
        help_text="The agent that sent it.",
    )
    count = models.PositiveIntegerField(
        default=1,
        help_text="Readings this record stands for: more than one for an aggregate record (channels the sender "
        "may not write, or past the quarantine limits), whose context lists the first few.",
    )
    config_snapshot = models.ForeignKey(
        "collection.SourceConfigSnapshot",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The data source's configuration when this was set aside (records of a data source).",
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["channel", "-received_at"]),
            models.Index(fields=["source", "-received_at"]),
            models.Index(fields=["sender_user", "-received_at"], name="rejected_sender_user_time"),
            models.Index(fields=["sender_agent", "-received_at"], name="rejected_sender_agent_time"),
            models.Index(fields=["kind", "-received_at"], name="rejected_kind_time"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.where() or f'#{self.pk}'}"

    @property
    def is_line(self) -> bool:
        """A whole line as read (it did not parse, or a field was missing), rather than one reading."""
        return not self.raw_time and self.count == 1 and self.origin != Origin.API

    def where(self) -> str:
        """Where it came from, for a person: file and line, connection, or the index in the sender's batch."""
        context = self.context if isinstance(self.context, dict) else {}
        place = context.get("file") or context.get("connection") or ""
        line = context.get("line")
        if place and line:
            return f"{place}, line {line}"
        if place:
            return str(place)
        if line:
            return f"line {line}"
        if context.get("index") is not None:
            return (
                f"reading {context['index']} of batch {self.batch_id}"
                if self.batch_id
                else f"reading {context['index']}"
            )
        return self.channel_ref

    def preview(self, limit: int = 120) -> str:
        """The raw line or value with blanks and control characters made visible, cut to ``limit``."""
        return visible_text(self.raw_value, limit)


class SourceConfigSnapshot(models.Model):
    """A data source's configuration as it was when something of it was set aside: one row per distinct
    configuration (by digest), shared by every quarantine record made under it, so a person reading a
    record sees the configuration that refused it beside the one that would read it now."""

    source = models.ForeignKey("instruments.DataSource", on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=64, help_text="SHA-256 of the configuration as canonical JSON.")
    config = models.JSONField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "digest"], name="config_snapshot_unique")]

    def __str__(self) -> str:
        return f"configuration {self.digest[:10]} of source {self.source_id}"


class CollectionRun(models.Model):
    """One collection of one data source, shown beside the source in the admin."""

    source = models.ForeignKey("instruments.DataSource", on_delete=models.CASCADE, related_name="runs")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    accepted = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0, help_text="readings whose very value was already stored")
    conflicts = models.PositiveIntegerField(
        default=0, help_text="readings whose time already held another value: that one stays, these are quarantined"
    )
    rejected = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="why it failed, or (a warning run) what looks wrong")
    note = models.TextField(
        blank=True, help_text="what the run did besides collecting, such as how far a re-read has come"
    )
    worker = models.CharField(max_length=200, blank=True, help_text="host and process that ran it")

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["source", "-started_at"]), models.Index(fields=["started_at"])]

    def __str__(self) -> str:
        return f"{self.source} {self.started_at:%Y-%m-%d %H:%M:%S} {self.status}"


class IngestBatch(models.Model):
    """A client's ``batch_id``, remembered so that a retried upload is answered, not stored again.

    Storage is idempotent anyway; this lets the sender see that its retry was recognised and returns the
    original counts without re-validating the readings.
    """

    sender = models.CharField(max_length=100, help_text="who sent it: agent:<id>, token:<id> or user:<id>")
    batch_id = models.CharField(max_length=100)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    result = models.JSONField(default=dict, help_text="the response given the first time")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["sender", "batch_id"], name="ingestbatch_unique_per_sender")]

    def __str__(self) -> str:
        return f"{self.sender} {self.batch_id}"


class Rollup(models.Model):
    """One bucket of one tier of one numeric channel: a summary of its quality-OK readings.

    Keyed like ``Sample`` by a composite primary key that leads with the channel, so a channel's buckets
    of one tier in a time range are one index range. ``bucket`` is the bucket's start in µs since the
    epoch (a multiple of the tier width); readings flagged with any quality other than OK are not
    summarised, only counted in ``flagged``. Written only by ``collection.services.rollups``.
    """

    pk = models.CompositePrimaryKey("channel_id", "tier", "bucket")
    channel = models.ForeignKey(
        "instruments.Channel", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="rollups"
    )
    tier = models.PositiveIntegerField(choices=RollupTier.choices, help_text="bucket width in seconds")
    bucket = models.BigIntegerField(help_text="bucket start, µs since the Unix epoch, UTC")
    count = models.BigIntegerField(help_text="quality-OK readings in the bucket")
    flagged = models.BigIntegerField(default=0, help_text="readings in the bucket flagged with another quality")
    min_value = models.FloatField(null=True)
    max_value = models.FloatField(null=True)
    sum_value = models.FloatField(default=0.0)
    m2 = models.FloatField(default=0.0, help_text="sum of squared deviations from the bucket mean")
    first_ts = models.BigIntegerField(null=True)
    last_ts = models.BigIntegerField(null=True)

    class Meta:
        verbose_name = "rollup bucket"

    def __str__(self) -> str:
        return f"{self.channel_id} {self.get_tier_display()}@{self.bucket} n={self.count}"

    @property
    def mean(self) -> float | None:
        return self.sum_value / self.count if self.count else None


class RollupBlock(models.Model):
    """One channel's buckets of one packed tier (10 s or 1 min) in one closed window, compressed.

    Compaction packs the 10 s and 1 min buckets of closed hours
    (``collection.services.rollups.pack_window``); a packed window's buckets of that tier live here and not
    in ``Rollup``, never in both. ``data`` is a ``collection.codec`` table of the bucket columns
    (``rollups.BUCKET_COLUMNS``); ``count`` is how many buckets it holds. Read and written only by
    ``collection.services.rollups``: every writer of buckets turns the packed windows it touches back into
    rows first (docs/storage.md).
    """

    pk = models.CompositePrimaryKey("channel_id", "tier", "window_start")
    channel = models.ForeignKey(
        "instruments.Channel", on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    tier = models.PositiveIntegerField(choices=RollupTier.choices, help_text="bucket width in seconds")
    window_start = models.BigIntegerField(help_text="window start, µs since the Unix epoch, UTC")
    count = models.PositiveIntegerField(help_text="buckets in the block")
    data = models.BinaryField()

    class Meta:
        verbose_name = "packed rollup buckets"
        verbose_name_plural = "packed rollup buckets"

    def __str__(self) -> str:
        return f"{self.channel_id} {self.get_tier_display()}@{self.window_start} n={self.count}"


class RollupBacklog(models.Model):
    """A span of a channel's readings that changed and whose rollup buckets are not recomputed yet.

    Appended after every ingest (on SQLite and MariaDB mostly by way of the channels' pending spans, which
    the workers move here: ``collection.services.pending``) and by deletions; consumed by
    ``refresh_rollups`` in the transaction
    that writes the recomputed buckets, so a reader sees either stale buckets plus their backlog row or
    fresh buckets and no row. The query service treats pending spans as holes and reads raw there.
    """

    channel = models.ForeignKey("instruments.Channel", on_delete=models.CASCADE, db_constraint=False, related_name="+")
    start_ts = models.BigIntegerField(help_text="first changed reading, µs since the epoch")
    end_ts = models.BigIntegerField(help_text="last changed reading (inclusive), µs since the epoch")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "rollup backlog span"

    def __str__(self) -> str:
        return f"{self.channel_id} [{self.start_ts}, {self.end_ts}]"


class FollowUpBacklog(models.Model):
    """After-ingest work (spike checks, derived channels, alarm rules), kept by every ingest (on SQLite and
    MariaDB mostly by way of the channels' pending spans, which the workers move here:
    ``collection.services.pending``) and done by ``replay_follow_ups``, woken after the ingest or run
    periodically (the broker down)."""

    spans = models.JSONField(help_text='{"channel id": [first µs, last µs]} of the readings just stored')
    origin = models.CharField(max_length=20)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "pending follow-up"

    def __str__(self) -> str:
        return f"{len(self.spans)} channel(s) from {self.origin} at {self.created:%Y-%m-%d %H:%M:%S}"


class RollupState(models.Model):
    """Per-channel rollup bookkeeping; its row is also the lock one worker holds while recomputing."""

    channel = models.OneToOneField(
        "instruments.Channel", on_delete=models.CASCADE, primary_key=True, db_constraint=False, related_name="+"
    )
    raw_kept_from = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Retention removed raw readings before this instant (µs): buckets before it are kept as they are.",
    )
    refreshed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"rollups of {self.channel_id}"


class RawFile(models.Model):
    """A raw instrument file an agent shipped (``collection.services.raw_files``, docs/raw-files.md).

    The bytes are kept once per content, by their sha256, under ``DAQBROKER_ARCHIVE_DIR/sha256/``; each row
    says which instrument's source had which file with that content (a file that grew is a new row, the same
    content shipped again is not). Visible to whoever may view the instrument.
    """

    instrument = models.ForeignKey("instruments.Instrument", on_delete=models.CASCADE, related_name="raw_files")
    source = models.ForeignKey(
        "instruments.DataSource", on_delete=models.SET_NULL, null=True, blank=True, related_name="raw_files"
    )
    agent = models.ForeignKey("accounts.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    name = models.CharField(max_length=255, help_text="The file's name.")
    path = models.CharField(max_length=1000, help_text="Where it was on the agent's machine.")
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.PositiveBigIntegerField()
    modified = models.DateTimeField(help_text="The file's modification time on the agent's machine.")
    received = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-modified", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["instrument", "path", "sha256"], name="raw_file_once_per_content"),
        ]
        indexes = [models.Index(fields=["instrument", "-modified"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256[:12]})"


class RawUpload(models.Model):
    """An agent's upload of a raw file in progress: its bytes so far are in a part file of its own
    (``collection.services.raw_files.part_path``); resumed from ``received`` after an interruption."""

    agent = models.ForeignKey("accounts.Agent", on_delete=models.CASCADE, related_name="+")
    source = models.ForeignKey("instruments.DataSource", on_delete=models.CASCADE, related_name="+")
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    name = models.CharField(max_length=255)
    path = models.CharField(max_length=1000)
    modified = models.DateTimeField()
    received = models.PositiveBigIntegerField(default=0, help_text="Bytes received so far.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "sha256"], name="raw_upload_once_per_agent")]

    def __str__(self) -> str:
        return f"{self.name}: {self.received} of {self.size} bytes"


# Spike checks and alarms live in collection.alarms; imported here so that Django registers their models.
from collection.alarms.models import (  # noqa: E402, F401
    AlarmEvent,
    AlarmNotification,
    AlarmRule,
    AlarmState,
    AlarmSubscription,
    SpikeCheck,
)
