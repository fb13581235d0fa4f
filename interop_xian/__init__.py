"""Bilateral clearing with Xi'an (issue 12, ``docs/interop.md``).

The acquirer side and the signed channel (``outbox``, ``batch``, ``keys``, ``sender``, ``api``,
``inbox``, ``acquirer``, ``exchange``), and the issuer side (``issuer``, ``netting``,
``window_close``, ``disputes``, ``reports``); their contract is ``items``.
"""
