"""The Event Consumer: the HTTP app, its connections, the writer and the live page.

It shares only the top-level modules with the propagator (events, store, config, auth,
errors) and never imports `eventctl.propagator`; tests/test_architecture.py checks that.
"""
