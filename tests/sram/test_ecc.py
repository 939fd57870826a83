"""SECDED (72,64) on the weight image: the code's guarantees exhaustively on single words, the image layout, and
faults drawn from the same chips (seeds) as the plain image."""

import itertools

import numpy as np
import pytest
from conftest import random_image

from nfedge.errors import NfedgeError
from nfedge.sram.ecc import (
    CELL_OVERHEAD,
    DATA_BITS,
    H_COLUMNS,
    WORD_BITS,
    EccWords,
    apply_codeword_faults,
    decode_image,
    decode_words,
    encode_image,
    inject_ecc_faults,
    parity_check_bits,
)
from nfedge.sram.faults import FAULT_MODELS, CellFaults, InjectConfig, inject_faults, sample_faulty_cells

DOUBLES = list(itertools.combinations(range(WORD_BITS), 2))
DATA_WORDS = [0, 2**64 - 1, 0x0123456789ABCDEF, 0xAAAAAAAAAAAAAAAA, *np.random.default_rng(5).integers(0, 2**63, 3).tolist()]


def _flipped(word: int, positions: list[tuple[int, ...]]) -> EccWords:
    """One codeword of `word` per entry of `positions`, with those codeword positions flipped."""
    data = np.full(len(positions), word, dtype=np.uint64)
    check = parity_check_bits(data)
    for i, pos in enumerate(positions):
        for j in pos:
            if j < DATA_BITS:
                data[i] ^= np.uint64(1) << np.uint64(j)
            else:
                check[i] ^= np.uint8(1 << (j - DATA_BITS))
    return EccWords(data, check, len(positions) * 8, 8)


def test_hsiao_columns():
    assert len(H_COLUMNS) == WORD_BITS and len(set(H_COLUMNS.tolist())) == WORD_BITS
    weights = [int(c).bit_count() for c in H_COLUMNS]
    assert all(w % 2 == 1 for w in weights)  # odd weight: every double error has an even, nonzero syndrome
    assert [int(c) for c in H_COLUMNS[DATA_BITS:]] == [1 << i for i in range(8)]  # check bits: the unit vectors
    rows = [sum(int(c) >> r & 1 for c in H_COLUMNS[:DATA_BITS]) for r in range(8)]
    assert rows == [26] * 8  # balanced parity trees
    assert CELL_OVERHEAD == 72 / 64


@pytest.mark.parametrize("word", DATA_WORDS)
def test_every_single_error_is_corrected(word):
    read = _flipped(word, [(j,) for j in range(WORD_BITS)])
    decoded, corrected, detected = decode_words(read)
    assert corrected.all() and not detected.any()
    assert (decoded.data == np.uint64(word)).all()
    assert (decoded.check == parity_check_bits(decoded.data)).all()


@pytest.mark.parametrize("word", DATA_WORDS)
@pytest.mark.parametrize("policy", ["zero", "keep"])
def test_every_double_error_is_detected(word, policy):
    assert len(DOUBLES) == 2556
    read = _flipped(word, DOUBLES)
    decoded, corrected, detected = decode_words(read, policy)
    assert detected.all() and not corrected.any()
    if policy == "zero":
        assert (decoded.data == 0).all() and (decoded.check == 0).all()
    else:  # kept as read
        assert np.array_equal(decoded.data, read.data) and np.array_equal(decoded.check, read.check)


def test_no_error_is_left_alone():
    decoded, corrected, detected = decode_words(_flipped(0x0123456789ABCDEF, [()]))
    assert not corrected.any() and not detected.any() and int(decoded.data[0]) == 0x0123456789ABCDEF


def test_some_triple_errors_are_miscorrected():
    """A SECDED code promises nothing for three errors: with odd-weight columns some triples look like a single
    error elsewhere and are 'corrected' into four wrong bits, undetected (the audit's silent words)."""
    col = {int(c): j for j, c in enumerate(H_COLUMNS)}
    triple = next(t for t in itertools.combinations(range(DATA_BITS), 3)
                  if int(H_COLUMNS[t[0]] ^ H_COLUMNS[t[1]] ^ H_COLUMNS[t[2]]) in col)
    decoded, corrected, detected = decode_words(_flipped(0, [triple]))
    assert corrected.all() and not detected.any() and int(decoded.data[0]) != 0


@pytest.mark.parametrize("bits", [8, 7, 5, 4, 3, 2])
@pytest.mark.parametrize("n", [1, 8, 13, 1001])
def test_encode_decode_round_trip(bits, n):
    codes = random_image(n, bits, seed=n).codes
    words = encode_image(codes, bits)
    assert words.data.size == -(-n * bits // 64) and words.cells == 72 * words.data.size
    assert np.array_equal(decode_image(words), codes)


def test_stored_bit_layout():
    """Stored bit s of the image (code s // b, bit s % b) is data bit s % 64 of word s // 64."""
    codes = np.zeros(40, dtype=np.int8)
    codes[17] = 1 << 2  # 4-bit codes: stored bit 17 * 4 + 2 = 70 -> word 1, bit 6
    w = encode_image(codes, 4)
    assert int(w.data[0]) == 0 and int(w.data[1]) == 1 << 6


def test_cell_mapping_of_faults():
    """Cell 72 w + j is codeword position j of word w: a flip there is a single error the decoder corrects."""
    words = encode_image(random_image(64, 8, seed=1).codes, 8)  # 8 words
    cells = np.array([72 * 3 + 5, 72 * 6 + 70], dtype=np.int64)
    read, faulty = apply_codeword_faults(words, CellFaults([cells], [], [], 0.0))
    assert faulty == 2
    assert int(read.data[3] ^ words.data[3]) == 1 << 5 and int(read.check[6] ^ words.check[6]) == 1 << 6
    decoded, corrected, _ = decode_words(read)
    assert corrected.tolist() == [False, False, False, True, False, False, True, False]
    assert np.array_equal(decoded.data, words.data)


@pytest.mark.parametrize("fault", ["flip", "stuck-at"])
def test_faults_come_from_the_same_chip_seeds(fault):
    img = random_image(20_000, 8, seed=2)
    cfg = InjectConfig(fault=fault, ber=0.003, chip=9)
    out, audit = inject_ecc_faults(img, cfg)
    words = encode_image(img.codes, 8)
    assert audit.cells == words.cells == 2500 * 72
    expected = np.unique(sample_faulty_cells(9, 0.003, words.cells))
    assert audit.faulty_cells == expected.size  # the registered fault model over the 72/64 larger array
    # the same steps by hand: encode, fault, decode
    read, _ = apply_codeword_faults(words, FAULT_MODELS.get(fault)(cfg, words.cells, img.manifest.geometry))
    decoded, corrected, detected = decode_words(read)
    assert np.array_equal(out.codes, decode_image(decoded))
    assert audit.corrected_words == int(corrected.sum()) and audit.detected_words == int(detected.sum())
    for w in np.flatnonzero(detected):  # zeroed: the 8 weights of a detected-uncorrectable word read as 0
        assert not out.codes[8 * w: 8 * w + 8].any()
    assert out.manifest.faults["audit"]["chip"] == 9 and out.manifest.faults["ecc"] == "secded-72-64-hsiao"


def test_ecc_hides_sparse_faults_that_corrupt_the_plain_image():
    img = random_image(50_000, 8, seed=3)
    cfg = InjectConfig(ber=1e-4, chip=4)
    plain, pa = inject_faults(img, cfg)
    ecc, audit = inject_ecc_faults(img, cfg)
    assert pa.flipped_bits > 0 and not np.array_equal(plain.codes, img.codes)
    assert audit.detected_words == 0 and audit.silent_words == 0 and audit.corrected_words == audit.error_words > 0
    assert np.array_equal(ecc.codes, img.codes)


def test_double_error_rate_at_one_percent():
    """At BER p a 72-bit word holds >= 2 errors with probability 1 - (1-p)^72 - 72 p (1-p)^71 (about 16% at 1%):
    those words are detected (or, for >= 3 errors, possibly miscorrected): the counts follow the binomial."""
    img = random_image(400_000, 8, seed=4)
    p = 0.01
    _, audit = inject_ecc_faults(img, InjectConfig(ber=p, chip=2))
    w = audit.words
    p_err = 1 - (1 - p) ** 72
    p_multi = p_err - 72 * p * (1 - p) ** 71
    assert abs(audit.error_words - w * p_err) < 5 * np.sqrt(w * p_err * (1 - p_err))
    # A multi-error word is detected or decodes to wrong data (silent); the rare exception is a miscorrection that
    # only touches check bits (data intact, counted in neither), hence the 2% slack.
    multi = audit.detected_words + audit.silent_words
    assert multi <= audit.error_words
    assert abs(multi - w * p_multi) < 5 * np.sqrt(w * p_multi) + 0.02 * w * p_multi


def test_bad_inputs():
    img = random_image(100, 8)
    faulty, _ = inject_faults(img, InjectConfig(ber=0.01, chip=1))
    with pytest.raises(NfedgeError, match="already carries faults"):
        inject_ecc_faults(faulty, InjectConfig(ber=0.01, chip=1))
    with pytest.raises(NfedgeError, match="uncorrectable-word policy"):
        inject_ecc_faults(img, InjectConfig(ber=0.01, chip=1), uncorrectable="retry")
    with pytest.raises(NfedgeError, match="flip or stuck-at"):
        inject_ecc_faults(img, InjectConfig(fault="map", voltage=0.833, fault_map="m.json"))
