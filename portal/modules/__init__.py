"""The citizen services the portal mounts, one package each with its own tables, migration and router.

``social_security`` (contribution record, statements), ``medical`` (新农合 at the clinic, claims),
``permits`` (applications with statutory deadlines), ``utility_bills`` (bills paid from the purse or
online). Each reaches clearing, the ledger and settlement through their public functions only.
"""
