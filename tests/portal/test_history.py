"""The pure parts of the pages: history filters, cursors and CSV; yuan in and out; locale; redirects; CSP origins."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal import history
from portal.errors import PortalError
from portal.web import (
    AmountTextError,
    check_origin,
    choose_locale,
    content_security_policy,
    is_page_path,
    parse_yuan,
    safe_next,
    shanghai_stamp,
    yuan,
    yuan_plain,
)

# --- CSV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "written"),
    [("=1+1", "'=1+1"), ("+86", "'+86"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
     ("-2.50", "-2.50"), ("109.00", "109.00"), ("op-1", "op-1"), ("咸阳公交", "咸阳公交"), ("", "")],
)  # fmt: skip
def test_a_csv_cell_that_a_spreadsheet_would_run_is_prefixed(cell: str, written: str) -> None:
    assert history.csv_cell(cell) == written


def test_the_csv_has_a_header_and_signed_yuan_amounts() -> None:
    at = dt.datetime(2026, 12, 1, 16, 30, tzinfo=dt.UTC)
    rows = [
        history.HistoryEntry("tap:t00000000001:1", at, "purchase", -250, "t00000000001", at, "=evil", "=evil", "R1"),
        history.HistoryEntry("issue:x", at, "card_sale", 10_900),
    ]
    lines = history.to_csv(rows).split("\r\n")
    assert lines[0] == ",".join(history.CSV_HEADER)
    assert lines[1].startswith(
        "2026-12-02 00:30:00+08:00,2026-12-02 00:30:00+08:00,purchase,-2.50,t00000000001,'=evil,"
    )
    assert lines[2].split(",")[2:4] == ["card_sale", "109.00"]


# --- filters and cursors -----------------------------------------------------------------------------


def test_an_empty_filter_is_no_filter_and_values_are_normalised() -> None:
    assert history.parse_filter({}) == history.HistoryFilter()
    assert not history.parse_filter({"from": "", "kind": " ", "terminal": ""}).active
    f = history.parse_filter({"from": "2026-12-01", "to": "2026-12-02", "kind": "load", "terminal": "ABCDEF012345"})
    assert (f.date_from, f.date_to, f.kind, f.terminal_id) == (dt.date(2026, 12, 1), dt.date(2026, 12, 2), "load",
                                                               "abcdef012345")  # fmt: skip
    assert f.query() == {"from": "2026-12-01", "to": "2026-12-02", "kind": "load", "terminal": "abcdef012345"}


@pytest.mark.parametrize(
    "params",
    [{"from": "2026-1-1"}, {"to": "2026-02-30"}, {"from": "2026-12-02", "to": "2026-12-01"}, {"kind": "gift"},
     {"terminal": "12345"}, {"merchant": "a;b"}, {"merchant": "x" * 200}, {"from": "２０２６-１２-０１"}],
)  # fmt: skip
def test_a_bad_filter_names_its_field(params: dict[str, str]) -> None:
    with pytest.raises(PortalError) as refused:
        history.parse_filter(params)
    assert refused.value.code.value == "E_PORTAL_MALFORMED"
    assert refused.value.message.split(":")[0] in ("from", "to", "kind", "terminal", "merchant")


def test_dates_are_shanghai_days() -> None:
    start, end = history.day_bounds(dt.date(2026, 12, 2), dt.date(2026, 12, 2))
    assert start == dt.datetime(2026, 12, 1, 16, 0, tzinfo=dt.UTC)
    assert end == dt.datetime(2026, 12, 2, 16, 0, tzinfo=dt.UTC)


@given(st.datetimes(timezones=st.just(dt.UTC)), st.text(min_size=1, max_size=80))
def test_a_cursor_reads_back_as_written(at: dt.datetime, transfer_id: str) -> None:
    cursor = history.Cursor(at, transfer_id)
    assert history.decode_cursor(history.encode_cursor(cursor)) == cursor


@given(st.text(max_size=300))
def test_any_cursor_text_is_a_cursor_or_a_clear_refusal(text: str) -> None:
    try:
        history.decode_cursor(text)
    except PortalError as exc:
        assert exc.code.value == "E_PORTAL_MALFORMED"


@pytest.mark.parametrize(("text", "limit"), [(None, 50), ("", 50), ("1", 1), ("200", 200)])
def test_the_limit_is_bounded(text: str | None, limit: int) -> None:
    assert history.parse_limit(text) == limit


@pytest.mark.parametrize("text", ["0", "201", "-1", "1.5", "ten", "99999"])
def test_a_limit_out_of_bounds_is_refused(text: str) -> None:
    with pytest.raises(PortalError):
        history.parse_limit(text)


def test_tap_keys_are_read_only_from_tap_transfer_ids() -> None:
    assert history.tap_key("tap:t00000000001:42") == ("t00000000001", 42)
    assert history.tap_key("load:tu_1") is None and history.tap_key("tap:short:1") is None


# --- yuan ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [("50", 5000), ("12.5", 1250), ("12.50", 1250), (" 0.01 ", 1), ("1,000", 100_000), ("１２．５", 1250)],
)
def test_typed_yuan_are_read_as_fen_without_floats(text: str, fen: int) -> None:
    assert parse_yuan(text) == fen


@pytest.mark.parametrize("text", ["", "abc", "12.505", "-5", "0", "0.00", "1e3", "١٢", "12.", ".5", "1 2", "NaN"])
def test_text_that_is_not_yuan_is_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(AmountTextError) as refused:
        parse_yuan(text)
    assert refused.value.message


@given(st.integers(min_value=1, max_value=10**11 - 1))
def test_yuan_written_then_read_is_the_same_fen(fen: int) -> None:
    assert parse_yuan(yuan_plain(fen)) == fen


def test_yuan_are_shown_with_grouping_and_two_decimals() -> None:
    assert yuan(123_456_78, "zh_CN") == "¥123,456.78"
    assert yuan(5, "en") == "¥0.05" and yuan(-250, "en") == "-¥2.50" and yuan(0, "en") == "¥0.00"
    with pytest.raises(TypeError):
        yuan(1.5)  # type: ignore[arg-type]


def test_times_are_shown_in_shanghai_with_the_offset() -> None:
    assert shanghai_stamp(dt.datetime(2026, 12, 1, 16, 30, tzinfo=dt.UTC)) == "2026-12-02 00:30:00 +08:00"
    with pytest.raises(ValueError):
        shanghai_stamp(dt.datetime(2026, 12, 1, 16, 30))


# --- locale, redirects, CSP -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cookie", "header", "locale"),
    [(None, None, "zh_CN"), ("en", "zh-CN", "en"), ("zh_CN", "en", "zh_CN"), ("xx", "en-US,en;q=0.9", "en"),
     (None, "fr-FR, de;q=0.9", "zh_CN"), (None, "en;q=0, zh;q=0.1", "zh_CN"), (None, "de, en;q=0.5", "en"),
     (None, "zh-Hant-TW", "zh_CN"), (None, "en;q=bad", "zh_CN"), (None, "," * 100, "zh_CN")],
)  # fmt: skip
def test_the_locale_is_the_cookie_then_accept_language_then_chinese(
    cookie: str | None, header: str | None, locale: str
) -> None:
    assert choose_locale(cookie, header) == locale


@pytest.mark.parametrize(
    ("target", "safe"),
    [("/cards", "/cards"), ("/cards?x=1", "/cards?x=1"), (None, "/"), ("", "/"), ("//evil", "/"),
     ("https://evil", "/"), ("/\\evil", "/"), ("cards", "/"), ("/a\r\nSet-Cookie: x", "/")],
)  # fmt: skip
def test_redirects_go_only_to_our_own_paths(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe


@pytest.mark.parametrize("url", ["http://127.0.0.1:8465", "https://reader.example", "http://[::1]:8465"])
def test_a_reader_agent_origin_goes_into_the_csp(url: str) -> None:
    assert f"connect-src 'self' {check_origin(url)}" in content_security_policy(url)


@pytest.mark.parametrize(
    "url", ["http://x; script-src *", "ftp://x", "http://x/path", "http://x?q", "127.0.0.1:8465", "http://u@x"]
)
def test_anything_but_an_origin_is_refused_for_the_csp(url: str) -> None:
    with pytest.raises(ValueError):
        check_origin(url)


@pytest.mark.parametrize(
    ("path", "page"),
    [("/", True), ("/cards", True), ("/static/portal.css", True), ("/reader", True), ("/v1/terminals/x", False),
     ("/api/cards", False), ("/webhooks/payments", False), ("/interop/v1/x", False), ("/openapi.json", False),
     ("/docs", False), ("/api", False)],
)  # fmt: skip
def test_page_headers_are_for_pages_only(path: str, page: bool) -> None:
    assert is_page_path(path) is page
