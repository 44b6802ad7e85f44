"""Test-only entry points (run as ``python -m tests.helpers.NAME`` from the checkout)."""
