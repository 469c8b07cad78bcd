"""Generate the labelled masking corpus, deterministically: ``corpus.jsonl`` beside this file.

    .venv/bin/python tests/data/masking/generate_corpus.py

Each line is a JSON object:

- ``set``: ``valid`` (a real value of ``detector`` inside ``text``) or ``lookalike`` (text that
  resembles ``detector``'s values but is not one: an invalid Luhn digit, a UUID ...);
- ``detector``: the detector the record is about;
- ``category``: what kind of value or look-alike it is (``visa``, ``invalid_luhn`` ...);
- ``text``: the text to scan; ``value``: for valid records, the part of ``text`` that must be
  masked (it occurs once in ``text``).

Valid values are built the way their issuers build them (Luhn digits, ISO 7064 check digits
from the IBAN registry structures, GitHub's CRC-32 token checksum, HMAC-signed JWTs, real
Ed25519/EC keys); phone numbers are kept only when libphonenumber calls them valid. The seed
is fixed: running the script twice gives the same file (for the same versions of phonenumbers
and python-stdnum, whose metadata decide which generated numbers are kept).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import string
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import phonenumbers
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.us import ssn as std_ssn

from appliance.masking._validate import github_checksum

SEED = 20240607
OUT = Path(__file__).with_name("corpus.jsonl")
ALNUM = string.ascii_letters + string.digits
B64 = string.ascii_letters + string.digits + "+/"

Record = dict[str, str]

# Contexts a value is found in: statement text, a JSON document, a log line, alone.
TEMPLATES = (
    "{v}",
    "INSERT INTO t (a, b) VALUES (1, '{v}');",
    '{{"id": 7, "field": "{v}", "ok": true}}',
    "2024-05-01T10:00:00Z worker[12] note: {v} (end)",
    "value {v}",
)


def wrap(rng: random.Random, value: str) -> str:
    return rng.choice(TEMPLATES).format(v=value)


# -- payment cards ---------------------------------------------------------------------------

CARD_PREFIXES = {
    "visa": (["4"], [13, 16, 19]),
    "mastercard": (["51", "52", "53", "54", "55", "2221", "2500", "2720"], [16]),
    "amex": (["34", "37"], [15]),
    "discover": (["6011", "644", "649", "65", "622126", "622925"], [16, 19]),
    "diners": (["300", "305", "36", "38", "39"], [14, 16]),
    "jcb": (["3528", "3589"], [16, 19]),
    "unionpay": (["62", "81"], [16, 19]),
    "mir": (["2200", "2204"], [16]),
    "maestro": (["50", "56", "58", "6759"], [13, 16, 19]),
    "rupay": (["60", "82", "508"], [16]),
    "troy": (["9792"], [16]),
}


def card_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def card_format(rng: random.Random, digits: str, brand: str) -> str:
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return digits
    sep = " " if style == "space" else "-"
    if brand == "amex":
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return sep.join(groups)


def cards(rng: random.Random) -> Iterator[Record]:
    for brand, (prefixes, lengths) in CARD_PREFIXES.items():
        for _ in range(20):
            digits = card_number(rng, rng.choice(prefixes), rng.choice(lengths))
            value = card_format(rng, digits, brand)
            yield valid("card", brand, wrap(rng, value), value)
    for _ in range(200):
        brand = rng.choice(list(CARD_PREFIXES))
        prefixes, lengths = CARD_PREFIXES[brand]
        digits = card_number(rng, rng.choice(prefixes), rng.choice(lengths))
        wrong = digits[:-1] + str((int(digits[-1]) + rng.randint(1, 9)) % 10)
        yield lookalike("card", "invalid_luhn", wrap(rng, card_format(rng, wrong, brand)))
    for _ in range(100):
        # Luhn-valid but no issuer uses the prefix (1, 7, 8x other than 81/82, 90).
        prefix = rng.choice(["1", "7", "80", "83", "90"])
        digits = card_number(rng, prefix, 16)
        yield lookalike("card", "unknown_issuer", wrap(rng, digits))


# -- SSN -------------------------------------------------------------------------------------


def ssns(rng: random.Random) -> Iterator[Record]:
    count = 0
    while count < 150:
        digits = f"{rng.randint(1, 899):03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        if not std_ssn.is_valid(digits):
            continue
        count += 1
        if count % 5 == 0:
            key = rng.choice(["SSN: ", "ssn=", "social_security_number: ", '"ssn": "'])
            yield valid("ssn", "after_name", f"{key}{digits}", digits)
        else:
            sep = rng.choice("- ") if count % 7 == 0 else "-"
            value = f"{digits[:3]}{sep}{digits[3:5]}{sep}{digits[5:]}"
            yield valid("ssn", "dashed", wrap(rng, value), value)
    impossible = ["000", "666", "900", "955", "999"]
    for i in range(150):
        kind = i % 4
        area, group, serial = f"{rng.randint(1, 665):03d}", f"{rng.randint(1, 99):02d}", "1234"
        if kind == 0:
            area = rng.choice(impossible)
        elif kind == 1:
            group = "00"
        elif kind == 2:
            serial = "0000"
        else:
            # Nine-digit business ids: EIN (12-3456789) and bare numbers.
            ein = f"{rng.randint(10, 99)}-{rng.randint(1000000, 9999999)}"
            bare = f"{rng.randint(100000000, 999999999)}"
            yield lookalike("ssn", "nine_digit_business_id", wrap(rng, rng.choice([ein, bare])))
            continue
        yield lookalike("ssn", "impossible_ssn", wrap(rng, f"{area}-{group}-{serial}"))


# -- IBAN ------------------------------------------------------------------------------------

IBAN_STRUCTURES = {}
for _line in (Path(std_iban.__file__).with_name("iban.dat")).read_text().splitlines():
    _m = re.match(r'([A-Z]{2}) country="[^"]*" bban="([^"]*)"', _line)
    if _m:
        IBAN_STRUCTURES[_m.group(1)] = _m.group(2)


def random_bban(rng: random.Random, structure: str) -> str:
    out = []
    for count, kind in re.findall(r"(\d+)!([nac])", structure):
        chars = {
            "n": string.digits,
            "a": string.ascii_uppercase,
            "c": string.ascii_uppercase + string.digits,
        }
        out.append("".join(rng.choice(chars[kind]) for _ in range(int(count))))
    return "".join(out)


def make_iban(rng: random.Random, country: str) -> str | None:
    for _ in range(5000):
        bban = random_bban(rng, IBAN_STRUCTURES[country])
        check = std_iban.calc_check_digits(country + "00" + bban)
        number = country + check + bban
        # National check digits too, where python-stdnum knows them: a real IBAN.
        if std_iban.is_valid(number, check_country=True):
            return number
    return None


def ibans(rng: random.Random) -> Iterator[Record]:
    for country in sorted(IBAN_STRUCTURES):
        number = make_iban(rng, country)
        if number is None:
            continue
        for _ in range(2):
            value = std_iban.format(number) if rng.random() < 0.5 else number
            yield valid("iban", country, wrap(rng, value), value)
            number = make_iban(rng, country) or number
    for _ in range(150):
        country = rng.choice(sorted(IBAN_STRUCTURES))
        number = make_iban(rng, country)
        if number is None:
            continue
        check = int(number[2:4])
        wrong = f"{(check + rng.randint(1, 90)) % 97 + 2:02d}"
        if wrong == number[2:4]:
            continue
        bad = number[:2] + wrong + number[4:]
        if std_iban.is_valid(bad, check_country=False):
            continue
        yield lookalike("iban", "wrong_check_digits", wrap(rng, std_iban.format(bad)))


# -- e-mail ----------------------------------------------------------------------------------

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
LAST = ["smith", "jones", "garcia", "müller", "nguyen", "kowalski", "rossi", "tanaka", "ali"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.io", "ex-ample.net"]


def emails(rng: random.Random) -> Iterator[Record]:
    for i in range(150):
        last = rng.choice(LAST).replace("ü", "u")
        local = rng.choice(
            [
                f"{rng.choice(FIRST)}.{last}",
                f"{rng.choice(FIRST)}{rng.randint(1, 99)}",
                f"{rng.choice(FIRST)}+tag{i}",
                f"{rng.choice(FIRST)[0]}_{last}",
            ]
        )
        value = f"{local}@{rng.choice(DOMAINS)}"
        if rng.random() < 0.2:
            value = value.upper()
        yield valid("email", "address", wrap(rng, value), value)
    looks = [
        "user@localhost",
        "@channel please review",
        "left-pad@1.3.0",
        "WHERE email LIKE '%@example.com'",
        "ping me @alice",
        "a@b",
        "price @ 19.99",
        "foo@bar@baz",
    ]
    for i in range(150):
        yield lookalike("email", "not_an_address", wrap(rng, looks[i % len(looks)]))


# -- phone -----------------------------------------------------------------------------------

US_AREAS = ["201", "212", "213", "305", "312", "415", "512", "617", "702", "818", "917", "646"]
REGIONS = ["GB", "DE", "FR", "ES", "IT", "NL", "SE", "CH", "AU", "JP", "IN", "BR", "MX", "CA"]


def us_number(rng: random.Random) -> tuple[str, str, str]:
    while True:
        area = rng.choice(US_AREAS)
        exchange = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
        line = f"{rng.randint(0, 9999):04d}"
        n = phonenumbers.parse(area + exchange + line, "US")
        if phonenumbers.is_valid_number(n) and exchange != "555":
            return area, exchange, line


def phones(rng: random.Random) -> Iterator[Record]:
    for i in range(100):
        a, e, line = us_number(rng)
        value = [
            f"({a}) {e}-{line}",
            f"{a}-{e}-{line}",
            f"{a}.{e}.{line}",
            f"+1 {a} {e} {line}",
            f"+1{a}{e}{line}",
            f"1-{a}-{e}-{line}",
            f"+1 ({a}) {e}-{line}",
        ][i % 7]
        yield valid("phone", "us", wrap(rng, value), value)
    count = 0
    while count < 100:
        region = REGIONS[count % len(REGIONS)]
        kind = rng.choice(
            [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]
        )
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        national = str(example.national_number)
        tail = "".join(rng.choice(string.digits) for _ in range(3))
        mutated = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail}", None)
        if not phonenumbers.is_valid_number(mutated):
            continue
        fmt = rng.choice(
            [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
        )
        value = phonenumbers.format_number(mutated, fmt)
        count += 1
        yield valid("phone", region, wrap(rng, value), value)
    for i in range(300):
        kind = i % 6
        if kind == 0:
            text = f"order ORD-2024-{rng.randint(0, 999999):06d}"
        elif kind == 1:
            text = f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1990, 2030)}"
        elif kind == 2:
            text = f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"  # seven digits, no area
        elif kind == 3:
            text = f"({rng.randint(0, 1)}{rng.randint(10, 99)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        elif kind == 4:
            text = f"qty {rng.randint(1, 99)} x {rng.randint(100, 999)}.{rng.randint(10, 99)}"
        else:
            text = f"{rng.randint(1000000000, 9999999999)}"  # a bare ten-digit id
        yield lookalike("phone", "numbers", wrap(rng, text))


# -- addresses -------------------------------------------------------------------------------


def ips(rng: random.Random) -> Iterator[Record]:
    for _ in range(100):
        value = ".".join(str(rng.randint(0, 255)) for _ in range(4))
        yield valid("ipv4", "address", wrap(rng, value), value)
    for i in range(100):
        groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
        if i % 3 == 0:
            value = ":".join(groups)
        elif i % 3 == 1:
            value = f"fe80::{groups[0]}:{groups[1]}"
        else:
            value = f"2001:db8:{groups[2]}::{groups[3]}"
        yield valid("ipv6", "address", wrap(rng, value), value)
    for i in range(200):
        kind = i % 5
        if kind == 0:
            text = f"v{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}"
        elif kind == 1:
            text = f"{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}"
        elif kind == 2:
            text = ":".join(f"{rng.randint(0, 255):02x}" for _ in range(6))  # MAC address
        elif kind == 3:
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        else:
            text = rng.choice(["std::vector<int>", "SELECT x::int, y::text", "a::b", "Foo::Bar"])
        yield lookalike(rng.choice(["ipv4", "ipv6"]), "versions_times_macs", wrap(rng, text))


# -- tokens and keys -------------------------------------------------------------------------


def rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tokens(rng: random.Random) -> Iterator[Record]:
    upper32 = string.ascii_uppercase + "234567"
    for _ in range(60):
        value = rng.choice(["AKIA", "ASIA"]) + rand(rng, upper32, 16)
        yield valid("aws_access_key_id", "key_id", wrap(rng, value), value)
        secret = rand(rng, B64, 40)
        yield valid("aws_secret_key", "secret", wrap(rng, secret), secret)
    for i in range(60):
        random30 = rand(rng, ALNUM, 30)
        prefix = "gh" + "pousr"[i % 5] + "_"
        value = prefix + random30 + github_checksum(random30)
        yield valid("github_token", prefix, wrap(rng, value), value)
        if i % 3 == 0:
            pat = "github_pat_" + rand(rng, ALNUM, 22) + "_" + rand(rng, ALNUM, 59)
            yield valid("github_token", "github_pat_", wrap(rng, pat), pat)
        gl = rng.choice(["glpat-", "gldt-", "glrt-", "GR1348941"]) + rand(rng, ALNUM + "_-", 20)
        yield valid("gitlab_token", gl[:5], wrap(rng, gl), gl)
        slack = rng.choice(
            [
                f"xoxb-{rng.randint(10**11, 10**12)}-{rng.randint(10**12, 10**13)}-{rand(rng, ALNUM, 24)}",
                f"xoxp-{rng.randint(10**11, 10**12)}-{rng.randint(10**11, 10**12)}-{rng.randint(10**12, 10**13)}-{rand(rng, string.hexdigits.lower()[:16], 32)}",
                f"https://hooks.slack.com/services/T{rand(rng, string.ascii_uppercase + string.digits, 8)}/B{rand(rng, string.ascii_uppercase + string.digits, 8)}/{rand(rng, ALNUM, 24)}",
            ]
        )
        yield valid("slack_token", slack[:4], wrap(rng, slack), slack)
        stripe = rng.choice(["sk_live_", "sk_test_", "rk_live_"]) + rand(
            rng, ALNUM, rng.choice([24, 99])
        )
        yield valid("stripe_key", stripe[:3], wrap(rng, stripe), stripe)
    for i in range(40):
        key = bytes(rng.getrandbits(8) for _ in range(32))
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"sub": f"user-{rng.randint(1, 10**6)}", "iat": 1714557600 + i, "scope": "read"}
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        sig = b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
        value = f"{signing_input}.{sig}"
        yield valid("jwt", "jws", wrap(rng, value), value)
        if i % 4 == 0:
            jwe_header = b64url(json.dumps({"alg": "dir", "enc": "A256GCM"}).encode())
            iv, ct, tag = (
                b64url(bytes(rng.getrandbits(8) for _ in range(n))) for n in (12, 40, 16)
            )
            jwe = f"{jwe_header}..{iv}.{ct}.{tag}"
            yield valid("jwt", "jwe", wrap(rng, jwe), jwe)
    for i in range(30):
        seed = bytes(rng.getrandbits(8) for _ in range(32))
        if i % 3 == 0:
            ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
            pem = ed_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        elif i % 3 == 1:
            ec_key = ec.derive_private_key(
                int.from_bytes(seed, "big") % (2**255) + 1, ec.SECP256R1()
            )
            pem = ec_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ).decode()
        else:
            # An RSA-shaped block; the detector reads the armour, not the ASN.1 inside.
            body = "\n".join(rand(rng, B64, 64) for _ in range(12))
            pem = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"
        pem = pem.strip()
        text = rng.choice(["{v}", "key file:\n{v}\nend of key", "INSERT INTO keys VALUES ('{v}')"])
        yield valid("pem_private_key", "pem", text.format(v=pem), pem)
    # Look-alikes for the token detectors.
    for i in range(400):
        kind = i % 8
        if kind == 0:
            text = rand(rng, "0123456789abcdef", rng.choice([32, 40, 64]))  # digests, git SHAs
        elif kind == 1:
            text = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif kind == 2:
            random30 = rand(rng, ALNUM, 30)
            good = github_checksum(random30)
            bad = good[:-1] + ("A" if good[-1] != "A" else "B")
            text = "ghp_" + random30 + bad  # wrong checksum
        elif kind == 3:
            text = (
                "eyJ"
                + rand(rng, ALNUM, 30)
                + "."
                + rand(rng, ALNUM, 20)
                + "."
                + rand(rng, ALNUM, 20)
            )
        elif kind == 4:
            digest = hashlib.sha256(rand(rng, ALNUM, 10).encode()).digest()
            text = base64.b64encode(digest).decode()  # 44 characters with '='
        elif kind == 5:
            text = "pk_live_" + rand(rng, ALNUM, 24)  # publishable, not secret
        elif kind == 6:
            text = (
                "-----BEGIN PUBLIC KEY-----\n" + rand(rng, B64, 64) + "\n-----END PUBLIC KEY-----"
            )
        else:
            text = rand(rng, string.ascii_uppercase + string.digits, 20)  # upper-case ids
        yield lookalike("generic_secret", "random_ids", wrap(rng, text))


# -- secrets in context ----------------------------------------------------------------------

PASSWORDS = ["Summer2024!", "hunter22", "correct horse battery", "P@ssw0rd#1", "s3cr3t-value"]


def contextual(rng: random.Random) -> Iterator[Record]:
    schemes = ["postgres", "postgresql", "mysql", "redis", "amqp", "mongodb+srv", "https"]
    for i in range(100):
        password = rand(rng, ALNUM + "%-_.~", rng.randint(8, 24))
        user = rng.choice(["app", "svc_ci", "admin", ""])
        uri = f"{rng.choice(schemes)}://{user}:{password}@db{i}.example.com:5432/app"
        yield valid("uri_password", "uri", wrap(rng, uri), password)
    names = [
        "password",
        "DB_PASSWORD",
        "PGPASSWORD",
        "api_key",
        "client_secret",
        "x-api-key",
        "apiKey",
        "access_token",
        "secret",
    ]
    for i in range(150):
        name = names[i % len(names)]
        if "pass" in name.lower() or "secret" in name.lower():
            secret = rng.choice([rng.choice(PASSWORDS), rand(rng, ALNUM, 16)])
        else:
            secret = rand(rng, ALNUM, rng.choice([20, 32, 40])) + "x"  # not a 40-char key
        form = i % 5
        if form == 0:
            text = f"{name}={secret.replace(' ', '')}"
            secret = secret.replace(" ", "")
        elif form == 1:
            text = f'{{"{name}": "{secret}"}}'
        elif form == 2:
            text = f"{name}: '{secret}'"
        elif form == 3:
            text = f"host=db {name}={secret.replace(' ', '')} dbname=app"
            secret = secret.replace(" ", "")
        else:
            text = f'export {name}="{secret}"'
        yield valid("generic_secret", name, text, secret)
    for i in range(20):
        secret = rng.choice(PASSWORDS).replace(" ", "") + str(i)
        text = f"ALTER ROLE ci_{i} WITH LOGIN PASSWORD '{secret}';"
        yield valid("generic_secret", "sql_password", text, secret)
        basic = base64.b64encode(f"user{i}:{secret}".encode()).decode()
        yield valid("generic_secret", "basic_auth", f"Authorization: Basic {basic}", basic)
    looks = [
        "Enter your password to continue",
        "password_changed_at = '2024-01-15'",
        "token_count: 5",
        "token_type = 'bearer'",
        "WHERE password = $1",
        "SET password_hash = %s",
        "passenger = 'Alice Smith'",
        "primary key (id)",
        "api_key = ?",
        "password: null",
        "author = 'Jane Doe'",
        "keyboard = 'qwerty'",
        "the secret to good SQL is indexes",
    ]
    for i in range(130):
        yield lookalike("generic_secret", "key_names_no_secret", looks[i % len(looks)])


# -- plain data ------------------------------------------------------------------------------


def plain(rng: random.Random) -> Iterator[Record]:
    for i in range(400):
        kind = i % 8
        if kind == 0:
            text = f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        elif kind == 1:
            text = f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00.{rng.randint(0, 999999):06d}Z"
        elif kind == 2:
            text = str(rng.randint(1_600_000_000_000, 1_800_000_000_000))  # epoch milliseconds
        elif kind == 3:
            text = str(rng.randint(10**17, 10**19 - 1))  # 18-19 digit ids (snowflakes)
        elif kind == 4:
            text = f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}"
        elif kind == 5:
            text = f"SELECT id, name FROM users WHERE id = {rng.randint(1, 10**9)} LIMIT 10"
        elif kind == 6:
            text = f"{rng.choice(FIRST).title()} {rng.choice(LAST).title()}, {rng.randint(1, 999)} Main St"
        else:
            text = f"build {rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 300)}+{rand(rng, '0123456789abcdef', 7)}"
        yield lookalike("card", "timestamps_ids_text", wrap(rng, text))


def valid(detector: str, category: str, text: str, value: str) -> Record:
    assert text.count(value) == 1, (detector, text, value)
    return {
        "set": "valid",
        "detector": detector,
        "category": category,
        "text": text,
        "value": value,
    }


def lookalike(detector: str, category: str, text: str) -> Record:
    return {"set": "lookalike", "detector": detector, "category": category, "text": text}


GENERATORS: tuple[Callable[[random.Random], Iterator[Record]], ...] = (
    cards,
    ssns,
    ibans,
    emails,
    phones,
    ips,
    tokens,
    contextual,
    plain,
)


def generate() -> list[Record]:
    rng = random.Random(SEED)
    return [record for gen in GENERATORS for record in gen(rng)]


def main() -> None:
    records = generate()
    with OUT.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    counts: dict[str, int] = {}
    for r in records:
        counts[r["set"]] = counts.get(r["set"], 0) + 1
    print(f"wrote {len(records)} records to {OUT}: {counts}")


if __name__ == "__main__":
    main()
