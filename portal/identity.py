"""Citizen identity data: check it, hash it for lookup, mask it for display — and keep no more.

The portal needs a citizen's resident ID number only to find the same person again (a second
account, a counter clerk's search, the social security module) and to show the citizen which
number is on file. So it stores a keyed hash (``id_number_hash``) and a masked form
(``ResidentId.masked``), never the clear number (``docs/portal.md``, "Identity data").
The hash is keyed (HMAC-SHA256 with a key from the key store) because 18-digit ID numbers
have little entropy: a plain SHA-256 of every plausible number is a few hours of work.

The resident ID number is GB 11643-1999: a 6-digit region code (GB/T 2260), the date of birth
as YYYYMMDD, a 3-digit sequence (odd for men) and a check character, ISO 7064 MOD 11-2 over
the first 17 digits, ``X`` standing for 10. The same layout and check serve the residence
permits of Hong Kong, Macao and Taiwan residents (regions 81, 82, 83) and the 2023 foreigner's
permanent residence ID card (leading ``9``), so those pass too.

Nothing here reads a clock: "today" is passed in. Reprs of the value types show the masked
form only, so a value that reaches a log line carries no personal data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final

from portal.errors import Code, PortalError

ID_NUMBER_LEN: Final = 18
ID_INPUT_CHARS_MAX: Final = 64  # before stripping; anything longer is not an ID number typed by a person
BIRTH_DATE_MIN: Final = dt.date(1900, 1, 1)
MOBILE_INPUT_CHARS_MAX: Final = 32
REAL_NAME_CHARS_MAX: Final = 64
LOOKUP_KEY_BYTES_MIN: Final = 32

# ISO 7064 MOD 11-2: weight of position i (0-based, left to right) is 2^(17-i) mod 11.
_WEIGHTS: Final = tuple(pow(2, 17 - i, 11) for i in range(17))
_CHECK_CHARS: Final = "10X98765432"  # indexed by (weighted sum mod 11)

# Province-level codes of GB/T 2260 (first two digits), plus 71 Taiwan and the residence permits
# of Hong Kong (81), Macao (82) and Taiwan (83) residents.
_REGIONS: Final = frozenset(
    str(n) for n in (*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55), *range(61, 66))
) | {"71", "81", "82", "83"}
_FOREIGN_PERMANENT_RESIDENT: Final = "9"  # 2023 layout: 9 + country code + province, birth date at the same place

_ID_SHAPE: Final = re.compile(r"[0-9]{17}[0-9X]")  # ASCII only: str.isdigit would take '١' and '²'
_MOBILE_SHAPE: Final = re.compile(r"1[3-9][0-9]{9}")
_MOBILE_PREFIXES: Final = ("+86", "0086", "86")
_MOBILE_SEPARATORS: Final = str.maketrans("", "", " -")

_ID_HASH_LABEL: Final = b"yikatong/portal/id-number/v1\x00"  # domain separation: the key may serve other lookups

# The commonest compound surnames (复姓): their masked form keeps both characters (欧阳**).
_COMPOUND_SURNAMES_TEXT: Final = (
    "欧阳司马上官诸葛东方皇甫尉迟公孙慕容长孙宇文司徒令狐夏侯轩辕端木独孤南宫西门百里呼延万俟澹台申屠"
    "太史闻人赫连钟离宗政濮阳公冶东郭拓跋淳于单于仲孙鲜于闾丘司空亓官司寇子车颛孙巫马公西漆雕乐正壤驷"
    "公良宰父谷梁段干第五"
)
COMPOUND_SURNAMES: Final = frozenset(
    _COMPOUND_SURNAMES_TEXT[i : i + 2] for i in range(0, len(_COMPOUND_SURNAMES_TEXT), 2)
)
_NAME_SEPARATORS: Final = frozenset("·• -")  # kept in the masked form: 阿依古丽·买买提 → 阿***·***


def check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of 17 ASCII digits."""
    assert len(first17) == 17 and first17.isascii() and first17.isdigit()
    return _CHECK_CHARS[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


@dataclass(frozen=True, slots=True)
class ResidentId:
    """A checked resident ID number, upper-case ``X``; shown only masked."""

    number: str = field(repr=False)
    birth_date: dt.date = field(repr=False)

    @property
    def masked(self) -> str:
        """``6104**********123X``: region to the prefecture, last four; the birth date is hidden."""
        return mask_id_number(self.number)

    def __repr__(self) -> str:
        return f"ResidentId({self.masked})"


def mask_id_number(number: str) -> str:
    """First 4 and last 4 characters, 10 stars between: enough for a person to recognise their own."""
    assert len(number) == ID_NUMBER_LEN
    return number[:4] + "*" * 10 + number[-4:]


def parse_id_number(text: str, *, today: dt.date) -> ResidentId:
    """Check a resident ID number as typed (surrounding whitespace and a lower-case ``x`` are fine).

    Checks in order, each with its own code: length, shape, region, birth date (a real date,
    not before 1900, not after ``today``), check character.
    """
    if len(text) > ID_INPUT_CHARS_MAX:
        raise PortalError(Code.E_ID_NUMBER_LENGTH, f"an ID number has {ID_NUMBER_LEN} characters")
    number = text.strip().upper()
    if len(number) != ID_NUMBER_LEN:
        raise PortalError(Code.E_ID_NUMBER_LENGTH, f"an ID number has {ID_NUMBER_LEN} characters, not {len(number)}")
    if _ID_SHAPE.fullmatch(number) is None:
        raise PortalError(Code.E_ID_NUMBER_FORMAT, "an ID number is 17 digits and a digit or X")
    if number[:2] not in _REGIONS and not number.startswith(_FOREIGN_PERMANENT_RESIDENT):
        raise PortalError(Code.E_ID_NUMBER_REGION, "the first two digits name no province-level region")
    birth_date = _birth_date(number[6:14], today)
    if check_char(number[:17]) != number[17]:
        raise PortalError(Code.E_ID_NUMBER_CHECK_DIGIT, "the check character does not match the first 17 digits")
    return ResidentId(number, birth_date)


def _birth_date(yyyymmdd: str, today: dt.date) -> dt.date:
    try:
        born = dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError:
        raise PortalError(Code.E_ID_NUMBER_BIRTH_DATE, "digits 7-14 are not a calendar date") from None
    if not BIRTH_DATE_MIN <= born <= today:
        raise PortalError(Code.E_ID_NUMBER_BIRTH_DATE, f"a date of birth lies between {BIRTH_DATE_MIN} and today")
    return born


def id_number_hash(resident_id: ResidentId, key: bytes) -> str:
    """The lookup key stored instead of the number: HMAC-SHA256(key, label ‖ number), hex.

    Takes a checked ``ResidentId`` so that one person always hashes the same (``X`` upper-case,
    no whitespace). The key lives in the key store; rotating it means re-hashing from numbers
    that citizens type again, since the clear numbers are not kept.
    """
    if len(key) < LOOKUP_KEY_BYTES_MIN:
        raise ValueError(f"the lookup key must be at least {LOOKUP_KEY_BYTES_MIN} bytes")
    return hmac.new(key, _ID_HASH_LABEL + resident_id.number.encode("ascii"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Mobile:
    """A mainland mobile number, 11 ASCII digits; shown only masked."""

    number: str = field(repr=False)

    @property
    def masked(self) -> str:
        """``138****5678``: the carrier prefix and the last four, as Chinese apps show it."""
        return self.number[:3] + "****" + self.number[7:]

    def __repr__(self) -> str:
        return f"Mobile({self.masked})"


def parse_mobile(text: str) -> Mobile:
    """A mainland mobile number as typed: spaces and hyphens, and a +86/0086/86 prefix, are dropped."""
    if len(text) > MOBILE_INPUT_CHARS_MAX:
        raise PortalError(Code.E_MOBILE_FORMAT, "a mobile number has 11 digits")
    number = text.strip().translate(_MOBILE_SEPARATORS)
    for prefix in _MOBILE_PREFIXES:
        if number.startswith(prefix) and len(number) == len(prefix) + 11:
            number = number[len(prefix) :]
            break
    if _MOBILE_SHAPE.fullmatch(number) is None:
        raise PortalError(Code.E_MOBILE_FORMAT, "a mainland mobile number has 11 digits and starts with 13 to 19")
    return Mobile(number)


@dataclass(frozen=True, slots=True)
class RealName:
    """A real name exactly as given (less surrounding whitespace); shown only masked."""

    value: str = field(repr=False)

    @property
    def masked(self) -> str:
        return mask_real_name(self.value)

    def __repr__(self) -> str:
        return f"RealName({self.masked})"


def parse_real_name(text: str) -> RealName:
    """Keep the name as the citizen wrote it: no case folding, no normalisation, no transliteration.

    Refused: empty, longer than ``REAL_NAME_CHARS_MAX``, or holding control, formatting
    (zero-width, bidi overrides), private-use or unassigned characters, which only hide what a
    clerk reads.
    """
    value = text.strip()
    if not value:
        raise PortalError(Code.E_REAL_NAME_EMPTY, "the real name is empty")
    if len(value) > REAL_NAME_CHARS_MAX:
        raise PortalError(Code.E_REAL_NAME_TOO_LONG, f"a real name has at most {REAL_NAME_CHARS_MAX} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in value):
        raise PortalError(Code.E_REAL_NAME_CHARACTERS, "the real name holds control or invisible characters")
    return RealName(value)


def mask_real_name(name: str) -> str:
    """Keep the surname (two characters for a compound surname), a star for every other character.

    ``张三`` → ``张*``, ``欧阳娜娜`` → ``欧阳**``; separators stay (``阿依古丽·买买提`` → ``阿***·***``);
    a one-character name is all star. Latin names keep their first letter: the rule does not
    guess which part is the family name.
    """
    letters = [c for c in name if c not in _NAME_SEPARATORS]
    if len(letters) <= 1:
        return "*" * len(name)
    kept = 2 if len(letters) >= 3 and name[:2] in COMPOUND_SURNAMES else 1
    return name[:kept] + "".join(c if c in _NAME_SEPARATORS else "*" for c in name[kept:])


__all__ = [
    "COMPOUND_SURNAMES",
    "Mobile",
    "RealName",
    "ResidentId",
    "check_char",
    "id_number_hash",
    "mask_id_number",
    "mask_real_name",
    "parse_id_number",
    "parse_mobile",
    "parse_real_name",
]
