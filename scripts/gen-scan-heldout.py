#!/usr/bin/env python3
"""Writes ledger/data/scan-heldout.jsonl: a second labelled corpus for the scanner, written
after its rules were tuned on scan-corpus.jsonl and never used to tune them. Different
formats and harder non-matches (base64 blobs, pod names, BICs, MAC addresses, build
metadata, CamelCase with digits). Synthetic data only; same format as scan-corpus.jsonl.

Run: python3 scripts/gen-scan-heldout.py > ledger/data/scan-heldout.jsonl
"""
import json

def luhn_ok(n):
    s = 0
    for i, ch in enumerate(reversed(n)):
        x = int(ch)
        if i % 2 == 1:
            x *= 2
            if x > 9: x -= 9
        s += x
    return s % 10 == 0

def luhn_fix(prefix):  # prefix without check digit
    for c in "0123456789":
        if luhn_ok(prefix + c): return prefix + c

def iban(country, bban):
    num = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    return f"{country}{98 - num % 97:02d}{bban}"

c1 = luhn_fix("549920001234567")     # Mastercard, 16
c2 = luhn_fix("37144963539843")      # Amex, 15
c3 = luhn_fix("601100009013942")     # Discover
i1 = iban("FR", "20041010050500013M02606")
i2 = iban("ES", "21000418450200051332")
i3 = iban("NL", "ABNA0417164300")

P = [
    ("Email me at Jo.Bloggs@Example.COM tomorrow", [("email", "Jo.Bloggs@Example.COM")]),
    ("<a href=\"mailto:press@example.net\">press</a>", [("email", "press@example.net")]),
    ("reply-to: noreply+alerts@status.example.io", [("email", "noreply+alerts@status.example.io")]),
    ("Ruf an: +49 (0)30 12345678", [("phone", "+49 (0)30 12345678")]),
    ("whatsapp +34 612 34 56 78 por favor", [("phone", "+34 612 34 56 78")]),
    ("Tel. 555-867-5309 ask for Jenny", [("phone", "555-867-5309")]),
    ("Mobile: 0612345678", [("phone", "0612345678")]),
    ("US office (212) 555 0199 ext 4", [("phone", "(212) 555 0199")]),
    (f"card: {c1[:4]}-{c1[4:8]}-{c1[8:12]}-{c1[12:]}", [("card", f"{c1[:4]}-{c1[4:8]}-{c1[8:12]}-{c1[12:]}")]),
    (f"amex {c2}", [("card", c2)]),
    (f"Discover {c3[:4]} {c3[4:8]} {c3[8:12]} {c3[12:]} exp 11/28", [("card", f"{c3[:4]} {c3[4:8]} {c3[8:12]} {c3[12:]}")]),
    (f"Bankverbindung {i1}", [("iban", i1)]),
    (f"IBAN {i2[:4]} {i2[4:8]} {i2[8:12]} {i2[12:16]} {i2[16:20]} {i2[20:]}", [("iban", f"{i2[:4]} {i2[4:8]} {i2[8:12]} {i2[12:16]} {i2[16:20]} {i2[20:]}")]),
    (f"rekening {i3}", [("iban", i3)]),
    ("SSN: 219-09-9999 (test record)", [("national_id", "219-09-9999")]),
    ("NINO JG103759A on file", [("national_id", "JG103759A")]),
    ("NIF 48291736-N del cliente", []),  # filled below with the right letter
    ("login from 2001:4860:4860::8888 blocked", [("ip_address", "2001:4860:4860::8888")]),
    ("X-Forwarded-For: 203.45.67.89, 10.0.0.2", [("ip_address", "203.45.67.89")]),
    ("peer 185.199.108.153:443 reset the connection", [("ip_address", "185.199.108.153")]),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", [("high_entropy", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]),
    ("slack: xoxp-1234567890-0987654321-abcdefABCDEF1234", [("api_token", "xoxp-1234567890-0987654321-abcdefABCDEF1234")]),
    ("GITHUB_TOKEN=ghs_16C7e42F292c6912E7710c838347Ae178B4a", [("api_token", "ghs_16C7e42F292c6912E7710c838347Ae178B4a")]),
    ("stripe rk_test_4eC39HqLyjWDarjtT1zdp7dc", [("api_token", "rk_test_4eC39HqLyjWDarjtT1zdp7dc")]),
    ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----",
     [("private_key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----")]),
    ("api_secret: 'q7RmX2vLp9TzW4nKs8JdY3bHf6Gc1AeU'", [("high_entropy", "q7RmX2vLp9TzW4nKs8JdY3bHf6Gc1AeU")]),
]
# Spanish NIF with the right check letter.
n = 48291736
P[16] = (f"NIF {n}-{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]} del cliente", [("national_id", f"{n}-{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}")])

N = [
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "kubectl logs web-7d4b9c8f6d-x2x9q -n prod",
    "image: nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
    "BIC DEUTDEFF500 and SWIFT BNPAFRPP",
    "MAC 00:1A:2B:3C:4D:5E on eth0",
    "version 1.2.3-beta.4+build.5678 was tagged",
    "class Int32ToFloat64Converter implements Converter2D {}",
    "ISBN 9780306406157, EAN 5901234123457",
    "zip 90210-1234, PO box 4411",
    "CIDR 10.0.0.0/8 and 172.16.0.0/12 are private",
    "fn main() { let v: [u8; 16] = [0; 16]; println!(\"{:?}\", v); }",
    "The meeting ID is 845 2291 0034 and the passcode is river",
    "Build 20240115.3 passed 1532 of 1532 tests in 00:12:45",
    "Serial number SN-2024-000-1187-AX",
    "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 is the empty hash",
    "The function getHTTPResponseCodeFor404Errors returns a string",
    "angle 45.0.12.7 degrees is not an address",
    "Python 3.12.1 (main, Jan 1 2024) [GCC 12.2.0]",
    "JIRA ticket PROJ-12345 blocks PROJ-12346",
    "The base64 of 'Tributary' is VHJpYnV0YXJ5",
    "tokenizer vocab size 151936 and hidden 3584",
    "lat/long 51.5074 N, 0.1278 W",
    "SELECT * FROM t WHERE id IN (1001, 1002, 1003, 1004, 1005)",
    "Account locked after 5 attempts at 2026-12-06 10:35:48 UTC",
    "npm ERR! code ERESOLVE at node_modules/react-dom",
    "The UUID is f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "He ran 10 000 metres in 27:43.21",
    "Phone number format: +CC NNN NNN NNNN",
    "AKIA is the prefix of AWS access key ids",
    "Use the placeholder <EMAIL> when redacting",
]

for text, labels in P:
    for _, v in labels:
        assert v in text, (text, v)
    print(json.dumps({"text": text, "labels": [{"kind": k, "value": v} for k, v in labels]}))
for text in N:
    print(json.dumps({"text": text, "labels": []}))
