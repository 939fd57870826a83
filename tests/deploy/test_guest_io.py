"""The guest I/O protocol (nfedge.deploy.guest_io): the UART record parser on untrusted bytes, and the single
definition check: the firmware harness's C (nfedge_rt.h, main.c, startup_cm.c) says what guest_io says."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfedge.deploy import guest_io
from nfedge.deploy.compile.toolchain import firmware_dir
from nfedge.deploy.guest_io import (
    DONE_PAYLOAD_BYTES,
    EXIT_PAYLOAD_BYTES,
    EXIT_REASONS,
    INPUT_HEADER_BYTES,
    INPUT_MAGIC,
    INPUT_VERSION,
    MAX_RECORD_PAYLOAD,
    RECORD_FRAMING_BYTES,
    REC_DONE,
    REC_EXIT,
    REC_MESSAGE,
    REC_SAMPLE,
    TICKS_PER_SAMPLE,
    Record,
    pack_inputs,
    parse_records,
    sample_payload_bytes,
)

PROPERTY = settings(max_examples=300, deadline=None)  # shared cores: no per-example deadline


def c_crc32(data: bytes) -> int:
    """startup_cm.c's uart_put CRC, line for line: reflected polynomial 0xEDB88320, start 0xFFFFFFFF, final xor."""
    crc = 0xFFFFFFFF
    for byte in data:
        c = crc ^ byte
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 & (0 - (c & 1)) & 0xFFFFFFFF)
        crc = c
    return crc ^ 0xFFFFFFFF


def frame(type_: bytes, payload: bytes) -> bytes:
    """One record as startup_cm.c's nfedge_record sends it: 'N' 'F', type, uint16 LE length, payload, CRC-32 of
    type + length + payload (a payload longer than the length field goes out as an empty record)."""
    if len(payload) > 0xFFFF:
        payload = b""
    head = type_ + len(payload).to_bytes(2, "little")
    return b"NF" + head + payload + zlib.crc32(head + payload).to_bytes(4, "little")


def accounted(records: list[Record], junk: int) -> int:
    return junk + sum(RECORD_FRAMING_BYTES + len(r.payload) for r in records)


records_st = st.lists(st.builds(Record, st.binary(min_size=1, max_size=1),
                                st.one_of(st.binary(max_size=64), st.binary(max_size=600))), max_size=8)
no_sync = st.binary(max_size=40).filter(lambda b: b"NF" not in b)  # bytes that cannot start a record


# ------------------------------------------------------------------------------------------- framing


@PROPERTY
@given(st.binary(max_size=300))
def test_the_firmware_crc_is_zlibs(data):
    assert c_crc32(data) == zlib.crc32(data)


@PROPERTY
@given(records_st)
def test_round_trip(recs):
    assert parse_records(b"".join(frame(r.type, r.payload) for r in recs)) == (recs, 0)


def test_record_framing_size_and_an_unframeable_payload():
    assert len(frame(b"M", b"abc")) == RECORD_FRAMING_BYTES + 3
    assert MAX_RECORD_PAYLOAD == 0xFFFF
    big = frame(b"S", b"x" * MAX_RECORD_PAYLOAD)
    assert parse_records(big) == ([Record(b"S", b"x" * MAX_RECORD_PAYLOAD)], 0)
    assert parse_records(frame(b"S", b"x" * (MAX_RECORD_PAYLOAD + 1))) == ([Record(b"S", b"")], 0)


def test_empty_stream():
    assert parse_records(b"") == ([], 0)


@pytest.mark.parametrize("where", ["crc", "payload", "type", "length"])
def test_a_crc_mismatch_drops_only_that_record(where):
    a, b, c = frame(b"S", b"first"), bytearray(frame(b"M", b"second")), frame(b"E", b"\0\0\0\0")
    b[{"crc": -1, "payload": 7, "type": 2, "length": 3}[where]] ^= 0x01
    records, junk = parse_records(a + bytes(b) + c)
    assert records == [Record(b"S", b"first"), Record(b"E", b"\0\0\0\0")]
    assert junk == len(b)


@PROPERTY
@given(records_st, st.lists(no_sync, min_size=9, max_size=9))
def test_junk_between_records_is_counted_exactly(recs, junks):
    data = junks[0] + b"".join(frame(r.type, r.payload) + j for r, j in zip(recs, junks[1:]))
    recs = recs[:len(junks) - 1]
    assert parse_records(data) == (recs, len(data) - sum(len(frame(r.type, r.payload)) for r in recs))


def test_junk_next_to_a_sync():
    # a lone 'N' before a record, an 'F' after one: neither forms a sync with the record's own bytes
    rec = frame(b"D", b"\1\0\0\0\0\0\0\0")
    assert parse_records(b"hello N" + rec + b"F" + rec + b"NNN") == ([Record(b"D", rec[5:-4])] * 2, 7 + 1 + 3)


def stream() -> tuple[bytes, list[int]]:
    """A typical run's output with a fake sync inside a payload; the offsets where each record ends."""
    recs = [frame(b"M", b"nfedge-error: NF\x03\x00abc"), frame(b"S", bytes(range(40))),
            frame(b"D", b"\x02\0\0\0\x10\0\0\0"), frame(b"E", b"\0\0\0\0")]
    ends = list(np.cumsum([len(r) for r in recs]))
    return b"".join(recs), ends


def test_truncation_at_every_offset_keeps_the_records_before_the_cut():
    data, ends = stream()
    full, _ = parse_records(data)
    assert len(full) == 4
    for cut in range(len(data) + 1):
        records, junk = parse_records(data[:cut])
        kept = sum(e <= cut for e in ends)
        assert records == full[:kept], cut
        assert junk == cut - (ends[kept - 1] if kept else 0), cut  # the cut record's bytes, all of them


def test_a_length_larger_than_the_data():
    good = frame(b"E", b"\0\0\0\0")
    lying = b"NF" + b"S" + (0xFFFF).to_bytes(2, "little") + b"short"  # says 65535 bytes, has 5
    assert parse_records(lying) == ([], len(lying))
    # the lie does not swallow the records after it: the parser resynchronizes one byte on
    assert parse_records(lying + good + good) == ([Record(b"E", b"\0\0\0\0")] * 2, len(lying))
    assert parse_records(b"NF") == ([], 2) and parse_records(b"NFS\x05") == ([], 4)


def test_a_fake_sync_inside_a_payload():
    inner = frame(b"E", b"\x07\0\0\0")
    outer = frame(b"M", b"text NF" + inner + b"NF")  # "NF" and even a whole valid record inside a payload
    assert parse_records(outer) == ([Record(b"M", b"text NF" + inner + b"NF")], 0)
    # what nothing between records is trusted means: once the outer record is broken, its bytes are junk,
    # and a whole record inside it is found like any other (its CRC holds); the harness then checks the count
    # and the order of the records it got
    broken = outer[:-1] + bytes([outer[-1] ^ 1])
    assert parse_records(broken) == ([Record(b"E", b"\x07\0\0\0")], len(broken) - len(inner))


@PROPERTY
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_and_every_byte_is_accounted_for(data):
    records, junk = parse_records(data)
    assert 0 <= junk <= len(data) and accounted(records, junk) == len(data)
    pos = 0
    for r in records:  # each record is in the data, in order, without overlapping the one before
        pos = data.index(frame(r.type, r.payload), pos) + RECORD_FRAMING_BYTES + len(r.payload)


@PROPERTY
@given(records_st.filter(bool), st.data())
def test_one_corrupted_byte_drops_exactly_its_record(recs, data):
    """One changed byte loses its own record and never one before or after it: in the type, payload or CRC it is
    an error burst CRC-32 always catches; in the sync the record is not seen; in the length the parser compares
    other bytes (a match has odds of 2**-32) and resynchronizes on the next record's sync."""
    frames = [frame(r.type, r.payload) for r in recs]
    k = data.draw(st.integers(0, len(frames) - 1))
    broken = bytearray(frames[k])
    broken[data.draw(st.integers(0, len(broken) - 1))] ^= data.draw(st.integers(1, 255))
    stream_ = b"".join(frames[:k]) + bytes(broken) + b"".join(frames[k + 1:])
    assert parse_records(stream_) == (recs[:k] + recs[k + 1:], len(broken))


@PROPERTY
@given(records_st, st.data())
def test_truncated_random_records(recs, data):
    frames = [frame(r.type, r.payload) for r in recs]
    full = b"".join(frames)
    cut = data.draw(st.integers(0, len(full)))
    ends = np.cumsum([0] + [len(f) for f in frames])
    kept = int(np.searchsorted(ends, cut, side="right")) - 1  # records whose last byte is before the cut
    assert parse_records(full[:cut]) == (recs[:kept], cut - int(ends[kept]))


@PROPERTY
@given(records_st, st.data())
def test_records_with_random_corruption_are_accounted_for(recs, data):
    raw = bytearray(b"".join(frame(r.type, r.payload) for r in recs))
    for _ in range(data.draw(st.integers(0, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    records, junk = parse_records(bytes(raw))
    assert accounted(records, junk) == len(raw)


# -------------------------------------------------------------------------------- one definition


def header_defines(text: str) -> dict[str, int]:
    """`#define NFEDGE_x VALUE` with an integer (decimal or hex, optional u suffix) or a character value."""
    out = {}
    for name, value in re.findall(r"^\s*#define\s+(NFEDGE_\w+)\s+(\S+)", text, re.M):
        if m := re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)[uU]?", value):
            out[name] = int(m[1], 0)
        elif m := re.fullmatch(r"'(.)'", value):
            out[name] = ord(m[1])
    return out


def protocol_mismatches(header_text: str, ours=guest_io) -> list[str]:
    """What nfedge_rt.h and guest_io (`ours`) define differently: the input block's constants, the record types,
    the exit statuses (every non-OK NFEDGE_EXIT_* has a reason in EXIT_REASONS, and each reason a status)."""
    d = header_defines(header_text)
    want = {"NFEDGE_INPUT_MAGIC": ours.INPUT_MAGIC, "NFEDGE_INPUT_VERSION": ours.INPUT_VERSION,
            "NFEDGE_INPUT_HEADER": ours.INPUT_HEADER_BYTES, "NFEDGE_EXIT_OK": 0}
    want.update({f"NFEDGE_REC_{n}": ord(getattr(ours, f"REC_{n}")) for n in ("SAMPLE", "MESSAGE", "DONE", "EXIT")})
    bad = [f"{k}: header {d.get(k)}, guest_io {v}" for k, v in want.items() if d.get(k) != v]
    rec_names = {k for k in d if k.startswith("NFEDGE_REC_")}
    bad += [f"{k} has no guest_io REC_ constant" for k in sorted(rec_names - set(want))]
    exits = {v: k for k, v in d.items() if k.startswith("NFEDGE_EXIT_") and k != "NFEDGE_EXIT_OK"}
    bad += [f"{exits[v]} = {v} has no EXIT_REASONS entry" for v in sorted(set(exits) - set(ours.EXIT_REASONS))]
    bad += [f"EXIT_REASONS[{v}] has no NFEDGE_EXIT_* in the header"
            for v in sorted(set(ours.EXIT_REASONS) - set(exits))]
    return bad


def _c(name: str) -> str:
    return (Path(firmware_dir()) / name).read_text()


def test_the_header_and_guest_io_agree():
    assert protocol_mismatches(_c("nfedge_rt.h")) == []
    assert header_defines(_c("nfedge_rt.h"))["NFEDGE_INPUT_MAGIC"] == int.from_bytes(b"NFIN", "little") == INPUT_MAGIC


@pytest.mark.parametrize("old,new,found", [
    ("NFEDGE_INPUT_HEADER 64u", "NFEDGE_INPUT_HEADER 128u", "NFEDGE_INPUT_HEADER: header 128"),
    ("NFEDGE_INPUT_VERSION 1u", "NFEDGE_INPUT_VERSION 2u", "NFEDGE_INPUT_VERSION"),
    ("NFEDGE_REC_SAMPLE 'S'", "NFEDGE_REC_SAMPLE 'T'", "NFEDGE_REC_SAMPLE"),
    ("#define NFEDGE_REC_DONE 'D'", "#define NFEDGE_REC_DONE 'D'\n#define NFEDGE_REC_TRACE 'T'", "NFEDGE_REC_TRACE"),
    ("#define NFEDGE_EXIT_WORKSPACE 4", "#define NFEDGE_EXIT_WORKSPACE 5", "NFEDGE_EXIT_WORKSPACE = 5"),
    ("#define NFEDGE_EXIT_FAULT 250", "", "EXIT_REASONS[250]"),
])
def test_a_change_to_the_header_alone_is_found(old, new, found):
    text = _c("nfedge_rt.h")
    assert old in text
    bad = protocol_mismatches(text.replace(old, new))
    assert found in " | ".join(bad), bad


def test_a_change_to_guest_io_alone_is_found():
    class Changed:
        INPUT_MAGIC, INPUT_VERSION, INPUT_HEADER_BYTES = INPUT_MAGIC, INPUT_VERSION, INPUT_HEADER_BYTES
        REC_SAMPLE, REC_MESSAGE, REC_DONE, REC_EXIT = REC_SAMPLE, REC_MESSAGE, REC_DONE, REC_EXIT
        EXIT_REASONS = {**EXIT_REASONS, 5: "a new reason"}

    assert protocol_mismatches(_c("nfedge_rt.h"), Changed) == ["EXIT_REASONS[5] has no NFEDGE_EXIT_* in the header"]
    Changed.REC_EXIT = b"X"
    assert "NFEDGE_REC_EXIT: header 69, guest_io 88" in protocol_mismatches(_c("nfedge_rt.h"), Changed)


def test_the_input_header_fields_are_packed_in_the_c_structs_order():
    fields = re.search(r"typedef struct \{\s*uint32_t ([\w, ]+);.*?\} nfedge_input_header;", _c("nfedge_rt.h"), re.S)
    assert fields and [f.strip() for f in fields[1].split(",")] == ["magic", "version", "count", "sample_bytes"]
    block = pack_inputs(np.zeros((3, 1, 2, 2), np.float32))
    assert struct.unpack("<4I", block[:16]) == (INPUT_MAGIC, INPUT_VERSION, 3, 16)
    assert len(block) == INPUT_HEADER_BYTES + 3 * 16 and not any(block[16:INPUT_HEADER_BYTES])


SAMPLE_CALL = re.compile(r"nfedge_record\(NFEDGE_REC_SAMPLE, &index, (\d+), out, "
                         r"\(uint32_t\)\(k \* sizeof\(nfedge_logit_t\)\), ticks, (\d+) \* sizeof\(uint64_t\)\)")


def firmware_payload_mismatches(main_c: str, startup_c: str) -> list[str]:
    """Where main.c / startup_cm.c send records that guest_io would read differently (whitespace-insensitive)."""
    main, startup = " ".join(main_c.split()), " ".join(startup_c.split())
    bad = []
    # SAMPLE: io_emit's nfedge_record(type, &index, 4, logits, k * sizeof(logit), ticks, N * sizeof(uint64_t));
    # nfedge_logit_t is float or int32_t (codegen's model.h): 4 bytes each
    m = SAMPLE_CALL.search(main)
    if not m:
        bad.append("main.c's io_emit sends SAMPLE records another way: update guest_io and this check together")
    elif sample_payload_bytes(10) != int(m[1]) + 4 * 10 + 8 * int(m[2]) or int(m[2]) != TICKS_PER_SAMPLE:
        bad.append(f"SAMPLE: main.c sends a {m[1]}-byte index and {m[2]} ticks")
    # every ticks array main.c declares or takes has TICKS_PER_SAMPLE elements, and the Linux runner writes as many
    sizes = re.findall(r"uint64_t ticks\[(\d+)\]", main)
    if len(sizes) < 3 or set(sizes) != {str(TICKS_PER_SAMPLE)}:
        bad.append(f"main.c's ticks arrays have {sizes} elements, guest_io.TICKS_PER_SAMPLE is {TICKS_PER_SAMPLE}")
    if f"fwrite(ticks, sizeof(uint64_t), {TICKS_PER_SAMPLE}, ftick) == {TICKS_PER_SAMPLE}" not in main:
        bad.append("main.c's Linux io_emit writes another number of ticks")
    done = re.search(r"uint32_t done\[2\] = \{n, \(uint32_t\)nfedge_workspace_peak\(\)\};", main)
    if not (done and DONE_PAYLOAD_BYTES == 8):
        bad.append("DONE: main.c's io_close sends another payload")
    if not ("nfedge_record(NFEDGE_REC_EXIT, &s, 4, 0, 0, 0, 0)" in startup and EXIT_PAYLOAD_BYTES == 4):
        bad.append("EXIT: startup_cm.c's nfedge_exit sends another payload")
    if f"if (len > 0x{MAX_RECORD_PAYLOAD:X}u) len = na = nb = nc = 0;" not in startup:
        bad.append("startup_cm.c's nfedge_record has another length limit")
    if not ("0xEDB88320u" in startup and "const uint8_t sync[2] = {'N', 'F'}" in startup and guest_io.SYNC == b"NF"):
        bad.append("startup_cm.c's nfedge_record frames records another way (sync, CRC polynomial)")
    return bad


def test_the_record_payloads_match_what_the_firmware_sends():
    assert firmware_payload_mismatches(_c("main.c"), _c("startup_cm.c")) == []


@pytest.mark.parametrize("file,old,new,found", [
    ("main.c", "ticks[3]", "ticks[4]", "ticks arrays"),
    ("main.c", "ticks, 3 * sizeof(uint64_t)", "ticks, 4 * sizeof(uint64_t)",
     "SAMPLE: main.c sends a 4-byte index and 4"),
    ("main.c", "&index, 4,", "&index, 8,", "SAMPLE"),
    ("main.c", "uint32_t done[2]", "uint32_t done[3]", "DONE"),
    ("startup_cm.c", "&s, 4,", "&s, 8,", "EXIT"),
    ("startup_cm.c", "0xEDB88320u", "0x04C11DB7u", "CRC"),
])
def test_a_change_to_the_firmware_alone_is_found(file, old, new, found):
    texts = {"main.c": _c("main.c"), "startup_cm.c": _c("startup_cm.c")}
    assert old in texts[file]
    texts[file] = texts[file].replace(old, new)
    assert found in " | ".join(firmware_payload_mismatches(texts["main.c"], texts["startup_cm.c"]))
