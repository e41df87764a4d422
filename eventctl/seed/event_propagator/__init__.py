"""`python -m event_propagator.main`: the seed's name for `eventctl propagate`."""
