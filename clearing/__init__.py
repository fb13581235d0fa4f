"""Clearing centre: wire contract, key store, validation, ledger, ingest service and API, card registry.

Public names (ARCHITECTURE.md: a package's public names are what its ``__init__`` exports),
resolved on first use so that ``import clearing.contract`` (which terminals do) does not pull
in the web framework or the database layer:

* errors: ``ClearingError``, ``Code``, ``CODES``;
* money: ``TransferSpec``, ``post_transfers``, ``trial_balance``, ``account_balance``;
* ingest: ``make_ingestor``, ``prepare``, ``decode_upload``, ``TacKeys``, ``keystore_dtk``,
  ``judge``, ``Context``, ``Limits``;
* the business-day clock: ``BusinessDayClock``, ``DEFAULT_CLOCK``;
* exceptions and loads: ``exceptions_queue``, ``loads`` (modules);
* keys and registry: ``KeyStore``, ``issue_card``, ``register_issuer``, ``register_terminal``;
* the API: ``create_app``, ``mount``, ``ApiDeps``.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

_EXPORTS: Final = {
    "ClearingError": "clearing.errors",
    "Code": "clearing.contract.codes",
    "CODES": "clearing.contract.codes",
    "TransferSpec": "clearing.ledger",
    "post_transfers": "clearing.ledger",
    "trial_balance": "clearing.ledger",
    "account_balance": "clearing.ledger",
    "make_ingestor": "clearing.ingest",
    "prepare": "clearing.ingest",
    "decode_upload": "clearing.ingest",
    "TacKeys": "clearing.ingest",
    "keystore_dtk": "clearing.ingest",
    "judge": "clearing.validation",
    "Context": "clearing.validation",
    "Limits": "clearing.validation",
    "BusinessDayClock": "clearing.business_day",
    "DEFAULT_CLOCK": "clearing.business_day",
    "KeyStore": "clearing.keystore",
    "issue_card": "clearing.issuance",
    "register_issuer": "clearing.registry",
    "register_terminal": "clearing.registry",
    "create_app": "clearing.api",
    "mount": "clearing.api",
    "ApiDeps": "clearing.api",
}
_MODULES: Final = ("exceptions_queue", "loads")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"clearing.{name}")
    raise AttributeError(f"module 'clearing' has no attribute {name!r}")


__all__ = sorted([*_EXPORTS, *_MODULES])
