"""Email addresses from the RFC 5322 / RFC 6531 grammars, and their near misses.

Shared by the differential test (tests/unit/test_email_syntax.py) and its longer form
in the benchmark (bench/validation.py). The oracle is email-validator's
``validate_email`` on the whole address: :func:`outcome` of it and of the fast path must
be equal for every address these strategies draw.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import idna
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from hypothesis import strategies as st

from contacts_ingest.model import contact
from contacts_ingest.model.contact import ContactInvalid, parse_contact

# The contract's own examples (the seed's, mangled as the seed page carries it) and the
# unit tests' boundary cases.
SEED_ADDRESSES = [
    "bob@example.com",
    "[email protected]",
    "Bob.Smith@EXAMPLE.com",
    "",
    "not-an-email",
    "a@",
    "@example.com",
    "a@b",
    "a" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 57 + ".com",
    "a" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 58 + ".com",
    "a" * 64 + "@" + "\ufb01" * 6 + "." + "d" * 63 + "." + "d" * 63 + "." + "d" * 47 + ".com",
]

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
# Characters outside atext: RFC 5322 specials, spaces, controls.
SPECIALS = '()<>[]:;@\\,." \t\r\n\x00\x7f'
# Non-ASCII characters with something to test: scripts (left-to-right and right-to-left),
# combining marks, characters NFC or UTS-46 change (compatibility forms, case, ligatures,
# decomposed sequences), IDNA's contextual and deviation characters, dots in disguise,
# spaces, format and private-use characters, unassigned and non-characters, surrogates.
UNICODE = [
    *"éüñßøåçÄÖÜÉ",  # Latin
    *"αβγΣσς",  # Greek, final sigma
    *"дфяЖЁ",  # Cyrillic
    *"中文日本語한국",  # CJK, Hangul
    *"אבג",  # Hebrew (right to left)
    *"مرحب",  # Arabic (right to left)
    *"٠١٢",  # Arabic-Indic digits
    *"क्षि",  # Devanagari with virama and vowel sign
    *"ไทย",  # Thai
    "\u0301",  # combining acute accent
    "\u0338",  # combining long solidus overlay (composes with <, =, >)
    "e\u0301",  # decomposed é
    "\u212b",  # Angstrom sign (NFC: Å)
    "\ufb01",  # ligature fi (UTS-46: "fi")
    "\uff21",  # fullwidth A
    "\u2160",  # Roman numeral one
    "\u2488",  # digit one full stop (contains a dot)
    "\u3002",  # ideographic full stop (a label separator)
    "\uff0e",  # fullwidth full stop
    "\uff61",  # halfwidth ideographic full stop
    "\uff20",  # fullwidth at-sign
    "\ufe6b",  # small commercial at
    "\u00b7",  # middle dot (contextual in IDNA)
    "\u200c",  # zero width non-joiner
    "\u200d",  # zero width joiner
    "\u00ad",  # soft hyphen
    "\u00a0",  # no-break space
    "\u2003",  # em space
    "\u2028",  # line separator
    "\u202e",  # right-to-left override
    "\ufeff",  # byte order mark
    "\ue000",  # private use
    "\u0378",  # unassigned
    "\uffff",  # non-character
    "\ud800",  # lone surrogate
    "\U0001f600",  # emoji
    "\U00010348",  # Gothic letter (astral plane)
    "\u0080",  # C1 control
]
LETTERS = [c for c in UNICODE if len(c) == 1 and c.isalpha()]

# Top-level domains and suffixes: ordinary, internationalised (both forms), numeric,
# special-use and reserved (email-validator refuses them), case variants.
TLDS = [
    *("com", "org", "net", "de", "io", "co.uk", "com.au", "museum", "c"),
    *("xn--p1ai", "рф", "中国", "xn--fiqs8s", "XN--P1AI"),
    *("123", "a1", "1a", "co-op", "-com", "com-"),
    *("arpa", "in-addr.arpa", "invalid", "local", "localhost", "onion", "test"),
    *("example", "example.com", "TEST", "Local", "LocalHost", "ARPA"),
]
COMMON_TLDS = ["com", "org", "de", "co.uk", "io", "рф", "xn--p1ai"]
PROVIDERS = ["gmail.com", "yahoo.com", "outlook.com", "GMail.com", "gmx.de", "yandex.ru"]
LITERALS = [
    *("[1.2.3.4]", "[255.255.255.255]", "[256.1.1.1]", "[1.2.3]", "[01.2.3.4]"),
    *("[IPv6:::1]", "[ipv6:2001:db8::1]", "[IPv6:2001:DB8:0:0:0:0:0:1]", "[IPv6:fe80::1%eth0]"),
    *("[IPv6:1.2.3.4]", "[IPv6:::ffff:1.2.3.4]", "[tag:content]", "[x]", "[]", "[", "]"),
    *("[ 1.2.3.4]", "[1.2.3.4", "[a]b]", "[IPv6:\u0661::1]", "[é:x]"),
]
# Domains whose forms differ in length: A-labels of repeated letters are shorter than
# their UTF-8 (too long after normalization), labels of scattered CJK or Hangul longer
# (too long in IDNA ASCII).
_REPEATED_CJK = idna.encode("例" * 40).decode()
_SCATTERED_CJK = "".join(chr(0x4E00 + i * 397) for i in range(18))
LENGTH_CHANGING_DOMAINS = [
    _REPEATED_CJK + ".com",
    _REPEATED_CJK + "." + _REPEATED_CJK + ".com",
    idna.encode("é" * 50).decode() + ".com",
    _SCATTERED_CJK + ".com",
    _SCATTERED_CJK + "." + _SCATTERED_CJK + ".com",
    "".join(chr(0xAC00 + i * 531) for i in range(18)) + ".com",
]


def vary_case(text: str, pattern: int) -> str:
    """``text`` with letter i upper-cased when bit i of ``pattern`` is set, else lowered."""
    return "".join(c.upper() if pattern >> (i % 64) & 1 else c.lower() for i, c in enumerate(text))


def cased(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The strategy's strings, sometimes as they are, sometimes in mixed case."""
    return strategy | st.builds(vary_case, strategy, st.integers(0, 2**64 - 1))


def _punycode(label: str) -> str:
    try:
        return idna.encode(label).decode("ascii")
    except idna.IDNAError:
        return "xn--" + label.encode("ascii", "replace").decode()


def weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """``one_of`` with weights (``one_of`` draws each distinct branch equally often)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


def pieces(options: list[str], min_size: int = 0, max_size: int = 10) -> st.SearchStrategy[str]:
    """Strings of ``options`` (some of which are several code points) end to end."""
    return st.lists(st.sampled_from(options), min_size=min_size, max_size=max_size).map("".join)


# Local parts (RFC 5322 3.2.3 dot-atom, 3.2.4 quoted-string; RFC 6531 3.3 UTF-8 atext).
atext = st.text(ATEXT, min_size=1, max_size=12)
intl_atext = pieces([*ATEXT, *LETTERS], min_size=1)
odd_atext = pieces([*ATEXT, *UNICODE], min_size=1)
dot_atoms = cased(st.lists(atext | intl_atext, min_size=1, max_size=4).map(".".join))
qtext = st.sampled_from([*ATEXT, *SPECIALS, *UNICODE, '\\"', "\\\\", "\\a", "@", "."])
local_parts = weighted(
    (12, dot_atoms),  # the common shape
    (1, st.lists(atext | odd_atext, min_size=1, max_size=3).map(".".join)),
    (1, st.lists(qtext, max_size=12).map(lambda q: '"' + "".join(q) + '"')),
    (1, pieces([*ATEXT, *SPECIALS, *UNICODE], max_size=16)),  # near misses
    (1, dot_atoms.map(lambda a: "." + a)),
    (1, dot_atoms.map(lambda a: a + ".")),
    (1, st.tuples(dot_atoms, dot_atoms).map("..".join)),
    (1, st.integers(60, 66).map(lambda n: "a" * n)),  # RFC 5321's 64-octet local part
    (1, st.integers(30, 34).map(lambda n: "é" * n)),  # 64 octets of UTF-8
    (1, cased(st.sampled_from(CASE_INSENSITIVE_MAILBOX_NAMES))),  # RFC 2142, lowered
    (1, st.sampled_from(["bob", "Bob.Smith", "o'hara", "x+tag", "ﬁnn", "\u0301a", "a\u0301"])),
)

# Domain labels (RFC 1035 / RFC 1123 LDH labels; RFC 5890 U-labels and A-labels).
ldh_labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=15)
intl_labels = pieces([*string.ascii_lowercase, *string.digits, *LETTERS], min_size=1)
clean_labels = weighted(
    (6, ldh_labels),
    (1, cased(ldh_labels)),
    (1, st.tuples(ldh_labels, ldh_labels).map("-".join)),
    (1, cased(intl_labels)),
    (1, intl_labels.map(_punycode)),  # the A-label of a U-label
    (1, st.integers(61, 65).map(lambda n: "l" * n)),  # RFC 1035's 63-octet label
)
odd_labels: st.SearchStrategy[str] = st.one_of(
    st.text(string.ascii_letters + string.digits + "-", max_size=20),
    st.text(string.ascii_lowercase + string.digits + "-", max_size=10).map(lambda t: "xn--" + t),
    st.sampled_from(["ab--c", "xn--", "xn--a", "xn--zz-", "--", "a-", "-a", "a--b", "1", "_dmarc"]),
    pieces([*ATEXT, *SPECIALS, *UNICODE], max_size=8),
)
separators = st.sampled_from([*["."] * 20, "\u3002", "\uff0e", "\uff61", ".."])


@st.composite
def domain_names(draw: st.DrawFn) -> str:
    """Dotted names, mostly well formed; some with one odd label, separator or suffix."""
    parts = draw(st.lists(clean_labels, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        parts.insert(draw(st.integers(0, len(parts))), draw(odd_labels))
    tld = draw(st.sampled_from(COMMON_TLDS) | st.sampled_from(TLDS) | cased(st.sampled_from(TLDS)))
    text = tld
    for label in reversed(parts):
        text = label + draw(separators) + text
    # Hypothesis favours the ends of a range: a value inside it is a rare case.
    if draw(st.integers(0, 15)) == 7:
        text += "."  # the root
    if draw(st.integers(0, 31)) == 7:
        text = "." + text
    return text


@st.composite
def long_domains(draw: st.DrawFn) -> str:
    """Domains of 240 to 256 characters: RFC 1035's 253 octets and a label either side."""
    length = draw(st.integers(240, 256))
    label = draw(st.sampled_from(["d", "é", "ﬁ", "ᾀ", "例"])) * 63
    text = ".".join([label] * 4)[: length - 4] + ".com"
    return text.replace("..", ".d")


ip_literals = st.ip_addresses(v=4).map(lambda a: f"[{a}]") | st.builds(
    lambda tag, a: f"[{tag}{a}]",
    st.sampled_from(["IPv6:", "ipv6:", "IPV6:", ""]),
    st.ip_addresses(v=6),
)

domains = weighted(
    (10, domain_names()),  # the common shape
    (2, cased(st.sampled_from(PROVIDERS))),
    (1, clean_labels),  # dotless
    (1, long_domains()),
    (1, st.sampled_from(LENGTH_CHANGING_DOMAINS)),
    (1, st.sampled_from(LITERALS)),
    (1, ip_literals),
    (1, odd_labels),
)


@st.composite
def boundary_addresses(draw: st.DrawFn) -> str:
    """Addresses of 252 to 256 characters in all: RFC 3696's 254 octets either side."""
    domain = draw(long_domains() | domain_names())
    total = draw(st.integers(252, 256))
    size = max(1, total - len(domain) - 1)
    filler = draw(st.sampled_from(["a", "é", "b.c"]))
    local = (filler * size)[:size].strip(".") or "a"
    return local + "@" + domain


DISPLAY_NAMES = ["", "Bob", "Bob Smith", '"Smith, Bob"', "B.ob", "\u202e", '"Bob \\" S"']
# Shapes around an address, as users paste them.
SHAPES = [
    *("{name} <{address}>", "{name}<{address}>", "<{address}>", "{name} <{address}> "),
    *("{name} <{address}>x", "{name} <{address}", " {address}", "{address}\n"),
    *("{address}@x.com", "{address}\uff20x.com", "{address}\u0301", "a\u0338<{address}>"),
    *("{local}", "{local}\uff20example.com", "{local}\ufe6bexample.com"),
    "{local}@\u0301example.com",
]


@st.composite
def whole_addresses(draw: st.DrawFn) -> str:
    """Shapes around the address: display names, angle brackets, stray or extra at-signs."""
    address = draw(local_parts) + "@" + draw(domains)
    name = draw(st.sampled_from(DISPLAY_NAMES))
    shape = draw(st.sampled_from(SHAPES))
    return shape.format(name=name, address=address, local=draw(local_parts))


addresses = weighted(
    (4, st.builds(lambda local, domain: local + "@" + domain, local_parts, domains)),
    (1, boundary_addresses()),
    (2, whole_addresses()),
    (1, st.sampled_from(SEED_ADDRESSES)),
    (1, st.text(max_size=40)),
)


# A fixed corpus: each of these local parts at each of these domains, and addresses of
# 250 to 258 characters in all, so every shape meets every other at least once.
CORPUS_LOCALS = [
    *("bob", "Bob.Smith", "x+tag", "o'hara", "a" * 64, "a" * 65, "é" * 32, "é" * 33),
    *("Postmaster", "INFO", "ñandú", "用户", "ﬁnn", "e\u0301", "\u212b", "\u0301a"),
    *('"quoted"', '"a@b"', '"a b"', '"\\""', '""', '"é"', '"a"b', '"\u0301"'),
    *(".bob", "bob.", "b..b", "", "bob smith", "\u202eabc", "a\u200db", "a\x00b"),
    *("Bob <bob", "<bob", "a\ud800"),
]
CORPUS_DOMAINS = [
    *PROVIDERS,
    *LITERALS,
    *(f"example.{tld}" for tld in TLDS),
    *TLDS,
    *("xn--mnchen-3ya.de", "münchen.de", "MÜNCHEN.DE", "faß.de", "xn--fa-hia.de"),
    *("ουτοπία.δπθ.gr", "例え.テスト", "例え.jp", "ﬁ.com", "⒈.com", "a\u3002com", "a\uff0ecom"),
    *("١٢.com", "1.אב.com", "אב.1.com", "xn--4dbc.com", "a_b.com", "a b.com", "a.b"),
    *("1.2.3.4", "ab--c.com", "xn--zz.com", "xn--a.com", "-a.com", "a-.com", "a..com"),
    *(".a.com", "a.com.", "a.com..", "l" * 63 + ".com", "l" * 64 + ".com", "", "@", "b@c.com"),
    *("\u0301a.com", "a\u200d.com", "a\u00b7l.com", "l\u00b7l.cat", "x.test", "x.onion"),
    *("a.local", "mail.arpa", "b.invalid", "EXAMPLE.COM", "Example.Com.", "ex\u0430mple.com"),
]


def _long_domain(length: int, letter: str) -> str:
    label = letter * 63
    return (".".join([label] * 4)[: length - 4] + ".com").replace("..", ".d")


def corpus() -> list[str]:
    """The seed's addresses, every corpus local part at every corpus domain, and lengths
    either side of the 64-character local part, 253-character domain and 254 in all."""
    addresses = [*SEED_ADDRESSES]
    addresses += [local + "@" + domain for local in CORPUS_LOCALS for domain in CORPUS_DOMAINS]
    for shape in SHAPES:
        for name in DISPLAY_NAMES:
            for local in CORPUS_LOCALS[:12]:
                address = local + "@example.com"
                addresses.append(shape.format(name=name, address=address, local=local))
    for letter in ("d", "é", "ﬁ", "ᾀ", "İ", "例"):
        for length in (187, 188, 189, 190, 251, 252, 253, 254):
            domain = _long_domain(length, letter)
            for total in range(250, 259):
                size = total - len(domain) - 1
                for filler in ("a", "é"):
                    if size >= 1:
                        addresses.append(filler * size + "@" + domain)
    for domain in ["example.com", *LENGTH_CHANGING_DOMAINS]:
        forms = validate_email("a@" + domain, check_deliverability=False)
        octets = {len(domain.encode()), len(forms.domain.encode()), len(forms.ascii_domain)}
        for filler, width in (("a", 1), ("é", 2), ("例", 3), ("\U0001f600", 4)):
            for size in range(1, 250):
                if any(abs(size * width + 1 + n - 254) <= 4 for n in octets):
                    addresses.append(filler * size + "@" + domain)
    return addresses


Outcome = tuple[str, ...]


def outcome(check: Callable[[str], str], address: str) -> Outcome:
    """What ``check`` says of ``address``: the normalized form, or the error and message."""
    try:
        return ("valid", check(address))
    except EmailNotValidError as error:
        return ("invalid", type(error).__name__, str(error))
    except Exception as error:  # a crash must be the same crash
        return ("crash", type(error).__name__, str(error))


def email_validator_verdict(address: str) -> str:
    """The oracle: email-validator on the whole address, as contact.py called it before."""
    return validate_email(address, check_deliverability=False).normalized


@contextmanager
def email_validator_directly() -> Iterator[None]:
    """Inside: ``parse_contact`` as it was before, email-validator on every address."""
    with mock.patch.object(contact, "normalize_email", email_validator_verdict):
        yield


def parse_outcome(body: Any) -> tuple[Any, ...]:
    """What ``parse_contact`` gives for ``body``: the request's fields, or its errors."""
    try:
        request = parse_contact(body)
    except ContactInvalid as invalid:
        return ("invalid", invalid.errors)
    return ("valid", request.model_dump(), sorted(request.model_fields_set))
