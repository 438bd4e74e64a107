"""Validation studies for invhvp (each module is runnable with ``python -m validation.<name>``)."""
