"""Wire schemas of the terminal <-> clearing contract (``spec/terminal-api.md``).

Both sides import these msgspec structs; unknown fields are refused, not ignored.
"""

from clearing.contract.codes import (
    ACCEPTED,
    FORWARDED,
    REASON_CODES,
    REJECTED,
    SUSPECT,
    VERDICTS,
    Code,
)
from clearing.contract.schemas import (
    BATCH_RECORDS_MAX,
    Batch,
    BatchAnswer,
    DenylistDelta,
    DenylistEntry,
    ErrorBody,
    ErrorItem,
    FareInfo,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    TapRecord,
    Verdict,
    decode_batch,
    decode_request,
    encode,
    normalise,
)

__all__ = [
    "ACCEPTED",
    "BATCH_RECORDS_MAX",
    "FORWARDED",
    "REASON_CODES",
    "REJECTED",
    "SUSPECT",
    "VERDICTS",
    "Batch",
    "BatchAnswer",
    "Code",
    "DenylistDelta",
    "DenylistEntry",
    "ErrorBody",
    "ErrorItem",
    "FareInfo",
    "LoadAuthorizeRequest",
    "LoadAuthorizeResponse",
    "LoadCompleteRequest",
    "LoadCompleteResponse",
    "TapRecord",
    "Verdict",
    "decode_batch",
    "decode_request",
    "encode",
    "normalise",
]
