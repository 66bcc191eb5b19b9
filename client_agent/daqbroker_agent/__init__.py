"""DAQBroker client agent.

``daqbroker_agent.parsing`` and ``daqbroker_agent.config`` are shared with the server: they turn raw
instrument lines into readings and validate source configurations, and import nothing from Django.

The agent itself (``daqbroker-agent``, see docs/agent.md): ``cli`` (run, status, check, flush), ``settings``
(TOML and DAQBROKER_AGENT_* variables), ``runtime`` (the threads of ``run``), ``sources`` and ``tail``
(what it reads), ``spool`` (the durable SQLite queue), ``uploader`` and ``client`` (HTTP to /api/v1/),
``auth`` and ``state`` (a refused token, the agent's health).
"""

__version__ = "0.1.0"
