"""The upload decoder under arbitrary input: a batch or ``E_MALFORMED`` with a path, never anything else."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.contract import Batch, TapRecord
from clearing.errors import ClearingError
from clearing.ingest import decode_upload

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)
_FIELDS = list(TapRecord.__struct_fields__)


def _decodes_or_refuses(body: bytes) -> None:
    try:
        batch = decode_upload(body)
    except ClearingError as exc:
        assert exc.code == "E_MALFORMED"
        assert exc.errors and all(item.path.startswith("$") for item in exc.errors)
        return
    assert isinstance(batch, Batch)
    for record in batch.records:  # whatever came in, hex is stored lower case
        assert record.tac == record.tac.lower() and record.card_asn == record.card_asn.lower()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_are_refused(body: bytes) -> None:
    _decodes_or_refuses(body)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_arbitrary_json_decodes_or_is_refused(document: object) -> None:
    _decodes_or_refuses(json.dumps(document).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=len(_FIELDS)),
    st.integers(-5, 2**33),
)
def test_batches_of_arbitrary_records_decode_or_are_refused(record: dict[str, object], seq: int) -> None:
    body = {"batch_seq": seq, "created_at": "2026-11-24T08:00:00+08:00", "records": [record]}
    _decodes_or_refuses(json.dumps(body).encode())


def test_deep_nesting_and_nul_are_refused_not_crashed() -> None:
    _decodes_or_refuses(b"[" * 100_000)
    _decodes_or_refuses(b'{"records": "\\u0000", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
