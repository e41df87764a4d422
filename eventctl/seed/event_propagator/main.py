"""`python -m event_propagator.main [OPTIONS]` is `eventctl propagate [OPTIONS]`."""

from __future__ import annotations

from eventctl.entry import run_as

if __name__ == "__main__":
    run_as("propagate", prog_name="python -m event_propagator.main")
