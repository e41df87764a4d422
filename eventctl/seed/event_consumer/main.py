"""`python -m event_consumer.main [OPTIONS]` is `eventctl serve [OPTIONS]`."""

from __future__ import annotations

from eventctl.entry import run_as

if __name__ == "__main__":
    run_as("serve", prog_name="python -m event_consumer.main")
