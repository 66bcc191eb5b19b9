"""Forms of the collaborators' pages (instrument logbook, sharing, dashboards), and the data-source form
every surface that edits sources uses (the admin's source page and inline)."""

from __future__ import annotations

import json
from typing import cast

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db.models import Model
from django.utils.html import format_html, json_script
from django.utils.safestring import SafeString

from accounts import permissions, targets
from accounts.targets import Principal
from daqbroker_agent.config import SOURCE_OPTIONS, option_schema
from instruments.models import Dashboard, DataSource, LogbookEntry, PlotRange
from instruments.units import display_choices


class ConfigWidget(forms.Textarea):
    """A source's configuration as a form generated from the option tables (``daqbroker_agent.config``):
    each option a labelled field with its help and default, the errors beside the option they name, and
    the JSON itself a click away for experts. The script (``static/js/admin_config.js``) writes the JSON
    into the textarea, which is what is posted; without script the textarea is the field."""

    errors: list[str]

    class Media:
        js = ("js/admin_config.js",)

    def __init__(self, attrs=None):
        super().__init__({"rows": 8, "spellcheck": "false", **(attrs or {})})
        self.errors = []

    def render(self, name, value, attrs=None, renderer=None) -> SafeString:
        textarea = super().render(name, value, attrs, renderer)
        element = (attrs or {}).get("id") or f"id_{name}"
        schema = {kind: option_schema(kind) for kind in SOURCE_OPTIONS}
        return format_html(
            '<div class="config-form" data-for="{}" data-schema="{}-schema" data-errors="{}-errors">'
            '<label class="vCheckboxLabel"><input type="checkbox" class="config-raw-toggle"> Edit as JSON</label>'
            '<div class="config-fields"></div></div>{}{}{}',
            element,
            element,
            element,
            textarea,
            json_script(schema, f"{element}-schema"),
            json_script(self.errors, f"{element}-errors"),
        )


class DataSourceForm(forms.ModelForm):
    """A data source, checked by the one target check (``accounts.targets``) for ``principal``.

    Use ``DataSourceForm.for_principal(user)`` to get the class bound to the person editing."""

    principal: Principal | None = None

    class Meta:
        model = DataSource
        fields = ["instrument", "name", "kind", "agent", "config", "interval_seconds", "enabled"]
        widgets = {"config": ConfigWidget}

    @classmethod
    def for_principal(cls, principal: Principal, base: type[forms.ModelForm] | None = None) -> type[DataSourceForm]:
        parent = base if base is not None and issubclass(base, DataSourceForm) else cls
        return type(parent.__name__, (parent,), {"principal": principal, "__module__": parent.__module__})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pk = self.instance.pk
        self._stored = DataSource.objects.filter(pk=pk).first() if pk else None

    def _post_clean(self) -> None:
        # The model's own checks: the configuration is validated and normalised. (_post_clean is Django's
        # private hook after the fields are cleaned; django-stubs leaves it out.)
        super()._post_clean()  # type: ignore[misc]
        widget = self.fields["config"].widget
        if isinstance(widget, ConfigWidget):  # "path: is required": shown beside the option it names
            widget.errors = [str(message) for message in self.errors.get("config", [])]
        if self.errors:
            return
        if self.principal is None:
            self.add_error(None, "This form needs the person editing (DataSourceForm.for_principal).")
            return
        try:
            changed = targets.check_source(self.principal, self.instance, previous=self._stored)
        except ValidationError as exc:
            if hasattr(exc, "error_dict") and set(exc.error_dict) - set(self.fields):
                exc = ValidationError(exc.messages)
            self.add_error(None, exc)
            return
        if changed:
            self.instance.target_set_by = permissions.resolve(self.principal)[0]


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, attrs=None):
        super().__init__(attrs, format="%Y-%m-%dT%H:%M")


class LogbookEntryForm(forms.ModelForm):
    class Meta:
        model = LogbookEntry
        fields = ["occurred_at", "text"]
        labels = {"occurred_at": "When", "text": "What happened"}
        widgets = {
            "occurred_at": DateTimeLocalInput(),
            "text": forms.Textarea(attrs={"rows": 3, "placeholder": "Cleaned the rain gauge; sensor swapped; ..."}),
        }


LEVEL_CHOICES = [
    (permissions.VIEW, "View: see and plot, export"),
    (permissions.COLLECT, "Collect: also push readings"),
    (permissions.CHANGE, "Change: also edit, logbook, acknowledge alarms"),
    (permissions.SHARE, "Share: also decide who has access"),
]


class ShareForm(forms.Form):
    kind = forms.ChoiceField(choices=[("user", "User"), ("group", "Group")], initial="user", label="Share with a")
    name = forms.CharField(max_length=150, label="User name or group name")
    level = forms.ChoiceField(choices=LEVEL_CHOICES, initial=permissions.VIEW, label="Access")

    def clean(self):
        data = super().clean()
        assert data is not None  # Form.clean() returns cleaned_data
        kind, name = data.get("kind"), (data.get("name") or "").strip()
        if not kind or not name:
            return data
        principal: Model | None
        if kind == "user":
            principal = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: name}).first()
        else:
            principal = Group.objects.filter(name=name).first()
        if principal is None:
            raise forms.ValidationError({"name": f"There is no {kind} called {name!r}."})
        data["principal"] = principal
        return data


class DashboardForm(forms.ModelForm):
    class Meta:
        model = Dashboard
        fields = ["title", "description", "shared"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        labels = {"shared": "Shared with everyone who may see its instruments"}


MAX_OPTIONS_TEXT = 8000


class PanelForm(forms.Form):
    """A plot to add to a dashboard: the channels must be ones the user may see (checked by the service)."""

    title = forms.CharField(max_length=200, required=False)
    channels = forms.TypedMultipleChoiceField(coerce=int, choices=[], widget=forms.SelectMultiple(attrs={"size": 8}))
    time_range = forms.ChoiceField(choices=PlotRange.choices, initial=PlotRange.DAY, label="Time range")
    start = forms.DateTimeField(required=False, widget=DateTimeLocalInput())
    end = forms.DateTimeField(required=False, widget=DateTimeLocalInput())
    include_flagged = forms.BooleanField(required=False, label="Include flagged readings")
    wide = forms.BooleanField(required=False, label="Full width")
    # The plot page's view, y axes and expression curves, as JSON; its contents are checked by the service.
    options = forms.CharField(required=False, max_length=MAX_OPTIONS_TEXT, widget=forms.HiddenInput)

    def __init__(self, *args, channels=(), **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.TypedMultipleChoiceField, self.fields["channels"]).choices = [
            (c.pk, f"{c.instrument.name} · {c.name}" + (f" ({c.units})" if c.units else "")) for c in channels
        ]

    def clean_options(self) -> dict:
        text = self.cleaned_data["options"].strip()
        if not text:
            return {}
        try:
            options = json.loads(text)
        except ValueError:
            raise forms.ValidationError("The plot's options are not JSON.") from None
        if not isinstance(options, dict):
            raise forms.ValidationError("The plot's options are a JSON object.")
        return options


AXIS_FIELDS = ("units", "log", "min", "max", "unit")
VIEW_CHOICES = [("series", "Time series"), ("hist", "Histogram"), ("heatmap", "Histogram over time")]
# Six expressions of 500 characters, a line each (the service says which rule a longer text breaks).
MAX_EXPRESSIONS_TEXT = 6 * 501


class PanelOptionsForm(forms.Form):
    """A dashboard panel's plot options, changed on the dashboard: what it shows, the histogram over time's
    channel, per y axis (one per unit of the panel's channels, numbered as the plot draws them) the log scale,
    limits and unit shown, and the expression curves, one a line. The form reads the fields only;
    ``options()`` hands them to ``instruments.dashboards.update_panel_options``, which checks them as it checks
    a plot saved from the plotter."""

    view = forms.ChoiceField(choices=VIEW_CHOICES, label="Show")
    heat = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Histogram over time of")
    exprs = forms.CharField(
        required=False,
        max_length=MAX_EXPRESSIONS_TEXT,
        strip=False,
        label="Expression curves",
        help_text="One a line, e.g. a/temp - b/temp (instrument/channel).",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocomplete": "off"}),
    )

    def __init__(self, *args, channels, state: dict, **kwargs):
        """``channels``: the panel's channels the user sees, in the plot's order; ``state``: the panel as drawn
        (``pages.views.panel_state``), for the initial values."""
        super().__init__(*args, **kwargs)
        self.units = list(dict.fromkeys(c.units or "" for c in channels))
        self.fields["view"].initial = state.get("kind", "series")
        heat = cast(forms.TypedChoiceField, self.fields["heat"])
        heat.choices = [(c.pk, c.name) for c in channels]
        heat.initial = state.get("heat") or (channels[0].pk if channels else None)
        self.fields["exprs"].initial = "\n".join(state.get("exprs", []))
        saved = state.get("yaxes", {})
        self.axes = []
        for k, unit in enumerate(self.units, 1):
            name, axis = f"Axis {k} ({unit or 'no unit'})", saved.get(str(k), {})
            self.fields[f"y{k}_units"] = forms.CharField(required=False, initial=unit, widget=forms.HiddenInput)
            self.fields[f"y{k}_log"] = forms.BooleanField(required=False, initial=axis.get("log"), label=f"{name} log")
            for key, word in (("min", "from"), ("max", "to")):
                self.fields[f"y{k}_{key}"] = forms.FloatField(
                    required=False,
                    initial=axis.get(key),
                    label=f"{name} {word}",
                    widget=forms.NumberInput(attrs={"step": "any", "placeholder": "auto"}),
                )
            # the units this axis may be shown in (as the plot page's "Y axes" menu offers them)
            choices = max((display_choices(c.units or "") for c in channels if (c.units or "") == unit), key=len)
            if len(choices) > 1:
                self.fields[f"y{k}_unit"] = forms.ChoiceField(
                    required=False, choices=[(u, u) for u in choices], initial=axis.get("unit") or unit,
                    label=f"{name} shown in",
                )  # fmt: skip
            for key in AXIS_FIELDS[1:]:  # each named in full for assistive technology (shown as "from", "to"...)
                if f"y{k}_{key}" in self.fields:
                    self.fields[f"y{k}_{key}"].widget.attrs["aria-label"] = self.fields[f"y{k}_{key}"].label
            fields = {key: self[f"y{k}_{key}"] for key in AXIS_FIELDS if f"y{k}_{key}" in self.fields}
            self.axes.append({"number": k, "name": name, **fields})

    def clean(self):
        data = super().clean() or {}
        for k, unit in enumerate(self.units, 1):
            if f"y{k}_units" in self.data and data.get(f"y{k}_units") != unit:
                raise forms.ValidationError("The plot's channels changed since this page was opened: reload it.")
        return data

    def options(self) -> dict:
        """The options as posted, in the shape ``clean_plot_options`` checks (it refuses what is wrong)."""
        data = self.cleaned_data
        axes = []
        for k, unit in enumerate(self.units, 1):
            shown = data.get(f"y{k}_unit") or None
            axes.append({
                "units": unit, "log": data[f"y{k}_log"], "min": data[f"y{k}_min"], "max": data[f"y{k}_max"],
                "unit": None if shown == unit else shown,
            })  # fmt: skip
        options: dict = {
            "view": data["view"],
            "axes": axes,
            "exprs": [e for e in data["exprs"].splitlines() if e.strip()],
        }
        if data["view"] == "heatmap" and data["heat"] is not None:
            options["heat"] = data["heat"]
        return options

    def error_text(self) -> str:
        """The refusals in one line, each with the field it names (an axis's limit says which axis)."""
        parts = []
        for name, errors in self.errors.items():
            label = self.fields[name].label if name in self.fields else None
            parts += [f"{label}: {e}" if label else str(e) for e in errors]
        return " ".join(parts)
