"""HPACK decoding against RFC 7541's own examples (Appendix C), and the errors it must catch."""

from __future__ import annotations

import random

import pytest

from services.gateway import hpack

# RFC 7541 C.4: three requests on one connection, Huffman-coded, with the dynamic table size after each.
REQUESTS = [
    (
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
        57,
    ),
    (
        "828684be5886a8eb10649cbf",
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        110,
    ),
    (
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
        164,
    ),
]
# RFC 7541 C.6: three responses with a 256-byte table, so entries are evicted.
DATE = "Mon, 21 Oct 2013 20:13:21 GMT"
RESPONSES = [
    (
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE),
            ("location", "https://www.example.com"),
        ],
        222,
    ),
    (
        "4883640effc1c0bf",
        [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE),
            ("location", "https://www.example.com"),
        ],
        222,
    ),
    (
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af"
        "27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
        ],
        215,
    ),
]


def as_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers]


@pytest.mark.parametrize(("examples", "table_size"), [(REQUESTS, 4096), (RESPONSES, 256)])
def test_the_rfc_examples_decode_with_the_table_in_step(examples, table_size):
    decoder = hpack.Decoder(table_size)
    for block, headers, size in examples:
        assert decoder.decode(bytes.fromhex(block)) == as_bytes(headers)
        assert decoder.size == size


def huffman_encode(data: bytes) -> bytes:
    """A reference encoder from the same canonical code lengths (RFC 7541 Appendix B)."""
    lengths = [ord(c) - ord("a") + 5 for c in hpack._LENGTHS]
    codes, code, previous = {}, 0, 0
    for position, symbol in enumerate(sorted(range(257), key=lambda s: (lengths[s], s))):
        if position:
            code = (code + 1) << (lengths[symbol] - previous)
        previous = lengths[symbol]
        codes[symbol] = code
    bits, count = 0, 0
    for byte in data:
        bits = (bits << lengths[byte]) | codes[byte]
        count += lengths[byte]
    padding = -count % 8
    bits = (bits << padding) | ((1 << padding) - 1)
    return (bits).to_bytes((count + padding) // 8, "big") if count + padding else b""


def test_huffman_decoding_reads_every_byte_value():
    rng = random.Random(7541)
    samples = [bytes(range(256)), b"", b"a", *(rng.randbytes(rng.randint(1, 60)) for _ in range(300))]
    for sample in samples:
        assert hpack.huffman_decode(huffman_encode(sample)) == sample


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("be", "no header table entry"),  # dynamic index 62 on an empty table
        ("80", "no header table entry"),  # index 0
        ("4185", "past the end"),  # a string longer than the block
        ("418cf1e3c2e5f23a6ba0ab90f4fe", "padding"),  # padding not all ones
        ("4182ffff", "padding"),  # padding longer than 7 bits
        ("4184ffffffff", "EOS"),  # the EOS code (30 ones) inside a string
        ("3fe21f", "over the limit"),  # a table size update to 4097
        ("823f01", "after a header field"),  # a size update after a field
        ("0f" + "ff" * 5, "longer than 4 bytes"),
    ],
)
def test_bad_blocks_are_refused(block, problem):
    with pytest.raises(hpack.HpackError, match=problem):
        hpack.Decoder().decode(bytes.fromhex(block))


def test_what_the_client_sends_decodes_to_what_it_meant():
    block = (
        hpack.indexed(3)
        + hpack.literal(b":path", b"/pkg.Service/Method")
        + hpack.literal(b"content-type", b"application/grpc")
        + hpack.literal(b"x-long", b"v" * 300)
    )
    assert hpack.Decoder().decode(block) == [
        (b":method", b"POST"),
        (b":path", b"/pkg.Service/Method"),
        (b"content-type", b"application/grpc"),
        (b"x-long", b"v" * 300),
    ]


def test_the_encoder_table_stays_in_step_with_a_decoder():
    """Fields added, indexed, evicted (small table), after resizes: a decoder reads what was meant."""
    rng = random.Random(155)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    fields = [(f"name-{n % 7}".encode(), f"value-{n}".encode() * rng.randint(1, 8)) for n in range(40)]
    for round_number in range(400):
        if round_number in (100, 250):
            encoder.resize(rng.choice([0, 200, 700]))
        if round_number == 300:
            encoder.resize(4096)
        chosen = rng.sample(fields, rng.randint(1, 6))
        block = encoder.prefix() + b"".join(encoder.field(name, value) for name, value in chosen)
        assert decoder.decode(block) == chosen
        assert decoder.size == encoder.size
