"""Clearing centre: wire contract, key store, validation, ledger, ingest service and API, card registry."""
