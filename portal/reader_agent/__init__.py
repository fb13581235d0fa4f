"""``yikatong reader-agent``: the browser's way to the citizen's card reader (``docs/portal.md``, "Reader agent").

A small HTTP service on 127.0.0.1 that answers one portal origin, asks for the PIN on its own
page, has the card sign the card-login challenge, and runs online loads with the portal as
the host. ``app`` is the HTTP surface, ``card_ops`` the card commands (through
``terminals.readers``), ``jobs`` the open requests and the relayed load host, ``errors`` the
codes and the sentences a person can act on, ``pin_page`` the PIN page.
"""

from portal.reader_agent.app import AGENT_NAME, AGENT_VERSION, PORT_DEFAULT, Agent, AgentConfig, create_app
from portal.reader_agent.card_ops import FixedSource, PcscSource, ReaderSource, WebEidToken
from portal.reader_agent.errors import AgentError, Code

__all__ = [
    "AGENT_NAME",
    "AGENT_VERSION",
    "PORT_DEFAULT",
    "Agent",
    "AgentConfig",
    "AgentError",
    "Code",
    "FixedSource",
    "PcscSource",
    "ReaderSource",
    "WebEidToken",
    "create_app",
]
