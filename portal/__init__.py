"""Citizen web site and JSON API (issue 10). So far its pure core (``docs/portal.md``):

``portal.identity`` (ID number, mobile, name: checks, keyed hash, masks), ``portal.webhooks``
(Stripe-Signature), ``portal.limits`` (top-up caps), ``portal.topups`` (the top-up state
machine), ``portal.payments`` (PaymentIntent client), ``portal.errors`` (codes). Import the
modules themselves; nothing here pulls in httpx or a database.
"""
