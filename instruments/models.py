"""The instrument registry: instruments, their data sources, channels and logbook."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any, Self

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Coalesce, NullIf
from django.urls import reverse
from django.utils import timezone

from daqbroker_agent.config import ConfigError, validate_source_config
from daqbroker_agent.parsing import us_to_datetime
from instruments.choices import ChannelKind, ColumnKind, SourceKind
from instruments.expressions import ExpressionError, parse_expression
from instruments.units import check_units

SLUG_TAKEN = (
    "This slug is already in use on this site (instrument slugs are unique across all instruments, "
    "including ones you cannot see). Choose another."
)


class Instrument(models.Model):
    name = models.CharField(max_length=200)
    # One namespace for the whole site (URLs, agents' "instrument/channel" references): a taken slug is
    # refused with the same words whether or not the instrument is visible to the person asking, so the
    # answer says only that the slug is in use (docs/security.md, "What names reveal").
    slug = models.SlugField(
        max_length=100,
        unique=True,
        help_text="Short name used in URLs and by agents; unique across the whole site.",
        error_messages={"unique": SLUG_TAKEN},
    )
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="owned_instruments",
        help_text="Has every permission on the instrument.",
    )
    contact_email = models.EmailField(blank=True, help_text="Who to tell when something is wrong.")
    location = models.CharField(max_length=200, blank=True)
    latitude = models.FloatField(null=True, blank=True, validators=[MinValueValidator(-90), MaxValueValidator(90)])
    longitude = models.FloatField(null=True, blank=True, validators=[MinValueValidator(-180), MaxValueValidator(180)])
    active = models.BooleanField(default=True, help_text="Inactive instruments are not collected.")
    raw_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Delete raw readings older than this many days (rollup tiers are kept). Empty: keep forever.",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    # How fresh its readings are, kept here so that the home page filters and counts 10,000 instruments
    # without grouping 100,000 channels (docs/performance.md#many-things): the latest reading of any of its
    # channels (moved forward by ingest, in the ingest transaction) and the shortest expected interval between
    # readings of its channels (``channel_interval_expression``; kept by ``refresh_instrument_freshness``
    # whenever a channel or source is saved or deleted).
    last_reading_ts = models.BigIntegerField(null=True, blank=True, editable=False, help_text="µs since the epoch.")
    reading_interval_seconds = models.PositiveIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        # The lists' order (home page, admin, channel lists by instrument name): read in order, not sorted.
        indexes = [models.Index(fields=["name", "id"], name="instrument_name_order")]
        permissions = [
            ("collect_instrument", "Can push readings to the instrument"),
            ("share_instrument", "Can manage who may see the instrument"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(latitude__isnull=True) | models.Q(latitude__gte=-90, latitude__lte=90),
                name="instrument_latitude_range",
            ),
            models.CheckConstraint(
                condition=models.Q(longitude__isnull=True) | models.Q(longitude__gte=-180, longitude__lte=180),
                name="instrument_longitude_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("admin:instruments_instrument_change", args=[self.pk])


class LogbookEntry(models.Model):
    instrument = models.ForeignKey(Instrument, on_delete=models.CASCADE, related_name="logbook")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    occurred_at = models.DateTimeField(default=timezone.now, help_text="When the logged event happened.")
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)
    # The author stays who wrote the entry; the last person who changed it is kept here (and each change
    # is in the audit trail with its diff).
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    edited_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-occurred_at"]
        verbose_name_plural = "logbook entries"
        indexes = [models.Index(fields=["instrument", "-occurred_at"])]

    def __str__(self) -> str:
        return f"{self.instrument} {self.occurred_at:%Y-%m-%d %H:%M}"


WAITING_FOR_CHANNELS = "waiting for channels"


def with_channel_counts(queryset: models.QuerySet[DataSource]) -> models.QuerySet[DataSource]:
    """``queryset`` annotated for :attr:`DataSource.waiting_for_channels` (no query per source). A subquery
    per row, not a grouped count: a paginated list counts only the rows it shows, and its total count leaves
    the annotation out (with a GROUP BY it counted every source's channels: seconds at 100,000 channels)."""
    return queryset.annotate(_collected_channels=channel_count_subquery("source", exclude_derived=True))


def channel_count_subquery(field: str, *, exclude_derived: bool = False):
    """The number of channels whose ``field`` is the outer row, as a correlated subquery (0 when none)."""
    channels = Channel.objects.filter(**{field: models.OuterRef("pk")})
    if exclude_derived:
        channels = channels.exclude(kind=ChannelKind.DERIVED)
    counted = channels.order_by().values(field).annotate(n=models.Count("pk")).values("n")
    return Coalesce(models.Subquery(counted, output_field=models.IntegerField()), 0)


class DataSource(models.Model):
    instrument = models.ForeignKey(Instrument, on_delete=models.CASCADE, related_name="sources")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=SourceKind.choices)
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per-kind settings, checked when saved (see docs/data-sources.md).",
    )
    interval_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="How often the source is collected."
    )
    enabled = models.BooleanField(default=True)
    agent = models.ForeignKey(
        "accounts.Agent",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sources",
        help_text="For a remote-agent source: the agent that collects it (it must be allowed to push to the "
        "instrument). Empty for every other kind.",
    )

    # Who last set where the source reads (accounts.targets): an administrator's out-of-rule target runs
    # only while they are still one; a non-administrator's change of the target must pass the rules.
    target_set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
        help_text="Who last set the source's path, address or device.",
    )

    # Collection state, written by the collectors only.
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False, db_index=True)
    cursor = models.JSONField(default=dict, blank=True, editable=False, help_text="Where incremental reading resumes.")
    # A lease taken by compare-and-set, so one source is never collected by two workers at once.
    lease_owner = models.CharField(max_length=64, blank=True, editable=False)
    lease_expires = models.DateTimeField(null=True, blank=True, editable=False)
    # A re-read asked for (collection.services.corrections.request_reread), done by the next run: from the
    # start of the files, or from the first line at or after ``reread_from``; replacing differing values.
    reread_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    reread_from = models.BigIntegerField(null=True, blank=True, editable=False, help_text="µs since the epoch, UTC")
    reread_replace = models.BooleanField(default=False, editable=False)
    cursor_started_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When reading from the current position began (first run, or the last re-read): channels "
        "added after it have not had the lines read before.",
    )

    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["instrument", "name"], name="datasource_unique_name_per_instrument"),
            models.CheckConstraint(condition=models.Q(interval_seconds__gte=1), name="datasource_interval_positive"),
        ]
        # The few failing sources (the home page's "failing" filter and count), without reading every source.
        indexes = [
            models.Index(
                fields=["instrument"], name="datasource_failing", condition=models.Q(consecutive_failures__gt=0)
            )
        ]

    def __str__(self) -> str:
        return f"{self.instrument.slug}/{self.name}"

    def save(self, *args, **kwargs) -> None:
        # Refuse a broken configuration whatever the path (admin, API, shell, fixtures): at save time.
        update_fields = kwargs.get("update_fields")
        if update_fields is None or {"config", "kind"} & set(update_fields):
            self.config = self.validated_config()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        self.config = self.validated_config()
        self._clean_agent()

    def _clean_agent(self) -> None:
        """Only a remote-agent source has an agent, it must have one, and that agent may push to the instrument.

        Checked in ``clean()`` (admin, API), not in ``save()``: deleting an agent empties the field
        (SET_NULL), and the source then waits, unserved, for another agent.
        """
        if self.kind != SourceKind.AGENT:
            if self.agent_id is not None:
                raise ValidationError({"agent": "Only a remote-agent source is collected by an agent."})
            return
        if self.agent_id is None:
            raise ValidationError({"agent": "A remote-agent source needs the agent that collects it."})
        if (
            self.instrument_id is not None
            and self.agent is not None
            and not self.agent.instruments.filter(pk=self.instrument_id).exists()
        ):
            message = f"Agent {self.agent.name!r} may not push to this instrument: add it to the agent's instruments."
            raise ValidationError({"agent": message})

    def collected_channels(self) -> models.QuerySet[Channel]:
        """The channels that take this source's fields (derived channels compute theirs)."""
        return self.channels.exclude(kind=ChannelKind.DERIVED)

    @property
    def waiting_for_channels(self) -> bool:
        """No channel maps any of this source's fields: reading it would store nothing, so it is not read
        (and its cursor does not move) until a channel is added. Uses the ``_collected_channels`` count when
        the queryset was annotated with it (:func:`with_channel_counts`)."""
        count = getattr(self, "_collected_channels", None)
        if count is None:
            return not self.collected_channels().exists()
        return count == 0

    @property
    def rereadable(self) -> bool:
        """Whether a re-read means something here: only files can be read again (a serial line or a TCP
        stream is gone once read, and an agent's files are read on its own machine)."""
        return self.kind == SourceKind.FILE

    def channels_added_since_read(self) -> list[Channel]:
        """Channels taking this source's fields that were added after it started reading from where it is
        (they missed the lines read before): the admin and the pages offer a re-read for them."""
        return channels_added_since_read([self]).get(self.pk, [])

    @property
    def offers_reread(self) -> bool:
        """Whether channels added since it started reading could be offered a re-read (before looking)."""
        return self.rereadable and self.cursor_started_at is not None and self.reread_requested_at is None

    @property
    def collection_state(self) -> str:
        """In words, as the admin, the API and the pages show it."""
        if not self.enabled:
            return "disabled"
        if self.waiting_for_channels:
            return WAITING_FOR_CHANNELS
        if self.kind == SourceKind.AGENT:
            return "pushed by its agent"
        if self.consecutive_failures:
            return "failing"
        return "collecting" if self.last_success_at else "not collected yet"

    def validated_config(self) -> dict:
        """The configuration with defaults filled in, or ValidationError naming the bad option."""
        if self.kind not in SourceKind.values:
            raise ValidationError({"kind": f"{self.kind!r} is not a kind of source"})
        try:
            return validate_source_config(self.kind, self.config, prefix="")
        except ConfigError as exc:
            raise ValidationError({"config": f"{exc.field}: {exc.message}" if exc.field else exc.message}) from None


PENDING_FIELDS = ("pending_from", "pending_to")


class Channel(models.Model):
    instrument = models.ForeignKey(Instrument, on_delete=models.CASCADE, related_name="channels")
    source = models.ForeignKey(
        DataSource,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="channels",
        help_text="Where the readings come from; empty for derived channels.",
    )
    name = models.CharField(max_length=200)
    slug = models.SlugField(
        max_length=100, help_text="Unique within the instrument; used by agents and in expressions."
    )
    kind = models.CharField(max_length=16, choices=ChannelKind.choices, default=ChannelKind.NUMERIC)
    units = models.CharField(
        max_length=64,
        blank=True,
        help_text='For example "degC", "W/m^2", "V"; stored in one spelling ("deg C" and "°C" become "degC").',
    )
    description = models.TextField(blank=True)
    source_field = models.CharField(
        max_length=200,
        blank=True,
        help_text="How the channel is found in its source: column name or zero-based index, regex group, register.",
    )
    valid_min = models.FloatField(null=True, blank=True, help_text="Readings below are flagged out of range.")
    valid_max = models.FloatField(null=True, blank=True, help_text="Readings above are flagged out of range.")
    missing_values = models.JSONField(
        default=list, blank=True, help_text="Sentinels meaning 'no reading', e.g. [-9999, -7999]."
    )
    expression = models.TextField(blank=True, help_text="For derived channels, e.g. (t1 + t2) / 2.")
    expected_interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Time between readings; a channel silent for much longer is stale."
    )
    last_ts = models.BigIntegerField(null=True, blank=True, editable=False, help_text="µs since the epoch, UTC.")
    last_value = models.FloatField(null=True, blank=True, editable=False)
    last_quality = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    last_text = models.TextField(blank=True, editable=False)
    # Readings stored in [pending_from, pending_to] whose follow-up work (rollups, spike checks, derived
    # channels, alarm rules) a worker has not taken up yet: extended by ingest in the statement that moves the
    # last values, moved into the backlogs by the workers (collection.services.pending; docs/performance.md).
    pending_from = models.BigIntegerField(null=True, blank=True, editable=False, help_text="µs since the epoch.")
    pending_to = models.BigIntegerField(null=True, blank=True, editable=False, help_text="µs since the epoch.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument__name", "name"]
        indexes = [
            # The channels with a pending span, found without reading all of them (a worker looks every few
            # seconds; a site may hold 100,000 channels, few of them pending at once).
            models.Index(fields=["pending_from"], name="channel_pending"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["instrument", "slug"], name="channel_unique_slug_per_instrument"),
            models.UniqueConstraint(fields=["instrument", "name"], name="channel_unique_name_per_instrument"),
            models.CheckConstraint(
                condition=models.Q(valid_min__isnull=True)
                | models.Q(valid_max__isnull=True)
                | models.Q(valid_min__lte=models.F("valid_max")),
                name="channel_valid_range_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument.slug}/{self.slug}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The pending span is written only by statements of its own (ingest extends it, a worker clears it):
        # saving a whole channel read earlier (an edit in the admin) must not write back what it read, which
        # would lose a span added since, or bring back one a worker already took up.
        if not self._state.adding and kwargs.get("update_fields") is None and not kwargs.get("force_insert"):
            kwargs["update_fields"] = [
                f.name for f in self._meta.concrete_fields if not f.primary_key and f.name not in PENDING_FIELDS
            ]
        super().save(*args, **kwargs)

    # The instrument it was read with (not a field): a channel moved to another instrument refreshes both.
    _loaded_instrument_id: int | None = None

    @classmethod
    def from_db(cls, db: str | None, field_names: Collection[str], values: Collection[Any], **kwargs: Any) -> Self:
        channel = super().from_db(db, field_names, values, **kwargs)
        # The instrument it was read with: a channel moved to another instrument refreshes both instruments'
        # freshness (instruments.signals).
        channel._loaded_instrument_id = channel.__dict__.get("instrument_id")
        return channel

    @property
    def last_time(self):
        return None if self.last_ts is None else us_to_datetime(self.last_ts)

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        if self.units:
            try:
                # Stored in one spelling, so that one quantity is one axis ("deg C" and "°C" are "degC").
                self.units = check_units(self.units)
            except ValueError as exc:
                errors["units"] = str(exc)
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            errors["valid_max"] = f"The valid maximum ({self.valid_max}) is below the valid minimum ({self.valid_min})."
        for field in ("valid_min", "valid_max"):
            value = getattr(self, field)
            if value is not None and not math.isfinite(value):
                errors[field] = "Must be a finite number."
        if not isinstance(self.missing_values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in self.missing_values
        ):
            errors["missing_values"] = "Must be a list of numbers, e.g. [-9999, -7999]."
        if self.kind == ChannelKind.TEXT and (self.units or self.valid_min is not None or self.valid_max is not None):
            errors["kind"] = "Text channels have no units or valid range."
        if (
            self.source_id
            and self.instrument_id
            and self.source is not None
            and self.source.instrument_id != self.instrument_id
        ):
            errors["source"] = "The data source belongs to another instrument."
        if self.kind == ChannelKind.DERIVED:
            self._clean_expression(errors)
        elif self.expression:
            errors["expression"] = "Only derived channels have an expression."
        if errors:
            raise ValidationError(errors)

    def _clean_expression(self, errors: dict[str, str]) -> None:
        if self.source_id:
            errors["source"] = "Derived channels are computed by the server and have no data source."
        try:
            _, names = parse_expression(self.expression)
        except ExpressionError as exc:
            errors["expression"] = str(exc)
            return
        if not self.instrument_id:
            return
        if expression_name(self.slug) in names:
            errors["expression"] = "A derived channel cannot refer to itself."
            return
        known = {
            expression_name(slug)
            for slug in Channel.objects.filter(instrument_id=self.instrument_id)
            .exclude(pk=self.pk)
            .exclude(kind=ChannelKind.TEXT)
            .values_list("slug", flat=True)
        }
        unknown = sorted(names - known)
        if unknown:
            errors["expression"] = (
                f"Unknown channel(s) {', '.join(unknown)}: an expression refers to this instrument's numeric "
                "channels by slug, with '-' written as '_'."
            )


def expression_name(slug: str) -> str:
    """How a channel slug is written inside a derived-channel expression."""
    return slug.replace("-", "_")


class PlotRange(models.TextChoices):
    """The time ranges a plot offers: relative to now (a dashboard panel keeps following the present) or fixed."""

    HOUR = "1h", "Last hour"
    DAY = "1d", "Last day"
    WEEK = "7d", "Last week"
    MONTH = "30d", "Last month"
    ALL = "all", "Everything"
    CUSTOM = "custom", "Fixed range"


class Dashboard(models.Model):
    """A saved arrangement of plots, owned by one user.

    Visibility is inherited from the instruments, not granted separately: a dashboard holds no data of
    its own, only which channels to plot, and every plot reads through the permission gate. So a
    dashboard is seen by its owner, by administrators and, once its owner marks it shared, by every user
    who may see *all* the instruments its plots show (``instruments.dashboards.dashboards_visible_to``).
    Sharing an instrument therefore shares the dashboards built on it, and unsharing hides them again;
    there is no second access list to keep in step with the instruments'. Only the owner (and
    administrators) may change or delete it.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dashboards")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    shared = models.BooleanField(default=False, help_text="Show it to everyone who may see every instrument it plots.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title", "id"]
        indexes = [models.Index(fields=["owner", "title"])]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("instruments:dashboard", args=[self.pk])


class DashboardPanel(models.Model):
    """One plot of a dashboard: some channels over a time range."""

    dashboard = models.ForeignKey(Dashboard, on_delete=models.CASCADE, related_name="panels")
    position = models.PositiveIntegerField(default=0)
    title = models.CharField(max_length=200, blank=True)
    channels = models.ManyToManyField(Channel, related_name="dashboard_panels")
    time_range = models.CharField(max_length=16, choices=PlotRange.choices, default=PlotRange.DAY)
    start = models.DateTimeField(null=True, blank=True, help_text="For a fixed range.")
    end = models.DateTimeField(null=True, blank=True, help_text="For a fixed range.")
    include_flagged = models.BooleanField(default=False, help_text="Also plot readings flagged bad.")
    wide = models.BooleanField(default=False, help_text="Take the whole width of the dashboard.")
    # What the plot page adds to the channels and range: {"view": ..., "axes": [...], "exprs": [...]}, checked
    # by ``instruments.dashboards.clean_plot_options`` before it is stored (docs/pages.md, "Dashboards").
    options = models.JSONField(default=dict, blank=True, help_text="The plot's view, y axes and expression curves.")

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(time_range="custom")
                | models.Q(start__isnull=False, end__isnull=False, start__lt=models.F("end")),
                name="dashboardpanel_custom_range_ordered",
            )
        ]

    def __str__(self) -> str:
        return self.title or f"panel {self.position + 1} of {self.dashboard}"


# --- experiment runs ----------------------------------------------------------------------------------

RUN_LIST_SLUG_TAKEN = (
    "This slug is already in use on this site (run list slugs are unique across all run lists). Choose another."
)
MAX_RUN_NUMBER = 2_000_000_000
MAX_STAGE = 99


class RunList(models.Model):
    """A campaign or experiment: numbered runs, with parameter columns of its own.

    Shared like an instrument (its owner, then ``view < collect < change < share`` grants through
    ``accounts.services.share``; "collect" is starting and stopping runs). Its runs, columns and comments
    are visible to whoever may view it (``accounts.permissions``).
    """

    name = models.CharField(max_length=200)
    slug = models.SlugField(
        max_length=100,
        unique=True,
        help_text="Short name used in URLs, the API and the agent's command line; unique across the site.",
        error_messages={"unique": RUN_LIST_SLUG_TAKEN},
    )
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="owned_run_lists",
        help_text="Has every permission on the run list.",
    )
    instruments = models.ManyToManyField(
        Instrument,
        blank=True,
        related_name="run_lists",
        help_text="The instruments its runs concern (their channels are plotted with the runs; "
        "their agents may start and stop runs).",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("collect_runlist", "Can start and stop runs"),
            ("share_runlist", "Can manage who may see the run list"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("instruments:runlist", args=[self.slug])


class RunColumn(models.Model):
    """A typed parameter column of a run list: each run's value in it is checked by :meth:`parse`."""

    run_list = models.ForeignKey(RunList, on_delete=models.CASCADE, related_name="columns")
    name = models.SlugField(max_length=64, help_text="The parameter's name (letters, digits, - and _).")
    kind = models.CharField(max_length=16, choices=ColumnKind.choices, default=ColumnKind.NUMBER)
    units = models.CharField(max_length=50, blank=True, help_text="For numbers.")
    choices = models.JSONField(default=list, blank=True, help_text="For a choice: the allowed values.")
    required = models.BooleanField(default=False)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["run_list", "name"], name="runcolumn_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()}{', ' + self.units if self.units else ''})"

    def clean(self) -> None:
        if self.kind == ColumnKind.NUMBER and self.units:
            try:
                self.units = check_units(self.units)
            except ValueError as exc:
                raise ValidationError({"units": str(exc)}) from None
        if self.kind != ColumnKind.NUMBER and self.units:
            raise ValidationError({"units": "Only number columns have units."})
        if self.kind == ColumnKind.CHOICE:
            if (
                not isinstance(self.choices, list)
                or not self.choices
                or not all(isinstance(c, str) and c.strip() for c in self.choices)
            ):
                raise ValidationError({"choices": "A choice column needs a list of non-empty texts."})
            if len(set(self.choices)) != len(self.choices):
                raise ValidationError({"choices": "The choices must differ."})
        elif self.choices:
            raise ValidationError({"choices": "Only choice columns have a list of choices."})

    def parse(self, value):
        """``value`` (from JSON or a form's text) as this column's type; ValueError saying why not."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if self.kind == ColumnKind.NUMBER:
            if isinstance(value, bool):
                raise ValueError("a number is expected, not yes/no")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{str(value)[:40]!r} is not a number") from None
            if not math.isfinite(number):
                raise ValueError("the number must be finite")
            return number
        if self.kind == ColumnKind.BOOLEAN:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"yes", "true", "1", "on", "y"}:
                return True
            if text in {"no", "false", "0", "off", "n"}:
                return False
            raise ValueError(f"{str(value)[:40]!r} is not yes or no")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError("a text is expected")
        text = str(value).strip()
        if len(text) > 500:
            raise ValueError("at most 500 characters")
        if self.kind == ColumnKind.CHOICE and text not in self.choices:
            raise ValueError(f"{text[:40]!r} is not one of {', '.join(self.choices)}")
        return text


class Run(models.Model):
    """One run of a run list: number and stage (``1234.01``), start, end (empty while active), parameters."""

    run_list = models.ForeignKey(RunList, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(MAX_RUN_NUMBER)])
    stage = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(MAX_STAGE)])
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True, help_text="Empty while the run is active.")
    parameters = models.JSONField(default=dict, blank=True)
    summary = models.TextField(blank=True)
    started_by = models.CharField(max_length=200, blank=True, help_text="Who started it (a user or an agent).")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-number", "-stage"]
        constraints = [
            models.UniqueConstraint(fields=["run_list", "number", "stage"], name="run_unique_number_stage"),
            models.CheckConstraint(
                condition=models.Q(end__isnull=True) | models.Q(end__gte=models.F("start")), name="run_end_after_start"
            ),
        ]
        indexes = [models.Index(fields=["run_list", "start"])]

    def __str__(self) -> str:
        return f"{self.run_list} run {self.label}"

    @property
    def label(self) -> str:
        return run_label(self.number, self.stage)

    @property
    def active(self) -> bool:
        return self.end is None


def run_label(number: int, stage: int) -> str:
    return f"{number}.{stage:02d}" if stage else str(number)


def parse_run_label(text: str) -> tuple[int, int]:
    """``"1234"`` -> (1234, 0), ``"1234.01"`` -> (1234, 1); ValueError saying why not."""
    number, _, stage = str(text).strip().partition(".")
    if not number.isdigit() or (stage and not stage.isdigit()):
        raise ValueError(f"{str(text)[:40]!r} is not a run number (1234 or 1234.01)")
    n, s = int(number), int(stage or 0)
    if not 1 <= n <= MAX_RUN_NUMBER or s > MAX_STAGE:
        raise ValueError(f"{str(text)[:40]!r} is out of range (1 to {MAX_RUN_NUMBER}, stage 0 to {MAX_STAGE})")
    return n, s


class RunComment(models.Model):
    """A dated comment on a run, by its author."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    author_name = models.CharField(max_length=200, blank=True, help_text="Kept if the author's account goes.")
    at = models.DateTimeField(default=timezone.now)
    text = models.TextField()

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.run} {self.at:%Y-%m-%d %H:%M}"


def channels_added_since_read(sources: Iterable[DataSource]) -> dict[int, list[Channel]]:
    """Source id -> the channels taking its fields added after it started reading, for each of ``sources``
    that offers a re-read and has such channels (``DataSource.channels_added_since_read``): one query."""
    offering = [source for source in sources if source.offers_reread]
    if not offering:
        return {}
    found: dict[int, list[Channel]] = {}
    channels = (
        Channel.objects.filter(source__in=offering, created__gt=models.F("source__cursor_started_at"))
        .exclude(kind=ChannelKind.DERIVED)
        .order_by("source_id", "name")
    )
    for channel in channels:
        found.setdefault(channel.source_id, []).append(channel)  # type: ignore[arg-type]  # never None here
    return found


def channel_interval_expression():
    """A channel's expected interval between readings in SQL: its own (0 is none, as in Python), else its
    (collected) source's collection interval; empty when nothing says (``pages.status.expected_interval``)."""
    return Coalesce(
        NullIf("expected_interval_seconds", 0),
        models.Case(
            models.When(~models.Q(source__kind=SourceKind.AGENT), then=models.F("source__interval_seconds")),
            default=None,
        ),
    )


def refresh_instrument_freshness(instrument_ids=None, using: str = "default") -> int:
    """Recompute ``Instrument.last_reading_ts`` and ``reading_interval_seconds`` from the channels of the
    instruments ``instrument_ids`` (ids or a subquery; None: every instrument): one statement."""
    channels = Channel.objects.using(using).filter(instrument=models.OuterRef("pk")).order_by().values("instrument")
    instruments = Instrument.objects.using(using).all()
    if instrument_ids is not None:
        instruments = instruments.filter(pk__in=instrument_ids)
    return instruments.update(
        last_reading_ts=models.Subquery(channels.annotate(latest=models.Max("last_ts")).values("latest")),
        reading_interval_seconds=models.Subquery(
            channels.annotate(shortest=models.Min(channel_interval_expression())).values("shortest")
        ),
    )


def catch_up_instrument_freshness(using: str = "default") -> int:
    """Move forward the ``last_reading_ts`` of every instrument that has a channel read later (ingest moves it
    after its transaction commits: a process killed in between leaves it behind), never backward: one
    statement, run periodically (``collection.tasks.catch_up_freshness``). Returns the instruments moved."""
    channels = Channel.objects.using(using).filter(instrument=models.OuterRef("pk")).order_by().values("instrument")
    behind = Channel.objects.using(using).filter(
        instrument=models.OuterRef("pk"),
        last_ts__gt=Coalesce(
            models.OuterRef("last_reading_ts"), models.Value(-1), output_field=models.BigIntegerField()
        ),
    )
    return (
        Instrument.objects.using(using)
        .filter(models.Exists(behind))
        .update(last_reading_ts=models.Subquery(channels.annotate(latest=models.Max("last_ts")).values("latest")))
    )
