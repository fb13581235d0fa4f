"""The social security module's error codes: a registry of its own, apart from the portal's.

The module's refusals (a bad import row, a correction that cannot be made, a personal record
asked for without card login) carry a stable code and a sentence, as every package's do
(``clearing.errors.CodedError``). The codes are the module's own so that the module can add
and change them without touching ``portal.errors``; the pages and the JSON routes of the
module answer them in the portal's shapes (``portal.modules.social_security.pages``).

Messages never carry an ID number, a name or an employer's credit code in clear: a message
may reach a log line or the audit log.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from clearing.contract.codes import CodeInfo
from clearing.errors import CodedError


class SsCode(StrEnum):
    # --- import rows (one per kind of bad row; docs/social-security.md, "Import") -----------
    E_SS_FILE_ENCODING = "E_SS_FILE_ENCODING"
    E_SS_FILE_EMPTY = "E_SS_FILE_EMPTY"
    E_SS_FILE_TOO_LARGE = "E_SS_FILE_TOO_LARGE"
    E_SS_FILE_HEADER = "E_SS_FILE_HEADER"
    E_SS_ROW_COLUMNS = "E_SS_ROW_COLUMNS"
    E_SS_ROW_ID_NUMBER = "E_SS_ROW_ID_NUMBER"
    E_SS_ROW_MONTH = "E_SS_ROW_MONTH"
    E_SS_ROW_INSURANCE = "E_SS_ROW_INSURANCE"
    E_SS_ROW_PAYER = "E_SS_ROW_PAYER"
    E_SS_ROW_AMOUNT = "E_SS_ROW_AMOUNT"
    E_SS_ROW_RULE = "E_SS_ROW_RULE"
    E_SS_ROW_DUPLICATE = "E_SS_ROW_DUPLICATE"
    E_SS_ROW_CONFLICT = "E_SS_ROW_CONFLICT"
    E_SS_IMPORT_REFUSED = "E_SS_IMPORT_REFUSED"
    # --- the personal record and statements ------------------------------------------------
    E_SS_CARD_LOGIN_REQUIRED = "E_SS_CARD_LOGIN_REQUIRED"
    E_SS_NO_ID_NUMBER = "E_SS_NO_ID_NUMBER"
    E_SS_YEAR = "E_SS_YEAR"
    E_SS_STATEMENT_NOT_FOUND = "E_SS_STATEMENT_NOT_FOUND"
    # --- staff corrections -----------------------------------------------------------------
    E_SS_ENTRY_NOT_FOUND = "E_SS_ENTRY_NOT_FOUND"
    E_SS_CORRECTION_REASON = "E_SS_CORRECTION_REASON"
    E_SS_CORRECTION_AMOUNT = "E_SS_CORRECTION_AMOUNT"
    E_SS_CORRECTION_NOTHING = "E_SS_CORRECTION_NOTHING"


_i = CodeInfo
S = SsCode
SS_CODES: Final[dict[SsCode, CodeInfo]] = {
    S.E_SS_FILE_ENCODING: _i(422, "the file is not UTF-8 text"),
    S.E_SS_FILE_EMPTY: _i(422, "the file holds no contribution rows"),
    S.E_SS_FILE_TOO_LARGE: _i(413, "the file is larger than one import takes"),
    S.E_SS_FILE_HEADER: _i(422, "the first line is not the contribution file's header"),
    S.E_SS_ROW_COLUMNS: _i(422, "the row has another number of fields than the header"),
    S.E_SS_ROW_ID_NUMBER: _i(422, "the resident ID number does not check"),
    S.E_SS_ROW_MONTH: _i(422, "the month is not YYYY-MM, or lies in the future or before 1991"),
    S.E_SS_ROW_INSURANCE: _i(422, "the insurance is not pension, medical, unemployment, work_injury or maternity"),
    S.E_SS_ROW_PAYER: _i(422, "the payer is not an 18-character unified social credit code with its check character"),
    S.E_SS_ROW_AMOUNT: _i(422, "an amount is not a whole number of fen between 0 and the limit"),
    S.E_SS_ROW_RULE: _i(422, "the amounts break a contribution rule (base, shares, who pays)"),
    S.E_SS_ROW_DUPLICATE: _i(422, "the same person, month, insurance and payer appear twice in the file"),
    S.E_SS_ROW_CONFLICT: _i(422, "this row was imported before with other amounts: a change is a staff correction"),
    S.E_SS_IMPORT_REFUSED: _i(422, "the file has bad rows: nothing was imported"),
    S.E_SS_CARD_LOGIN_REQUIRED: _i(403, "the social security record needs a login with the card"),
    S.E_SS_NO_ID_NUMBER: _i(409, "the account has no resident ID number on file, so no record can be found"),
    S.E_SS_YEAR: _i(422, "the year is not one with a record"),
    S.E_SS_STATEMENT_NOT_FOUND: _i(404, "no such statement"),
    S.E_SS_ENTRY_NOT_FOUND: _i(404, "no such contribution entry"),
    S.E_SS_CORRECTION_REASON: _i(422, "a correction needs a reason of 5 to 500 characters"),
    S.E_SS_CORRECTION_AMOUNT: _i(422, "the corrected amounts are not whole fen within the contribution rules"),
    S.E_SS_CORRECTION_NOTHING: _i(409, "the corrected amounts are the amounts on record: nothing to correct"),
}
assert set(SS_CODES) == set(SsCode)


class SocialSecurityError(CodedError[SsCode]):
    """A refused social security operation: ``code`` (stable, from ``SsCode``) and ``message``."""

    code_type = SsCode
    statuses = SS_CODES


__all__ = ["SS_CODES", "SocialSecurityError", "SsCode"]
