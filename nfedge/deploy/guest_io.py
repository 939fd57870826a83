"""The guest I/O protocol: the one definition of how inputs reach a target's firmware and how its outputs
come back. The C side is firmware_harness/nfedge_rt.h (and main.c, startup_cm.c); tests/deploy/test_guest_io.py
checks the two against each other. Compile (input size limits) and run (packing, parsing) both read it.

Bare metal (Cortex-M under qemu-system-arm):
- Inputs: one block placed in guest memory by QEMU's `-device loader`: a 64-byte header (magic "NFIN",
  version, sample count, bytes per sample; uint32 LE), then the samples (float32, or int8 for an integer
  bundle; C, H, W order). pack_inputs writes it.
- Outputs: framed records on the CMSDK UART, which QEMU writes to a file in the run's temp folder:
      'N' 'F' | type (1 byte) | payload length (uint16 LE) | payload | CRC-32 (zlib) of type, length, payload
  SAMPLE: uint32 index, K (or 2K with a generator) logits (float32 or int32), uint64 ticks[3] (base,
          generator, base on F(x));
  MESSAGE: text; DONE: uint32 samples, uint32 workspace peak bytes; EXIT: uint32 status, always last.
  parse_records reads them; nothing between records is trusted.
Linux and host runners read input.bin / image.bin and write logits.bin / ticks.bin (same layouts, no header)
and a last stdout line "nfedge-done samples=N workspace_peak=B".
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np

__all__ = ["INPUT_MAGIC", "INPUT_VERSION", "INPUT_HEADER_BYTES", "REC_SAMPLE", "REC_MESSAGE", "REC_DONE", "REC_EXIT",
           "RECORD_FRAMING_BYTES", "MAX_RECORD_PAYLOAD", "TICKS_PER_SAMPLE", "DONE_PAYLOAD_BYTES", "EXIT_PAYLOAD_BYTES",
           "EXIT_REASONS", "Record", "sample_payload_bytes", "pack_inputs", "parse_records", "split_sample_payloads"]

INPUT_MAGIC, INPUT_VERSION, INPUT_HEADER_BYTES = 0x4E49464E, 1, 64  # "NFIN"; nfedge_rt.h NFEDGE_INPUT_*
REC_SAMPLE, REC_MESSAGE, REC_DONE, REC_EXIT = b"S", b"M", b"D", b"E"  # nfedge_rt.h NFEDGE_REC_*
SYNC = b"NF"
RECORD_FRAMING_BYTES = len(SYNC) + 1 + 2 + 4  # sync, type, uint16 length, CRC-32
MAX_RECORD_PAYLOAD = 0xFFFF  # the uint16 length field; the firmware sends a longer one as an empty record
TICKS_PER_SAMPLE = 3  # uint64 ticks of base(x), the front F(x), base(F(x))
DONE_PAYLOAD_BYTES, EXIT_PAYLOAD_BYTES = 8, 4
# exit statuses (nfedge_rt.h NFEDGE_EXIT_*): the bare-metal exit record, the Linux runner's exit code
EXIT_REASONS = {
    2: "reading the inputs or writing the outputs failed",
    3: "a compiled operator returned an error",
    4: "the operator workspace pool was exhausted (build-time bound too small)",
    250: "the CPU faulted (HardFault/MemManage/BusFault/UsageFault) or took an unexpected interrupt",
}


def sample_payload_bytes(outputs_per_sample: int) -> int:
    """A SAMPLE record's payload: uint32 index, the logits (4 bytes each: float32 or int32), the ticks."""
    return 4 + 4 * outputs_per_sample + 8 * TICKS_PER_SAMPLE


def pack_inputs(x: np.ndarray) -> bytes:
    """The input block for the guest: the header (magic, version, count, sample bytes) + the samples, little-endian."""
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    n, sample = x.shape[0], x[0].nbytes
    header = struct.pack("<4I", INPUT_MAGIC, INPUT_VERSION, n, sample).ljust(INPUT_HEADER_BYTES, b"\0")
    return header + x.tobytes()


@dataclasses.dataclass(frozen=True)
class Record:
    type: bytes
    payload: bytes


def parse_records(data: bytes) -> tuple[list[Record], int]:
    """(valid records in order, bytes that were not part of one). Bytes between records (a record cut short by a
    fault, or output that is not nfedge's) are skipped and counted; a record counts only when its CRC holds."""
    records, junk, i = [], 0, 0
    while i < len(data):
        j = data.find(SYNC, i)
        if j < 0:
            junk += len(data) - i
            break
        junk += j - i
        body_end = j + 5 + (int.from_bytes(data[j + 3:j + 5], "little") if j + 5 <= len(data) else 0)
        if body_end + 4 <= len(data) and zlib.crc32(data[j + 2:body_end]) == int.from_bytes(data[body_end:body_end + 4], "little"):
            records.append(Record(type=data[j + 2:j + 3], payload=data[j + 5:body_end]))
            i = body_end + 4
        else:
            junk += 1
            i = j + 1
    return records, junk


def split_sample_payloads(payloads: list[bytes], outputs_per_sample: int, logit_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, outputs], ticks [N, 3] int64) from SAMPLE payloads already checked to be the right size."""
    n, size = len(payloads), sample_payload_bytes(outputs_per_sample)
    arr = np.frombuffer(b"".join(p[4:] for p in payloads), dtype=np.uint8).reshape(n, size - 4)
    k = 4 * outputs_per_sample
    logits = arr[:, :k].copy().view("<i4" if logit_dtype == "int32" else "<f4").astype(logit_dtype)
    ticks = arr[:, k:].copy().view("<u8").astype(np.int64)
    return logits, ticks
