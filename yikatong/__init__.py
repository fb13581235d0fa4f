"""Composition root: settings, CLI, ASGI app assembly, demo city and simulator."""
