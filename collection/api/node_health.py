"""``POST /api/v1/agent/heartbeat/`` with the node-health figures kept as readings (docs/agent.md, "Node health").

The endpoint itself (validation, the agent's health row, the server's time) is accounts'; this layer adds what
accounts may not know of: the readings of the agent's health instrument (``collection.services.node_health``).
"""

from __future__ import annotations

from accounts.api.agent_views import AgentHeartbeatView
from accounts.models import AgentHealth
from collection.services import node_health


class AgentHeartbeatHealthView(AgentHeartbeatView):
    def recorded(self, health: AgentHealth, data: dict) -> None:
        node_health.record_health(health.agent, health, data.get("health"))
