"""Keep credentials out of logs, banners and error messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/@:]*)(:[^\s/@]*)?@", re.IGNORECASE)
# An API key is `sy_<key id>_<secret>`; the id is public and worth keeping in a log line.
_API_KEY_IN_TEXT = re.compile(r"\b(sy_[0-9a-f]{16}_)[A-Za-z0-9_-]+")


def redact_url(url: str) -> str:
    """Mask the password (and a bare token used as user) in a URL; keep host and path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None and not parts.username:
        return url
    user = parts.username or ""
    if parts.password is None:
        user = "***"  # redis://token@host puts the secret where the user goes
    netloc = f"{user}:***@" if parts.password is not None else f"{user}@"
    # Host and port exactly as given: `hostname` drops IPv6 brackets, `port` raises on junk.
    netloc += parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask the credentials of every URL and the secret of every API key in free text.

    Every log line passes here: a text without `://` or `sy_`, which each pattern needs, is
    returned after a substring search, several times cheaper than the patterns' scan."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(
            lambda m: f"{m.group(1)}***@" if not m.group(3) else f"{m.group(1)}{m.group(2)}:***@",
            text,
        )
    return _API_KEY_IN_TEXT.sub(r"\1***", text) if "sy_" in text else text
