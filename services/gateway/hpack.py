"""HPACK (RFC 7541) for the bridge's gRPC client: a full decoder, and the few encodings it sends.

The decoder keeps the dynamic table in step with the server (every header
block of the connection must go through it, in order) and reads Huffman-coded
strings with a table-driven automaton, four bits at a time. The encoder side
only writes literals that are never added to the table (and indexed static
entries), so the server's table size settings never matter to it.
"""

from __future__ import annotations

from collections import deque

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
_STATIC_INDEX = {name: index for index, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}
_ENTRY_OVERHEAD = 32

#: The Huffman code lengths of the 257 symbols (RFC 7541 Appendix B), one letter each: a = 5 bits.
#: The code is canonical, so the codes follow from the lengths alone.
_LENGTHS = (
    "isxxxxxxxtzxxzxxxxxxxxzxxxxxxxxxbffhibdgffdgdbbbaaabbbbbbbcdkbhfibccccccccccccccccccccccdcdioij"
    "bkabababbbaccbbbabcbaabccccckgjixprpprrrsrssssststtrstssssqrsrsstrqprrssqsrrtqrssqqrqsrssprrrsrr"
    "svvporsruvvvwwvtuoqvwwvwtqqvvxwwwptpqrqqsrruuttvsvwvvwwwwwxwwwwwvz"
)
_EOS = 256


class HpackError(ValueError):
    """A header block that does not decode (the connection cannot go on: COMPRESSION_ERROR)."""


def _huffman_automaton() -> tuple[list[tuple[int, bytes, bool]], list[bool]]:
    """Transitions by (state * 16 + nibble) -> (next state, bytes emitted, failed); accepting states."""
    lengths = [ord(c) - ord("a") + 5 for c in _LENGTHS]
    children: list[list[int]] = [[-1, -1]]
    leaf: dict[int, int] = {}
    code, previous = 0, 0
    for position, symbol in enumerate(sorted(range(257), key=lambda s: (lengths[s], s))):
        if position:
            code = (code + 1) << (lengths[symbol] - previous)
        previous = lengths[symbol]
        node = 0
        for shift in range(lengths[symbol] - 1, -1, -1):
            bit = (code >> shift) & 1
            if children[node][bit] < 0:
                children[node][bit] = len(children)
                children.append([-1, -1])
            node = children[node][bit]
        leaf[node] = symbol
    internal = [n for n in range(len(children)) if n not in leaf]
    state_of = {node: index for index, node in enumerate(internal)}
    # A string may end inside a code only on a prefix of EOS (all ones) shorter than 8 bits.
    accepting = [False] * len(internal)
    node, depth = 0, 0
    while node not in leaf and depth < 8:
        accepting[state_of[node]] = True
        node, depth = children[node][1], depth + 1
    table: list[tuple[int, bytes, bool]] = []
    for node in internal:
        for nibble in range(16):
            current, out, failed = node, bytearray(), False
            for shift in (3, 2, 1, 0):
                current = children[current][(nibble >> shift) & 1]
                decoded = leaf.get(current)
                if decoded is not None:
                    if decoded == _EOS:
                        failed = True
                        break
                    out.append(decoded)
                    current = 0
            table.append((0 if failed else state_of[current], bytes(out), failed))
    return table, accepting


_HUFFMAN, _ACCEPTING = _huffman_automaton()


def huffman_decode(data: bytes) -> bytes:
    state = 0
    out = bytearray()
    table = _HUFFMAN
    for byte in data:
        state, emitted, failed = table[state * 16 + (byte >> 4)]
        if failed:
            raise HpackError("EOS in a Huffman-coded string")
        out += emitted
        state, emitted, failed = table[state * 16 + (byte & 15)]
        if failed:
            raise HpackError("EOS in a Huffman-coded string")
        out += emitted
    if not _ACCEPTING[state]:
        raise HpackError("bad padding in a Huffman-coded string")
    return bytes(out)


class Decoder:
    """One connection's header decoding state."""

    def __init__(self, table_size: int = 4096) -> None:
        self.limit = table_size
        """The most the server may use (our SETTINGS_HEADER_TABLE_SIZE)."""
        self.max_size = table_size
        self.size = 0
        self.table: deque[tuple[bytes, bytes]] = deque()
        self.version = 0
        """Changes whenever the table does: the same block decodes the same while it stays."""

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        position, end = 0, len(block)
        allow_size_update = True
        try:
            while position < end:
                first = block[position]
                if first & 0x80:
                    index, position = _integer(block, position, 7)
                    headers.append(self._entry(index))
                elif first & 0x40:
                    name, value, position = self._literal(block, position, 6)
                    headers.append((name, value))
                    self._add(name, value)
                elif first & 0x20:
                    if not allow_size_update:
                        raise HpackError("a table size update after a header field")
                    size, position = _integer(block, position, 5)
                    if size > self.limit:
                        raise HpackError(f"table size {size} is over the limit {self.limit}")
                    self.max_size = size
                    self.version += 1
                    self._evict()
                    continue
                else:
                    name, value, position = self._literal(block, position, 4)
                    headers.append((name, value))
                allow_size_update = False
        except IndexError:
            raise HpackError("a truncated header block") from None
        return headers

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise HpackError(f"no header table entry {index}")

    def _literal(self, block: bytes, position: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, position = _integer(block, position, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, position = _string(block, position)
        value, position = _string(block, position)
        return name, value, position

    def _add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self.max_size:
            self.table.clear()
            self.size = 0
            return
        self.table.appendleft((name, value))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, position: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = block[position] & mask
    position += 1
    if value < mask:
        return value, position
    shift = 0
    while True:
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
        if shift > 28:
            raise HpackError("an integer longer than 4 bytes")


def _string(block: bytes, position: int) -> tuple[bytes, int]:
    huffman = block[position] & 0x80
    length, position = _integer(block, position, 7)
    end = position + length
    if end > len(block):
        raise HpackError("a string past the end of the block")
    raw = block[position:end]
    return (huffman_decode(raw) if huffman else raw), end


# -- encoding -------------------------------------------------------------------------------------------


def encode_integer(value: int, prefix: int, flags: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([flags | value])
    out = bytearray([flags | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def indexed(index: int) -> bytes:
    """A static table entry, name and value."""
    return encode_integer(index, 7, 0x80)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field never added to the table: the static table's name when it has one, raw strings."""
    index = _STATIC_INDEX.get(name)
    head = encode_integer(index, 4) if index is not None else b"\x00" + encode_integer(len(name), 7) + name
    return head + encode_integer(len(value), 7) + value


class Encoder:
    """The sending side's dynamic table: fields every call repeats (`:path`, `:authority`, ...) are
    added once and then sent as one-byte indexes, which is less for the server to parse."""

    def __init__(self) -> None:
        self.max_size = 4096
        """The server's SETTINGS_HEADER_TABLE_SIZE (4096 until it says otherwise), at most 4096."""
        self.size = 0
        self.entries: deque[tuple[bytes, bytes, int]] = deque()
        """Oldest first: name, value, insertion number."""
        self.numbers: dict[tuple[bytes, bytes], int] = {}
        self.inserted = 0
        self.version = 0
        """Changes whenever an index may have moved (an insertion or a resize)."""
        self._resized = False

    def resize(self, size: int) -> None:
        """The server changed its table size: use at most that, and say so in the next block."""
        self.max_size = min(size, 4096)
        self._resized = True
        self.version += 1
        self._evict()

    def prefix(self) -> bytes:
        """What must start the next header block (a table size update after a resize)."""
        if not self._resized:
            return b""
        self._resized = False
        return encode_integer(self.max_size, 5, 0x20)

    def field(self, name: bytes, value: bytes) -> bytes:
        """An indexed field if the table has it; else a literal that adds it."""
        number = self.numbers.get((name, value))
        if number is not None:
            return indexed(len(STATIC_TABLE) + 1 + self.inserted - number)
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self.max_size:
            return literal(name, value)
        index = _STATIC_INDEX.get(name)
        head = (
            encode_integer(index, 6, 0x40)
            if index is not None
            else b"\x40" + encode_integer(len(name), 7) + name
        )
        self.inserted += 1
        self.version += 1
        self.entries.append((name, value, self.inserted))
        self.numbers[(name, value)] = self.inserted
        self.size += size
        self._evict()
        return head + encode_integer(len(value), 7) + value

    def _evict(self) -> None:
        while self.size > self.max_size and self.entries:
            name, value, _ = self.entries.popleft()
            del self.numbers[(name, value)]
            self.size -= len(name) + len(value) + _ENTRY_OVERHEAD
