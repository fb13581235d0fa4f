"""Validators and POS: readers, tap sessions, fares, offline journal and uploader.

Public names (ARCHITECTURE.md: a package's public names are what its ``__init__`` exports):

* readers: ``Reader`` (protocol), ``PcscReader``, ``InProcessReader``, ``ReaderEvent``,
  ``Channel``, ``Apdu``, ``Reply``, ``transceive``, ``pcsc_reader_names``;
* errors: ``TerminalError``, ``CardRemoved``, ``ReaderError``, ``CardRefused``,
  ``JournalError``, ``UploadError``;
* the tap: ``Terminal``, ``Validator``, ``TapResult``, ``Outcome``, ``TerminalConfig``,
  ``TariffFare``, ``FlatFare``, ``Price``, ``Pricer``;
* storage and upload: ``Journal``, ``Denylist``, ``Uploader``, ``UploaderThread``,
  ``UploadConfig``;
* online loads: ``load_card``, ``HttpLoadHost``, ``LoadHost``, ``LoadReport``, ``LoadResult``,
  ``LoadOutcome``, ``LoadRefused``.

The fare engine is the top-level package ``fares`` (pure, imports only ``cardos``), which the
clearing centre uses too.
"""

from terminals.config import TerminalConfig, UploadConfig
from terminals.denylist import Denylist
from terminals.errors import CardRefused, CardRemoved, JournalError, ReaderError, TerminalError, UploadError
from terminals.journal import Journal, PendingTap, StoredBatch
from terminals.loading import HttpLoadHost, LoadHost, LoadOutcome, LoadRefused, LoadReport, LoadResult, load_card
from terminals.readers import (
    Apdu,
    Channel,
    InProcessReader,
    PcscReader,
    Reader,
    ReaderEvent,
    Reply,
    pcsc_reader_names,
    transceive,
)
from terminals.session import Outcome, Price, Pricer, PricingRefused, SamInfo, TapResult
from terminals.uploader import Uploader, UploaderThread, UploadReport
from terminals.validator import FlatFare, TariffFare, Terminal, Validator

__all__ = [
    "Apdu",
    "CardRefused",
    "CardRemoved",
    "Channel",
    "Denylist",
    "FlatFare",
    "HttpLoadHost",
    "InProcessReader",
    "Journal",
    "JournalError",
    "LoadHost",
    "LoadOutcome",
    "LoadRefused",
    "LoadReport",
    "LoadResult",
    "Outcome",
    "PcscReader",
    "PendingTap",
    "Price",
    "Pricer",
    "PricingRefused",
    "Reader",
    "ReaderError",
    "ReaderEvent",
    "Reply",
    "SamInfo",
    "StoredBatch",
    "TapResult",
    "TariffFare",
    "Terminal",
    "TerminalConfig",
    "TerminalError",
    "UploadConfig",
    "UploadError",
    "UploadReport",
    "Uploader",
    "UploaderThread",
    "Validator",
    "load_card",
    "pcsc_reader_names",
    "transceive",
]
