"""Software card OS of a Yikatong CPU card and its PSAM, and the one implementation of card crypto.

Imports nothing else of ours (``ARCHITECTURE.md``).
"""

# User card (cardos.card and friends); PSAM and vpcd bridge (cardos.psam, cardos.vpcd).
from cardos.apdu import Command, parse_command, split_response
from cardos.card import Card
from cardos.image import AuthState, CardImage, CardKeys, ImageError, ProveEntry, PurseState
from cardos.os import CardOS, CardTorn, SmartCard, TearPlan
from cardos.personalise import AuthMaterial, PersonaliseError, personalise
from cardos.psam import IssuerKeys, Psam, PsamImage, PsamImageError, psam_image_for_terminal
from cardos.sw import StatusError
from cardos.vpcd import VpcdClient, VpcdHandle, VpcdUnavailable

__all__ = [
    "AuthMaterial",
    "AuthState",
    "Card",
    "CardImage",
    "CardKeys",
    "CardOS",
    "CardTorn",
    "Command",
    "ImageError",
    "IssuerKeys",
    "PersonaliseError",
    "ProveEntry",
    "Psam",
    "PsamImage",
    "PsamImageError",
    "PurseState",
    "SmartCard",
    "StatusError",
    "TearPlan",
    "VpcdClient",
    "VpcdHandle",
    "VpcdUnavailable",
    "parse_command",
    "personalise",
    "psam_image_for_terminal",
    "split_response",
]
