"""The reader agent's errors: a stable code, a sentence a person can act on, in Chinese and English.

The agent is the one part of the card-login and online-load chain a citizen talks to
directly (its PIN page), so every reader and card failure ends here as something to *do*:
put the card on the reader, plug the reader in, try the PIN again (and how many tries are
left), take the card to a counter. ``from_terminal`` is the one place that maps the
terminal layer's typed errors (``terminals.errors``: ``ReaderError``, ``CardRemoved``,
``CardRefused(sw)``) and the ISO 7816 status words of the citizen-auth application
(``card-profile.md``: VERIFY answers ``63Cx`` with x tries left, ``6983`` once blocked) to
these codes. The codes are the agent's own registry (its HTTP API is its own), all ``E_AGENT_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.errors import CodedError
from terminals.errors import CardRefused, CardRemoved, ReaderError, TerminalError

SW_PIN_BLOCKED: Final = 0x6983
SW_FILE_NOT_FOUND: Final = 0x6A82
SW_FUNCTION_NOT_SUPPORTED: Final = 0x6A81


class Code(StrEnum):
    # --- the reader and the card -----------------------------------------------------------
    E_AGENT_NO_READER = "E_AGENT_NO_READER"
    E_AGENT_NO_CARD = "E_AGENT_NO_CARD"
    E_AGENT_CARD_REMOVED = "E_AGENT_CARD_REMOVED"
    E_AGENT_READER_FAILED = "E_AGENT_READER_FAILED"
    E_AGENT_READER_BUSY = "E_AGENT_READER_BUSY"
    E_AGENT_NOT_AUTH_CARD = "E_AGENT_NOT_AUTH_CARD"
    E_AGENT_CARD_REFUSED = "E_AGENT_CARD_REFUSED"
    E_AGENT_WRONG_CARD = "E_AGENT_WRONG_CARD"
    # --- the PIN ----------------------------------------------------------------------------
    E_AGENT_PIN_FORMAT = "E_AGENT_PIN_FORMAT"
    E_AGENT_PIN_WRONG = "E_AGENT_PIN_WRONG"
    E_AGENT_PIN_BLOCKED = "E_AGENT_PIN_BLOCKED"
    # --- the agent's HTTP API ------------------------------------------------------------------
    E_AGENT_ORIGIN = "E_AGENT_ORIGIN"
    E_AGENT_HOST = "E_AGENT_HOST"
    E_AGENT_MALFORMED = "E_AGENT_MALFORMED"
    E_AGENT_NOT_FOUND = "E_AGENT_NOT_FOUND"
    E_AGENT_REQUEST_UNKNOWN = "E_AGENT_REQUEST_UNKNOWN"
    E_AGENT_REQUEST_STATE = "E_AGENT_REQUEST_STATE"
    E_AGENT_CANCELLED = "E_AGENT_CANCELLED"
    E_AGENT_TIMEOUT = "E_AGENT_TIMEOUT"
    # --- the portal's side of a load, relayed by the browser ------------------------------------
    E_AGENT_PORTAL_REFUSED = "E_AGENT_PORTAL_REFUSED"
    E_AGENT_PORTAL_ANSWER = "E_AGENT_PORTAL_ANSWER"
    # --- the purse relay (utility bills: the portal is the terminal) ---------------------------
    E_AGENT_APDU_REFUSED = "E_AGENT_APDU_REFUSED"


@dataclass(frozen=True, slots=True)
class Info:
    status: int
    zh: str  # what the citizen reads first (the portal is Chinese by default)
    en: str


_i = Info
CODES: Final[dict[Code, Info]] = {
    Code.E_AGENT_NO_READER: _i(
        503, "没有找到读卡器。请连接读卡器后重试。", "No card reader found. Connect the reader and try again."
    ),
    Code.E_AGENT_NO_CARD: _i(
        409,
        "读卡器上没有卡。请把卡放到读卡器上后重试。",
        "There is no card on the reader. Put your card on it and try again.",
    ),
    Code.E_AGENT_CARD_REMOVED: _i(
        409,
        "卡在操作完成前被拿走了。请把卡放回读卡器后重试。",
        "The card was taken off the reader before the operation finished. Put it back and try again.",
    ),
    Code.E_AGENT_READER_FAILED: _i(
        503,
        "读卡器没有响应。请把卡拿开再放回，或重新连接读卡器。",
        "The reader did not answer. Take the card off and put it back, or reconnect the reader.",
    ),
    Code.E_AGENT_READER_BUSY: _i(
        409,
        "读卡器正在处理另一个请求。请稍候再试。",
        "The reader is busy with another request. Wait a moment and try again.",
    ),
    Code.E_AGENT_NOT_AUTH_CARD: _i(
        409,
        "这张卡不能用于登录（没有身份认证应用）。请使用社会保障卡。",
        "This card cannot log in (it has no citizen-authentication application). Use your social security card.",
    ),
    Code.E_AGENT_CARD_REFUSED: _i(409, "卡拒绝了这项操作。", "The card refused the operation."),
    Code.E_AGENT_WRONG_CARD: _i(
        409,
        "读卡器上的卡不是门户页面所选的卡。请放上正确的卡。",
        "The card on the reader is not the one the portal page chose. Put the right card on the reader.",
    ),
    Code.E_AGENT_PIN_FORMAT: _i(422, "PIN 是 6 位数字。", "The PIN is 6 digits."),
    Code.E_AGENT_PIN_WRONG: _i(409, "PIN 错误。", "Wrong PIN."),
    Code.E_AGENT_PIN_BLOCKED: _i(
        409,
        "PIN 已锁定（错误次数过多）。请带卡和身份证到服务网点解锁。",
        "The PIN is blocked after too many wrong tries. Take the card and your ID to a service counter to unblock it.",
    ),
    Code.E_AGENT_ORIGIN: _i(
        403,
        "读卡助手只为配置的门户网站服务。",
        "The reader agent answers only the portal it was configured for.",
    ),
    Code.E_AGENT_HOST: _i(
        421, "读卡助手只在本机地址上服务。", "The reader agent answers only on this computer's loopback address."
    ),
    Code.E_AGENT_MALFORMED: _i(422, "请求格式不正确。", "The request is not of the shape this endpoint reads."),
    Code.E_AGENT_NOT_FOUND: _i(404, "没有这个地址。", "No such path."),
    Code.E_AGENT_REQUEST_UNKNOWN: _i(
        404,
        "这个请求已结束或不存在。请回到门户网站重新开始。",
        "This request has ended or never existed. Go back to the portal and start again.",
    ),
    Code.E_AGENT_REQUEST_STATE: _i(409, "这个请求现在不能这样处理。", "This request cannot take that step now."),
    Code.E_AGENT_CANCELLED: _i(409, "操作已取消。", "The operation was cancelled."),
    Code.E_AGENT_TIMEOUT: _i(
        408,
        "等待时间过长，操作已结束。请回到门户网站重新开始。",
        "The operation waited too long and has ended. Go back to the portal and start again.",
    ),
    Code.E_AGENT_PORTAL_REFUSED: _i(409, "门户网站拒绝了这一步。", "The portal refused this step."),
    Code.E_AGENT_PORTAL_ANSWER: _i(502, "门户网站的回答无法读取。", "The portal's answer could not be read."),
    Code.E_AGENT_APDU_REFUSED: _i(
        403,
        "读卡助手只转发钱包支付的指令，这条指令被拒绝。",
        "The reader agent relays purse payment commands only; this command was refused.",
    ),
}


RETRYABLE: Final = frozenset(
    {
        Code.E_AGENT_NO_READER,
        Code.E_AGENT_NO_CARD,
        Code.E_AGENT_CARD_REMOVED,
        Code.E_AGENT_READER_FAILED,
        Code.E_AGENT_READER_BUSY,
        Code.E_AGENT_WRONG_CARD,
        Code.E_AGENT_PIN_FORMAT,
        Code.E_AGENT_PIN_WRONG,
    }
)


class AgentError(CodedError[Code]):
    """A refused agent operation. ``message`` is the English sentence, ``message_zh`` the Chinese.

    ``detail`` adds what is specific (tries left, a status word) to the registry's sentence.
    """

    code_type = Code
    statuses = CODES

    def __init__(self, code: Code, detail: str = "", *, zh_detail: str = "", status: int | None = None) -> None:
        info = CODES[code]
        super().__init__(code, f"{info.en} {detail}".strip(), status=status)
        self.message_zh = f"{info.zh}{zh_detail}"

    @property
    def retry(self) -> bool:
        """The same request may be tried again (on the PIN page: another PIN, the card put back)."""
        return self.code in RETRYABLE

    def body(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message, "message_zh": self.message_zh}


def pin_refused(sw: int) -> AgentError:
    """VERIFY's refusals (``card-profile.md``): ``63Cx`` x tries left (0: blocked), ``6983`` blocked."""
    if sw == SW_PIN_BLOCKED or sw == 0x63C0:
        return AgentError(Code.E_AGENT_PIN_BLOCKED)
    if sw & 0xFFF0 == 0x63C0:
        tries = sw & 0x0F
        return AgentError(
            Code.E_AGENT_PIN_WRONG,
            f"{tries} {'try' if tries == 1 else 'tries'} left.",
            zh_detail=f"还可以再试 {tries} 次。",
        )
    return AgentError(Code.E_AGENT_CARD_REFUSED, f"VERIFY answered {sw:04X}.", zh_detail=f"（状态字 {sw:04X}）")


def from_terminal(exc: TerminalError) -> AgentError:
    """The terminal layer's typed errors as the agent's (``terminals.errors``)."""
    if isinstance(exc, CardRemoved):
        return AgentError(Code.E_AGENT_CARD_REMOVED)
    if isinstance(exc, ReaderError):
        return AgentError(Code.E_AGENT_READER_FAILED)
    if isinstance(exc, CardRefused):
        if exc.what == "VERIFY":
            return pin_refused(exc.sw)
        if exc.sw == SW_PIN_BLOCKED:
            return AgentError(Code.E_AGENT_PIN_BLOCKED)
        return AgentError(
            Code.E_AGENT_CARD_REFUSED, f"{exc.what} answered {exc.sw:04X}.", zh_detail=f"（{exc.what}：{exc.sw:04X}）"
        )
    return AgentError(Code.E_AGENT_CARD_REFUSED, exc.message)


__all__ = ["CODES", "RETRYABLE", "AgentError", "Code", "Info", "from_terminal", "pin_refused"]
