"""Validators and POS: readers, tap sessions, fares, offline journal and uploader.

Public names (ARCHITECTURE.md: a package's public names are what its ``__init__`` exports):

* readers: ``Reader`` (protocol), ``PcscReader``, ``InProcessReader``, ``ReaderEvent``,
  ``Channel``, ``Apdu``, ``Reply``, ``transceive``, ``pcsc_reader_names``;
* errors: ``TerminalError``, ``CardRemoved``, ``ReaderError``, ``CardRefused``,
  ``JournalError``, ``UploadError``, ``DuplicateCardRecord``;
* the tap: ``Terminal``, ``Validator``, ``TapResult``, ``Outcome``, ``TerminalConfig``,
  ``TariffFare``, ``FlatFare``, ``Price``, ``Pricer``;
* storage and upload: ``Journal``, ``FraudEvent``, ``Denylist``, ``Uploader``, ``UploaderThread``,
  ``UploadConfig``, ``BatchUploaded``, ``final_upload``, ``FinalUpload``;
* the console: ``shanghai_clock``, ``shanghai_stamp`` (times in Asia/Shanghai with the offset),
  ``yuan``, ``parse_yuan``, ``AmountError``, ``Tally``, ``fare_reason``;
* online loads: ``load_card``, ``HttpLoadHost``, ``LoadHost``, ``LoadReport``, ``LoadResult``,
  ``LoadOutcome``, ``LoadRefused``.

The fare engine is the top-level package ``fares`` (pure, imports only ``cardos``), which the
clearing centre uses too.
"""

from terminals.config import TerminalConfig, UploadConfig
from terminals.denylist import Denylist
from terminals.display import AmountError, Tally, parse_yuan, shanghai_clock, shanghai_stamp, yuan
from terminals.errors import (
    CardRefused,
    CardRemoved,
    DuplicateCardRecord,
    JournalError,
    ReaderError,
    TerminalError,
    UploadError,
)
from terminals.journal import FraudEvent, Journal, PendingTap, StoredBatch
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
from terminals.uploader import BatchUploaded, FinalUpload, Uploader, UploaderThread, UploadReport, final_upload
from terminals.validator import FlatFare, TariffFare, Terminal, Validator, fare_reason

__all__ = [
    "AmountError",
    "Apdu",
    "BatchUploaded",
    "CardRefused",
    "CardRemoved",
    "Channel",
    "Denylist",
    "DuplicateCardRecord",
    "FinalUpload",
    "FlatFare",
    "FraudEvent",
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
    "Tally",
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
    "fare_reason",
    "final_upload",
    "load_card",
    "parse_yuan",
    "pcsc_reader_names",
    "shanghai_clock",
    "shanghai_stamp",
    "transceive",
    "yuan",
]
