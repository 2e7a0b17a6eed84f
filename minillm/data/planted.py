"""Planted hygiene problems: what a careful data pipeline must find in the world's general corpus.

Real web text is full of duplicates, personal data and copies of benchmark answers. The world plants a known
number of each, so the hygiene stage can be graded on recall:

    exact_duplicates  whole documents copied verbatim
    near_duplicates   copies with one small edit (a word swapped or inserted)
    pii               e-mail addresses, phone numbers, IBANs (valid ISO 13616 mod-97 check digits),
                      credit-card numbers (valid Luhn check digit) and IPv4 addresses, inside plausible sentences
    leaks             held-out test items (fact prompt + answer, instruction question + answer) copied into training

Luhn: double every second digit from the right, subtract 9 from results above 9; the sum is 0 mod 10.
IBAN: move the first four characters to the end, turn letters into numbers (A=10 ... Z=35); the number is 1 mod 97.
"""


def luhn_ok(number):
    digits = [int(d) for d in str(number) if d.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return len(digits) > 1 and total % 10 == 0


def luhn_complete(partial):
    """The digit that makes `partial + digit` pass Luhn: '411111111111111' -> '1'."""
    return next(str(d) for d in range(10) if luhn_ok(partial + str(d)))


def _iban_number(s):
    s = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in s))


def iban_ok(iban):
    s = iban.replace(" ", "").upper()
    return len(s) >= 15 and s[:2].isalpha() and s[2:4].isdigit() and _iban_number(s) % 97 == 1


def iban_make(country, bban):
    """'DE', '370400440532013000' -> 'DE89370400440532013000' (check digits 98 - n mod 97)."""
    check = 98 - _iban_number(country + "00" + bban) % 97
    return f"{country}{check:02d}{bban}"


def _digits(rng, n):
    return "".join(str(rng.randrange(10)) for _ in range(n))


def make_pii(rng, people, cities):
    """Four of each type, each inside a sentence. Returns [{"type", "value", "sentence"}]."""
    out = []
    for i in range(4):
        p, city = people[i].lower(), cities[i].lower()
        email = rng.choice([f"{p}.{city}@example.com", f"{p}{rng.randrange(10, 99)}@mail.example.org",
                            f"info@{city}-post.example.net"])
        out.append({"type": "email", "value": email,
                    "sentence": rng.choice([f"For bookings, write to {email}.", f"You can reach the office at {email} any day."])})
        phone = f"+{rng.choice(['31', '44', '49', '33'])} {rng.randrange(10, 99)} {_digits(rng, 3)} {_digits(rng, 4)}"
        out.append({"type": "phone", "value": phone,
                    "sentence": rng.choice([f"Call the harbour office on {phone} before noon.", f"Her number is {phone}, call after six."])})
        cc = rng.choice(["DE", "NL", "FR", "GB"])
        bban = {"DE": lambda: _digits(rng, 18), "NL": lambda: "ABNA" + _digits(rng, 10),
                "FR": lambda: _digits(rng, 23), "GB": lambda: "WEST" + _digits(rng, 14)}[cc]()
        iban = iban_make(cc, bban)
        out.append({"type": "iban", "value": iban,
                    "sentence": rng.choice([f"The rent was paid from account {iban} last week.", f"Send the deposit to {iban} by Friday."])})
        partial = (rng.choice(["4", "5" + str(rng.randint(1, 5))]) + _digits(rng, 15))[:15]
        card = partial + luhn_complete(partial)
        shown = card if i % 2 else " ".join(card[j:j + 4] for j in range(0, 16, 4))
        out.append({"type": "credit_card", "value": shown,
                    "sentence": rng.choice([f"The card {shown} was left at the front desk.", f"He paid with card number {shown}."])})
        ip = f"{rng.choice([10, 172, 192, 203])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        out.append({"type": "ipv4", "value": ip,
                    "sentence": rng.choice([f"The old server at {ip} stopped answering on Friday.", f"Logins came from {ip} all night."])})
    return out


_SWAPS = [("morning", "evening"), ("old", "aged"), ("quiet", "silent"), ("busy", "crowded"), ("long", "lengthy"),
          ("cold", "chilly"), ("late", "delayed"), ("happy", "glad")]


def near_copy(rng, doc):
    """One small edit: swap one word for a synonym, or insert 'really'."""
    words = doc.split(" ")
    spots = [i for i, w in enumerate(words) if any(w.strip(".,") == a for a, _ in _SWAPS)]
    if spots:
        i = rng.choice(spots)
        w = words[i].strip(".,")
        words[i] = words[i].replace(w, dict(_SWAPS)[w])
    else:
        i = rng.randrange(1, len(words))
        words.insert(i, "really")
    return " ".join(words)


def plant(rng, docs, people, cities, fact_leaks, instruction_leaks, n_exact=6, n_near=6):
    """Plant every kind into a copy of `docs`. Returns (docs, planted)."""
    docs = list(docs)
    base = len(docs)
    long_docs = sorted(range(base), key=lambda i: -len(docs[i]))[:200]
    chosen = rng.sample(long_docs, n_exact + n_near)
    exact = [docs[i] for i in chosen[:n_exact]]
    near = [{"original": docs[i], "duplicate": near_copy(rng, docs[i])} for i in chosen[n_exact:]]
    pii = make_pii(rng, people, cities)
    leaks = []
    for it in fact_leaks:
        leaks.append(dict(it, text=it["prompt"] + it["answer"] + "."))
    for it in instruction_leaks:
        leaks.append({"text": f"Q: {it['messages'][0]['content']} A: {it['messages'][1]['content']}",
                      "prompt": it["messages"][0]["content"], "answer": it["messages"][1]["content"],
                      "source": "instructions", "id": it["id"]})
    free = sorted(set(range(base)) - set(chosen))  # never edit a document we also duplicated
    targets = rng.sample(free, len(pii) + len(leaks))
    for j, item in enumerate(pii + leaks):  # insert a sentence into an existing document
        sentence = item.get("sentence") or item["text"]
        parts = docs[targets[j]].split(". ")
        k = rng.randrange(len(parts) + 1)
        docs[targets[j]] = ". ".join(parts[:k] + [sentence.rstrip(".")] + parts[k:]) if k < len(parts) else \
            docs[targets[j]] + " " + sentence
    for d in exact + [n["duplicate"] for n in near]:
        docs.insert(rng.randrange(len(docs) + 1), d)
    return docs, {"exact_duplicates": exact, "near_duplicates": near, "pii": pii, "leaks": leaks}
