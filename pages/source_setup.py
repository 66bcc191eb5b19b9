"""The "New data source" page (and the same page to edit a source): for people who may change the instrument.

Pick the kind and where it runs (this server, or one of your agents), give a sample (an uploaded file, the
source's folder, "Test connection" for serial and TCP, or the newest file in a folder on the agent's machine,
which the agent sends when asked), watch the preview update as options change, accept or edit the proposed
channels, and save source and channels in one step. The page's script calls the one preview service through the API
(``POST /api/v1/sources/preview/``, ``collection.services.preview``); saving goes through
``instruments.source_setup.save_source_with_channels`` (one transaction, the target check, the audit).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.generic import TemplateView

from accounts import agent_samples, audit, permissions
from accounts.models import Agent
from collection.services.preview import MAX_UPLOAD_BYTES, PREVIEW_KINDS
from daqbroker_agent.config import MODBUS_FUNCTIONS, MODBUS_TYPES
from daqbroker_agent.config import option_schema as config_options
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.source_setup import CHANNEL_FIELDS, save_source_with_channels
from pages.views import PageMixin


def option_schema() -> dict[str, list[dict[str, Any]]]:
    """Each previewable kind's options (name, default, help) for the page's form."""
    return {kind: config_options(kind) for kind in PREVIEW_KINDS}


# The list option of each protocol kind, edited as a table (one row per entry) instead of JSON; a column is
# free text, a number, or a choice. The server's validation decides (its errors name the entry and key).
ENTRY_EDITORS: dict[str, dict[str, Any]] = {
    SourceKind.MODBUS: {
        "option": "registers",
        "label": "Register map",
        "columns": [
            {"name": "field", "type": "text"},
            {"name": "address", "type": "int"},
            {"name": "function", "choices": list(MODBUS_FUNCTIONS)},
            {"name": "type", "choices": ["", *MODBUS_TYPES]},
            {"name": "word_order", "choices": ["big", "little"]},
            {"name": "byte_order", "choices": ["big", "little"]},
            {"name": "scale", "type": "number"},
            {"name": "offset", "type": "number"},
        ],
    },
    SourceKind.MQTT: {
        "option": "fields",
        "label": "Topics and payload paths",
        "columns": [
            {"name": "name", "type": "text"},
            {"name": "topic", "type": "text"},
            {"name": "path", "type": "text"},
        ],
    },
    SourceKind.OPCUA: {
        "option": "nodes",
        "label": "Nodes",
        "columns": [{"name": "node", "type": "text"}, {"name": "name", "type": "text"}],
    },
}


class SourceSetupView(PageMixin, TemplateView):
    template_name = "instruments/source_setup.html"
    required_level = permissions.CHANGE

    def get_source(self) -> DataSource | None:
        if "pk" not in self.kwargs:
            return None
        return get_object_or_404(DataSource, pk=self.kwargs["pk"], instrument=self.get_instrument())

    def get(self, request, *args, **kwargs):
        self.get_instrument()  # 404 / 403 first
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        instrument = self.get_instrument()
        source = self.get_source()
        initial: dict[str, Any] = {
            "kind": SourceKind.FILE,
            "name": "",
            "interval_seconds": 60,
            "config": {},
            "agent": None,
        }
        channels: list[dict[str, Any]] = []
        if source is not None:
            initial = {
                "kind": source.kind,
                "name": source.name,
                "interval_seconds": source.interval_seconds,
                "config": source.config,
                "enabled": source.enabled,
                "agent": source.agent_id,
            }
            if source.kind == SourceKind.AGENT:  # shown as what the agent collects, and where
                collect = dict(source.config.get("collect") or {})
                initial["kind"] = collect.pop("kind", SourceKind.FILE)
                initial["config"] = collect
            channels = [{field: getattr(c, field) for field in CHANNEL_FIELDS} for c in source.channels.order_by("pk")]
        context.update(
            instrument=instrument,
            source=source,
            kinds=[(k, SourceKind(k).label) for k in PREVIEW_KINDS],
            setup_state={
                "instrument": instrument.slug,
                "initial": kwargs.get("posted") or initial,
                "channels": kwargs.get("posted_channels", channels),
                "errors": kwargs.get("errors", {}),
                "schema": option_schema(),
                "entry_editors": ENTRY_EDITORS,
                "preview_url": reverse("api:source-preview"),
                "ports_url": reverse("api:serial-ports"),
                "agents": self.agent_choices(instrument, source),
                "max_upload_bytes": MAX_UPLOAD_BYTES,
            },
        )
        return context

    def agent_choices(self, instrument, source: DataSource | None) -> list[dict[str, Any]]:
        """The agents this person may set sources of (and may push to the instrument), and the source's own."""
        agents = agent_samples.agents_for(self.request.user).filter(instruments=instrument)
        choices = [{"id": a.pk, "name": a.name} for a in agents.order_by("name")]
        if source is not None and source.agent is not None and source.agent_id not in {c["id"] for c in choices}:
            # Kept as it is for a co-editor who may change the channels but not what the agent collects.
            choices.append({"id": source.agent_id, "name": source.agent.name})
        return choices

    def post(self, request, *args, **kwargs):
        instrument = self.get_instrument()
        source = self.get_source()
        errors: dict[str, list[str]] = {}
        try:
            config = json.loads(request.POST.get("config_json") or "{}")
            channels = json.loads(request.POST.get("channels_json") or "[]")
        except ValueError:
            config, channels = {}, []
            errors["source.config"] = ["The configuration is not valid JSON."]
        if (
            not isinstance(config, dict)
            or not isinstance(channels, list)
            or not all(isinstance(c, dict) for c in channels)
        ):
            config, channels = {}, []
            errors["source.config"] = ["The configuration must be an object and the channels a list."]
        values = {
            "name": request.POST.get("name", "").strip(),
            "kind": request.POST.get("kind", ""),
            "config": config,
            "interval_seconds": request.POST.get("interval_seconds") or 60,
            "enabled": request.POST.get("enabled") == "on",
            "agent": None,
        }
        if values["kind"] not in PREVIEW_KINDS:
            errors["source.kind"] = [f"Choose one of {', '.join(PREVIEW_KINDS)}."]
        agent_id = request.POST.get("agent") or ""
        if agent_id and not errors:
            mine = agent_samples.agents_for(request.user)
            if source is not None and source.agent_id is not None:  # its own agent: targets.check_source decides
                mine = mine | Agent.objects.filter(pk=source.agent_id)
            agent = mine.filter(pk=agent_id).first() if agent_id.isdigit() else None
            if agent is None:
                errors["source.agent"] = ["No such agent among those whose sources you may set."]
            else:  # collected by the agent on its machine: a remote-agent source
                values.update(
                    kind=SourceKind.AGENT, agent=agent, config={"collect": {"kind": values["kind"], **config}}
                )
        if not errors:
            try:
                saved = save_source_with_channels(
                    request.user, instrument, values, channels, source=source, origin=audit.origin(request)
                )
            except ValidationError as exc:
                errors = exc.message_dict
            else:
                state = "enabled" if saved.source.enabled else "saved, not enabled (it needs at least one channel)"
                messages.success(
                    request,
                    f"Source {saved.source.name!r} {state}: {saved.channels_created} channel(s) created, "
                    f"{saved.channels_changed} changed.",
                )
                return HttpResponseRedirect(reverse("instruments:detail", args=[instrument.slug]) + "#sources")
        posted = {**values, "kind": request.POST.get("kind", ""), "config": config, "agent": agent_id or None}
        context = self.get_context_data(posted=posted, posted_channels=channels, errors=errors)
        return self.render_to_response(context)
