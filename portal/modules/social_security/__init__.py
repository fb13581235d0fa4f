"""Social security (社会保障), issue 13: contribution record, personal account, statements, corrections.

``docs/social-security.md``. The rules are pure (``rules``, ``statement``); ``service`` is the
shell on the module's tables (``models``, migration 0012); ``pages`` mounts the citizen pages
and the staff routes; ``demo`` seeds the demo citizen's record.
"""

from portal.modules.social_security.errors import SS_CODES, SocialSecurityError, SsCode
from portal.modules.social_security.service import ImportReport, SocialSecurityService

__all__ = ["SS_CODES", "ImportReport", "SocialSecurityError", "SocialSecurityService", "SsCode"]
