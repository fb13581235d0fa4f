"""Every word a template shows has its Chinese: a page half in English is a bug a test can catch."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.pofile import read_po

PORTAL = Path(__file__).resolve().parents[2] / "portal"
MSGID = re.compile(r"""_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")


def test_every_template_message_has_a_zh_cn_translation() -> None:
    with (PORTAL / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    translated = {m.id for m in catalog if m.id and m.string}
    missing = sorted(
        (template.relative_to(PORTAL).as_posix(), found[0] or found[1])
        for template in (PORTAL / "templates").rglob("*.html")
        for found in MSGID.findall(template.read_text(encoding="utf-8"))
        if (found[0] or found[1]) not in translated
    )
    assert not missing, missing
