"""`python -m event_consumer.main`: the seed's name for `eventctl serve`."""
