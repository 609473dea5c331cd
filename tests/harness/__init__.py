"""Test harnesses shared by the test packages: a real `gpjobs serve` subprocess (server.py) and the in-process
web app over a store and scheduler of the test's choosing (app.py)."""
