"""The Event Propagator: events from a file, sent with retries through a spool that
records every one, and its live display.

It shares only the top-level modules with the consumer and never imports
`eventctl.consumer`; tests/test_architecture.py checks that.
"""
