"""``python -m daqbroker_agent``: the same as the ``daqbroker-agent`` command."""

import sys

from daqbroker_agent.cli import main

sys.exit(main())
