"""PII detection and redaction: e-mail addresses, IBANs, credit-card numbers, IPv4 addresses, phone numbers.

Each kind is found by a regular expression; the two kinds that carry a checksum are then *validated*, so a
random digit string is not mistaken for a card or an account number:

- Credit cards (13-19 digits), Luhn (mod 10) check: from the rightmost digit, double every second digit,
  subtract 9 from any result above 9, and sum everything; the number is valid when the sum ≡ 0 (mod 10).
  4539 1488 0343 6467 is valid; changing any one digit breaks it.
- IBANs (ISO 13616), mod-97 check: move the first four characters (country + check digits) to the end,
  replace each letter by two digits (A=10 … Z=35), read the result as an integer N; valid when N mod 97 = 1.

A match is replaced by a typed placeholder ([EMAIL], [IBAN], [CREDIT_CARD], [IP_ADDRESS], [PHONE]) so the
text keeps its shape and a model trained on it learns that such a thing appears there, never its value.
Kinds are matched in a fixed order (most specific first), and a span, once redacted, is not matched again.

Reference: Luhn, US patent 2,950,048 (1960); ISO 13616-1:2020 (IBAN); the PII filters of
"The Pile" / BigScience ROOTS (Laurençon et al. 2022) use the same regex-then-validate approach.
"""
from __future__ import annotations

import re

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "credit_card": "[CREDIT_CARD]",
                "ip_address": "[IP_ADDRESS]", "phone": "[PHONE]"}
PII_TYPES = list(PLACEHOLDERS)

# Other spellings of the same kinds (e.g. in a data generator's planted list) -> our names.
TYPE_ALIASES = {"e-mail": "email", "mail": "email", "email_address": "email", "card": "credit_card",
                "creditcard": "credit_card", "credit-card": "credit_card", "cc": "credit_card",
                "ip": "ip_address", "ipv4": "ip_address", "ip-address": "ip_address", "phone_number": "phone",
                "telephone": "phone", "tel": "phone"}


def canonical_type(name: str) -> str:
    """'IPv4' -> 'ip_address', 'Credit card' -> 'credit_card' (unknown names pass through lower-cased)."""
    key = name.strip().lower().replace(" ", "_")
    return TYPE_ALIASES.get(key, key)


def luhn_valid(number: str) -> bool:
    """The Luhn check on the digits of `number` (spaces and dashes ignored).

    luhn_valid("4539 1488 0343 6467") -> True;  luhn_valid("4539 1488 0343 6468") -> False
    """
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """The ISO 13616 mod-97 check (spaces ignored, case-insensitive).

    iban_valid("GB82 WEST 1234 5698 7654 32") -> True;  iban_valid("GB82 WEST 1234 5698 7654 33") -> False
    """
    s = re.sub(r"\s+", "", iban).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)  # 'A' -> 10 ... 'Z' -> 35, digits unchanged
    return int(number) % 97 == 1


EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
CARD_RE = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
PHONE_RE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w])")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _phone_ok(s: str) -> bool:
    """A phone number has 7-15 digits (E.164 allows at most 15) and is not a date like 2024-01-31."""
    n = sum(c.isdigit() for c in s)
    return 7 <= n <= 15 and not DATE_RE.fullmatch(s.strip())


# (type, pattern, validator, claim_invalid) in the order they are applied: most specific first.
# claim_invalid: a match that fails its check still hides its span from later kinds (an IBAN-shaped
# string with a bad checksum is not a phone number; a digit run failing Luhn may still be one).
DETECTORS = [
    ("email", EMAIL_RE, None, False),
    ("iban", IBAN_RE, iban_valid, True),
    ("credit_card", CARD_RE, luhn_valid, False),
    ("ip_address", IPV4_RE, None, False),
    ("phone", PHONE_RE, _phone_ok, False),
]


def find_pii(text: str) -> list[dict]:
    """Every PII span in `text`: [{"type", "value", "start", "end"}], non-overlapping, in text order."""
    spans: list[dict] = []
    taken = []  # (start, end) already claimed by a more specific kind

    def free(s, e):
        return all(e <= a or s >= b for a, b in taken)

    for kind, pattern, valid, claim_invalid in DETECTORS:
        for m in pattern.finditer(text):
            s, e = m.span()
            if not free(s, e):
                continue
            if valid is None or valid(m.group()):
                spans.append({"type": kind, "value": m.group(), "start": s, "end": e})
                taken.append((s, e))
            elif claim_invalid:
                taken.append((s, e))
    return sorted(spans, key=lambda d: d["start"])


def redact(text: str) -> tuple[str, list[dict]]:
    """Replace each PII span by its typed placeholder; returns (redacted text, the spans found).

    redact("mail bob@example.com or call +44 20 7946 0958")
      -> ("mail [EMAIL] or call [PHONE]", [{"type": "email", ...}, {"type": "phone", ...}])
    """
    spans = find_pii(text)
    out, pos = [], 0
    for sp in spans:
        out.append(text[pos:sp["start"]])
        out.append(PLACEHOLDERS[sp["type"]])
        pos = sp["end"]
    out.append(text[pos:])
    return "".join(out), spans


def mask(value: str, keep: int = 4) -> str:
    """Hide all but the last `keep` characters: mask("4539 1488 0343 6467") -> "***************6467"."""
    return "*" * max(len(value) - keep, 0) + value[-keep:]


def value_sha256(value: str) -> str:
    """sha256 of the normalised value: compares a found value with a known one without storing either."""
    import hashlib
    return hashlib.sha256(normalise_value(value).encode("utf-8")).hexdigest()


def normalise_value(value: str) -> str:
    """A PII value without spaces, dashes, dots or brackets, lower-cased: for comparing found vs planted."""
    return re.sub(r"[\s\-().]", "", value).lower()
