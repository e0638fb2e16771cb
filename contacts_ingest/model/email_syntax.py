"""email-validator's verdict on an address, with its verdict on each domain remembered.

email-validator stays the one authority on what an address is: :func:`normalize_email`
gives exactly what ``validate_email(address, check_deliverability=False)`` gives (the
same normalized form, the same error and message), but decides each distinct domain
part only once. Real contact lists repeat their domains (a few mailbox providers, each
company's own domain), and the domain checks, character by character through the IDNA
tables, are most of the library's cost.

It splits the address as ``validate_email`` does, checks the local part with the
library's own function, asks :class:`DomainVerdicts` for the library's verdict on the
domain part, and checks the lengths of the whole address with the library's own
function, in ``validate_email``'s order. Addresses of a rarer shape (a quoted local
part, a display name, a local part that Unicode normalization changes, an empty or
bracketed domain) go to ``validate_email`` itself. The composition follows
email-validator 2.4 (pinned in pyproject.toml); tests/unit/test_email_syntax.py holds
it to the library address by address.
"""

from __future__ import annotations

import sys
import threading
import unicodedata
from collections import deque
from typing import NamedTuple

from email_validator import EmailSyntaxError, ValidatedEmail, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH
from email_validator.syntax import (
    split_email,
    validate_email_domain_name,
    validate_email_length,
    validate_email_local_part,
)

DOMAIN_CACHE_MAX_ENTRIES = 32_768
DOMAIN_CACHE_MAX_BYTES = 8 * 2**20
# An entry's share of the dict and the queue (hash, pointers, index slots, growth
# headroom): tests/unit/test_email_syntax.py measures the whole cache against the bound.
_BOOKKEEPING_BYTES_PER_ENTRY = 120
_CASE_INSENSITIVE_MAILBOX_NAMES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
# validate_email_length refuses a form of the address over EMAIL_MAX_LENGTH bytes of
# UTF-8, at most 4 bytes a character: forms this short cannot be refused.
_SURELY_SHORT = EMAIL_MAX_LENGTH // 4


class DomainName(NamedTuple):
    """A domain name email-validator accepts: its ASCII (IDNA) form and its normalized form."""

    ascii_domain: str
    domain: str


# A domain name email-validator accepts, or its message for one it refuses.
DomainVerdict = DomainName | str


def decide_domain(domain_part: str) -> DomainVerdict:
    """email-validator's verdict on a domain name, as ``validate_email`` asks for it."""
    try:  # validate_email's defaults, which contact.py has always used
        info = validate_email_domain_name(
            domain_part, test_environment=False, globally_deliverable=True
        )
    except EmailSyntaxError as error:
        return str(error)
    # Equal strings share one object: most domains arrive already normalized.
    ascii_domain = domain_part if info["ascii_domain"] == domain_part else info["ascii_domain"]
    domain = ascii_domain if info["domain"] == ascii_domain else info["domain"]
    return DomainName(ascii_domain, domain)


def _entry_bytes(key: str, verdict: DomainVerdict) -> int:
    size = _BOOKKEEPING_BYTES_PER_ENTRY + sys.getsizeof(key) + sys.getsizeof(verdict)
    if isinstance(verdict, DomainName):
        if verdict.ascii_domain is not key:
            size += sys.getsizeof(verdict.ascii_domain)
        if verdict.domain is not key and verdict.domain is not verdict.ascii_domain:
            size += sys.getsizeof(verdict.domain)
    return size


class DomainVerdicts:
    """email-validator's verdicts on domain parts, remembered first in, first out.

    Holds at most ``max_entries`` verdicts and ``max_bytes`` bytes (keys, verdicts and
    their bookkeeping). A verdict is keyed by the domain part exactly as
    sent and is a pure function of that text, so what one client sends decides only
    which verdicts are remembered (and so how fast an address is checked), never what
    any address is told. Hits take no lock; a miss decides outside the lock.
    """

    def __init__(
        self,
        max_entries: int = DOMAIN_CACHE_MAX_ENTRIES,
        max_bytes: int = DOMAIN_CACHE_MAX_BYTES,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._verdicts: dict[str, DomainVerdict] = {}
        # Oldest first. Popping a dict's first key would skip the slots of every key
        # popped before it.
        self._order: deque[str] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._verdicts)

    @property
    def bytes(self) -> int:
        """The bytes the remembered verdicts count for, as bounded by ``max_bytes``."""
        return self._bytes

    def verdict(self, domain_part: str) -> DomainVerdict:
        """email-validator's verdict on ``domain_part``, decided at most once while held."""
        known = self._verdicts.get(domain_part)
        if known is not None:
            return known
        verdict = decide_domain(domain_part)
        size = _entry_bytes(domain_part, verdict)
        if size > self.max_bytes:
            return verdict
        with self._lock:
            if domain_part in self._verdicts:
                return verdict
            while self._order and (
                len(self._order) >= self.max_entries or self._bytes + size > self.max_bytes
            ):
                oldest = self._order.popleft()
                self._bytes -= _entry_bytes(oldest, self._verdicts.pop(oldest))
            self._verdicts[domain_part] = verdict
            self._order.append(domain_part)
            self._bytes += size
        return verdict


_DOMAINS = DomainVerdicts()


def normalize_email(address: str, domains: DomainVerdicts = _DOMAINS) -> str:
    """``validate_email(address, check_deliverability=False).normalized``, decided faster.

    Raises ``EmailSyntaxError`` with email-validator's own message when the address is
    not valid; ``domains`` remembers the verdict on each domain part (one per process).
    """
    if address.isascii() and "@" in address and '"' not in address and "<" not in address:
        # split_email meets no quote, no angle bracket and no combining character here
        # (NFC leaves ASCII alone), so it stops at the first @-sign.
        local, _, domain_part = address.partition("@")
    else:
        display_name, local, _, quoted, domain_part = split_email(address)
        if display_name is not None or quoted:
            return validate_email(address, check_deliverability=False).normalized
    # ``validate_email``'s steps for an unquoted local part and no display name, in order.
    info = validate_email_local_part(
        local, allow_smtputf8=True, allow_empty_local=False, quoted_local_part=False, strict=False
    )
    if (
        unicodedata.normalize("NFC", local) != local
        or not domain_part
        or (domain_part.startswith("[") and domain_part.endswith("]"))
    ):
        return validate_email(address, check_deliverability=False).normalized
    local_part, ascii_local_part = info["local_part"], info["ascii_local_part"]
    if ascii_local_part is not None and ascii_local_part.lower() in _CASE_INSENSITIVE_MAILBOX_NAMES:
        ascii_local_part, local_part = ascii_local_part.lower(), local_part.lower()
    verdict = domains.verdict(domain_part)
    if isinstance(verdict, str):
        raise EmailSyntaxError(verdict)
    ascii_domain, domain = verdict
    normalized = local_part + "@" + domain
    longest = max(len(address), len(normalized), len(local_part) + 1 + len(ascii_domain))
    if longest > _SURELY_SHORT:
        checked = ValidatedEmail()
        checked.original = local + "@" + domain_part
        checked.normalized = normalized
        checked.local_part = local_part
        checked.ascii_local_part = ascii_local_part
        checked.ascii_domain = ascii_domain
        validate_email_length(checked)
    return normalized
