"""The agent's PIN page: served by the agent at its own origin, so the portal never sees the PIN.

Plain HTML and a stylesheet of its own (``/agent.css``), no script at all: the page's CSP is
``default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'``, so it
cannot be framed by the portal or anyone else (a framed PIN field invites clickjacking) and
its form posts only back to the agent. It names the portal that asked (the one origin the
agent answers), says what the card will do, and carries the request id and a per-request
form token as hidden fields. Chinese first, English under it; one labelled field and two
buttons, with ids for a browser test (``pin``, ``pin-submit``, ``pin-cancel``, ``pin-error``,
``pin-done``).
"""

from __future__ import annotations

from html import escape
from typing import Final

from portal.reader_agent.errors import AgentError

PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

CSS: Final = """\
:root { color-scheme: light dark; font-family: system-ui, "Noto Sans CJK SC", sans-serif; }
body { max-width: 28rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }
h1 { font-size: 1.4rem; }
.en { font-size: 0.95em; opacity: 1; }
.origin { font-family: ui-monospace, monospace; word-break: break-all; }
label { display: block; font-weight: 600; margin: 1rem 0 0.25rem; }
input[type=password] { font-size: 1.5rem; letter-spacing: 0.4em; width: 10ch; padding: 0.3rem; }
button { font-size: 1rem; padding: 0.5rem 1.2rem; margin: 1rem 0.5rem 0 0; }
.alert { border: 2px solid #b00020; padding: 0.5rem 0.75rem; }
.done { border: 2px solid #1b5e20; padding: 0.5rem 0.75rem; }
"""


def _page(title_zh: str, title_en: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{escape(title_zh)} · {escape(title_en)}</title>
<link rel="stylesheet" href="/agent.css">
</head>
<body>
<main>
<h1>{escape(title_zh)} <span class="en" lang="en">{escape(title_en)}</span></h1>
{body}
</main>
</body>
</html>
"""


def _error_block(error: AgentError | None) -> str:
    if error is None:
        return ""
    return (
        f'<div id="pin-error" class="alert" role="alert" data-code="{escape(error.code.value)}">'
        f"<p>{escape(error.message_zh)}</p>"
        f'<p class="en" lang="en">{escape(error.message)}</p></div>'
    )


def pin_form(*, request_id: str, form_token: str, origin: str, error: AgentError | None) -> str:
    """Ask for the PIN (again, with the last try's error, when there was one)."""
    body = f"""<p><span class="origin">{escape(origin)}</span> 请求用您的卡登录。
请确认卡在读卡器上，然后输入卡的 PIN。</p>
<p class="en" lang="en"><span class="origin">{escape(origin)}</span> asks your card to log you in.
Check that the card is on the reader, then enter the card's PIN.</p>
{_error_block(error)}
<form method="post" action="/pin" autocomplete="off">
<input type="hidden" name="request" value="{escape(request_id)}">
<input type="hidden" name="form_token" value="{escape(form_token)}">
<label for="pin">PIN（6 位数字）<span class="en" lang="en">PIN (6 digits)</span></label>
<input id="pin" name="pin" type="password" inputmode="numeric" pattern="[0-9]{{6}}" minlength="6" maxlength="6"
 required autofocus autocomplete="off" aria-describedby="pin-help">
<p id="pin-help" class="en">PIN 只发送到卡上，不会发送给网站。
<span lang="en">The PIN goes to the card only, never to the website.</span></p>
<button id="pin-submit" type="submit" name="action" value="sign">确认 <span lang="en">Sign in</span></button>
<button id="pin-cancel" type="submit" name="action" value="cancel" formnovalidate>
取消 <span lang="en">Cancel</span></button>
</form>
"""
    return _page("输入卡的 PIN", "Enter the card's PIN", body)


def done_page() -> str:
    body = """<div id="pin-done" class="done" role="status">
<p>卡已签名。请关闭此窗口，回到门户网站。</p>
<p class="en" lang="en">The card has signed. Close this window and go back to the portal.</p>
</div>
"""
    return _page("完成", "Done", body)


def ended_page(error: AgentError) -> str:
    """The request is over: cancelled, failed (a blocked PIN), expired or unknown."""
    body = f"""{_error_block(error)}
<p>请关闭此窗口，回到门户网站重新开始。</p>
<p class="en" lang="en">Close this window and start again from the portal.</p>
"""
    return _page("请求已结束", "This request has ended", body)


__all__ = ["CSS", "PAGE_CSP", "done_page", "ended_page", "pin_form"]
