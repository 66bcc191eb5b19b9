"""A refused token (401/403), said clearly once, then read again until it changes."""

from __future__ import annotations

import logging

from daqbroker_agent.client import ApiClient, Reply
from daqbroker_agent.settings import SettingsError
from daqbroker_agent.state import AgentState, RateLimitedLog

log = logging.getLogger("daqbroker_agent.auth")


class AuthWatch:
    """Says clearly, once, that the token is refused, and keeps reading it again until it changes."""

    def __init__(self, client: ApiClient, state: AgentState):
        self.client, self.state = client, state
        self.failing = False
        self.noisy = RateLimitedLog(log, every=60.0)

    def refused(self, reply: Reply, spool_depth: int) -> bool:
        """Record a 401/403; True if the token has changed since (retry at once)."""
        message = (
            f"the server refuses the agent's token ({reply.status}: {reply.detail()}). Readings are kept in the "
            f"spool ({spool_depth:,} waiting) and will be sent once a valid token is in place"
        )
        self.state.problem("auth", message)
        if not self.failing:
            self.failing = True
            log.error(
                "%s: create a new agent in the admin (Agents), give it this agent's sources, and put its token in "
                "the token file or configuration file (read again automatically), or set DAQBROKER_AGENT_TOKEN and "
                "restart",
                message,
            )
        else:
            self.noisy.log(logging.ERROR, "auth", "%s", message)
        try:
            if self.client.refresh_token():
                log.warning("the token changed: trying it now")
                return True
        except SettingsError as exc:
            self.noisy.log(logging.ERROR, "token-file", "%s", exc)
        return False

    def accepted(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("the server accepts the agent's token")
        self.state.resolved("auth")
