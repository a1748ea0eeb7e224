"""DNA to tokens (``core/tokenizer.py``): nucleotides, padding, ambiguity codes, refusals."""
import pytest

from q2_aam.core.tokenizer import N, PAD, is_dna, tokenize


def test_tokenize_maps_nucleotides_and_pads():
    t = tokenize(["ACGT", "ac"])
    assert t.tokens.tolist() == [[1, 2, 3, 4], [1, 2, PAD, PAD]]
    assert t.lengths.tolist() == [4, 2]


def test_ambiguity_codes_become_n_not_padding():
    t = tokenize(["ACNRY"])
    assert t.tokens[0].tolist() == [1, 2, N, N, N]
    assert t.n_ambiguous == 1


@pytest.mark.parametrize("bad", ["AC-GT", "ACGU", "AC GT", "ACG1"])
def test_non_dna_characters_are_refused_with_the_feature_name(bad):
    with pytest.raises(ValueError, match="feature 'asv7'"):
        tokenize([bad], names=["asv7"])


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="at most 3 nt"):
        tokenize(["ACGT"], max_length=3)


def test_is_dna():
    assert is_dna("ACGTN")
    assert not is_dna("f1a2b3")
    assert not is_dna("")
