"""DAQBroker client agent.

``daqbroker_agent.parsing`` and ``daqbroker_agent.config`` are shared with the server: they turn raw
instrument lines into readings and validate source configurations, and import nothing from Django.
"""

__version__ = "0.1.0"
