"""Business-day windows, merchant and operator payouts, reconciliation (not built yet)."""
