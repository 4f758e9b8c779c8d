"""`codec sweep` as if on another machine (for tests/test_sweep_postgres.py): the trials it runs
record another host, so this machine's dead-process check cannot judge them, and only Optuna's
heartbeat can tell that their worker died.

    python tests/sweep_elsewhere.py sweep SWEEP.yaml --storage postgresql://... [codec sweep options]
"""

import sys

from codec.sweep import study

study.this_machine = lambda: {"host": "another-machine", "boot": 0.0}

if __name__ == "__main__":
    from codec.sweep.command import main

    sys.exit(main(sys.argv[1:]))
