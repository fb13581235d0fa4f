"""Software card OS of a Yikatong CPU card and its PSAM, and the one implementation of card crypto.

Imports nothing else of ours (``ARCHITECTURE.md``).
"""
