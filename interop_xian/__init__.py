"""Bilateral clearing with Xi'an: signed batch exchange, netting, disputes (not built yet)."""
