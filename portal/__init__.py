"""Citizen web site and JSON API (not built yet)."""
