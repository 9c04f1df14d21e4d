"""Removing secrets from text before it is logged, audited, shown or sent out, and telling
whether a credential someone gave is the secret."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import Any

_PATTERNS = [
    re.compile(r"xox[abposr]-[0-9A-Za-z-]{8,}"),
    re.compile(r"xapp-[0-9A-Za-z-]{8,}"),
    re.compile(r"sk-ant-[0-9A-Za-z_-]{8,}"),
    re.compile(r"\bgh[pousr]_[0-9A-Za-z]{20,}"),
    re.compile(r"github_pat_[0-9A-Za-z_]{20,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bsk-(?:proj-)?[0-9A-Za-z_-]{20,}"),
    re.compile(r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    re.compile(r"\bglpat-[0-9A-Za-z_-]{20,}"),
    re.compile(r"\bnpm_[0-9A-Za-z]{36}"),
    re.compile(r"\beyJ[0-9A-Za-z_-]{10,}\.eyJ[0-9A-Za-z_-]{10,}\.[0-9A-Za-z_-]{10,}"),
    re.compile(r"(?i)\bbearer\s+[0-9A-Za-z._~+/-]{16,}=*"),
    re.compile(r"(?<=://)[^\s:/@]+:[^\s@/]{4,}(?=@)"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
    re.compile(
        r"(?i)\b((?:\w*_)?(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)(?:_\w*)?)"
        r"(\s*[:=]\s*)(['\"]?)[^\s'\"]{6,}"
    ),
]
MASK = "[redacted]"


def redact(text: str, known: Iterable[str] = ()) -> str:
    """Mask configured secrets and anything shaped like a common credential."""
    for value in known:
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        if pattern.groups >= 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{MASK}", text)
        else:
            text = pattern.sub(MASK, text)
    return text


def redact_data(value: Any, known: Iterable[str] = ()) -> Any:
    """``redact`` applied to every string inside nested dicts and lists."""
    known = tuple(known)
    if isinstance(value, str):
        return redact(value, known)
    if isinstance(value, dict):
        return {k: redact_data(v, known) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, known) for v in value]
    return value


def same_secret(given: str, secret: str) -> bool:
    """Whether ``given`` (as a header carried it) is ``secret``, in constant time. Compared as
    bytes: ``hmac.compare_digest`` raises on text with non-ASCII characters, which a header
    may carry."""
    return bool(secret) and hmac.compare_digest(given.encode(), secret.encode())
