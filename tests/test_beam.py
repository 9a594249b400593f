"""Beam search decoding (asr.decoding.Decoder over flashlight-text): lexicon, LM, hotwords,
N-best, what a model ships, and the errors of bad decoder input, on real audio with the shipped
.tflite (no TensorFlow)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "fsdd.tflite"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Speech Commands clips of speakers the shipped model never heard (its Speech Commands test
# speakers) that greedy and plain digit-lexicon search get wrong and a hotword recovers (found by
# decoding all 158 digit clips)
MISSED_ZERO = "zero/893705bb_nohash_3.wav"  # greedy "nro", lexicon search nothing
MISSED_NINE = "nine/893705bb_nohash_0.wav"  # greedy "on", lexicon search nothing
SC_WORDS = ("backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine "
            "no off on one right seven sheila six stop three tree two up visual wow yes zero").split()


@pytest.fixture(scope="module")
def model():
    from asr.runtime import TFLiteModel

    return TFLiteModel(SHIPPED, num_threads=1)


@pytest.fixture(scope="module")
def digits_lexicon(tmp_path_factory):
    path = tmp_path_factory.mktemp("lex") / "digits.txt"
    path.write_text("\n".join(DIGITS) + "\n")
    return path


def decoder(model, **settings):
    from asr.decoding import Decoder, DecoderConfig

    return Decoder(DecoderConfig(**settings), model.symbols, model.blank, model.word_boundary,
                   _chars(model), None)


def _chars(model):
    from asr.text import Vocabulary

    return Vocabulary(chars="".join(s for i, s in enumerate(model.symbols) if i != model.blank), blank=model.blank)


def _log_probs(model, path):
    from asr.audio import load_audio

    return model.log_probs(load_audio(path, model.sample_rate))


@pytest.fixture(scope="module")
def speech_commands():
    from conftest import DATA_DIR

    folder = DATA_DIR / "speech-commands"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real speech for tests)")
    return folder


def test_lexicon_search_spells_only_lexicon_words(model, digits_lexicon, fsdd_dir):
    greedy, lexicon = decoder(model), decoder(model, kind="beam", lexicon=str(digits_lexicon))
    paths = sorted(fsdd_dir.glob("*_jackson_[0-4].wav"))[:20]
    for path in paths:
        lp = _log_probs(model, path)
        words = lexicon.decode(lp)[0].text.split()
        assert all(w in DIGITS for w in words)
        assert greedy.decode(lp)[0].text == model.decode(lp)  # greedy is the runtime's text
    right = sum(lexicon.decode(_log_probs(model, p))[0].text == DIGITS[int(p.name[0])] for p in paths)
    assert right >= 19


def test_hotword_recovers_a_missed_word(model, digits_lexicon, speech_commands):
    for clip, word in ((MISSED_ZERO, "zero"), (MISSED_NINE, "nine")):
        lp = _log_probs(model, speech_commands / clip)
        assert decoder(model).decode(lp)[0].text != word
        assert decoder(model, kind="beam", lexicon=str(digits_lexicon)).decode(lp)[0].text != word
        boosted = decoder(model, kind="beam", lexicon=str(digits_lexicon), hotwords=(((word,), 5.0),))
        assert boosted.decode(lp)[0].text == word


def test_a_boosted_word_is_not_inserted_where_it_was_not_spoken(model, digits_lexicon, fsdd_dir, speech_commands):
    plain = decoder(model, kind="beam", lexicon=str(digits_lexicon))
    boosted = decoder(model, kind="beam", lexicon=str(digits_lexicon), hotwords=((("four",), 5.0),))
    clips = [p for w in DIGITS if w != "four" for p in sorted((speech_commands / w).glob("*.wav"))[:6]]
    clips += [p for p in sorted(fsdd_dir.glob("*_nicolas_0.wav")) if not p.name.startswith("4")]
    checked = 0
    for path in clips:
        lp = _log_probs(model, path)
        before = plain.decode(lp)[0].text
        if "four" in before:
            continue
        checked += 1
        assert "four" not in boosted.decode(lp)[0].text.split(), path.name
    assert checked >= 50


def test_an_out_of_lexicon_phrase_can_be_boosted(model, digits_lexicon, fsdd_dir):
    """A two-word hotword outside the lexicon is added to it; without being spoken it stays out."""
    boosted = decoder(model, kind="beam", lexicon=str(digits_lexicon), hotwords=((("hello", "world"), 5.0),))
    for path in sorted(fsdd_dir.glob("*_jackson_0.wav"))[:5]:  # a speaker the model trained on
        assert boosted.decode(_log_probs(model, path))[0].text == DIGITS[int(path.name[0])]


def test_nbest_hypotheses_are_distinct_and_best_first(model, digits_lexicon, speech_commands):
    lp = _log_probs(model, speech_commands / MISSED_ZERO)
    hyps = decoder(model, kind="beam", lexicon=str(digits_lexicon), nbest=4).decode(lp)
    assert 2 <= len(hyps) <= 4
    assert len({h.text for h in hyps}) == len(hyps)
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert hyps[0].text == decoder(model, kind="beam", lexicon=str(digits_lexicon)).decode(lp)[0].text


def test_lexicon_free_search_without_lm_equals_greedy_on_clear_speech(model, fsdd_dir):
    free = decoder(model, kind="beam", lexicon="none", lm="none")
    for path in sorted(fsdd_dir.glob("*_lucas_1.wav")):
        lp = _log_probs(model, path)
        assert free.decode(lp)[0].text == model.decode(lp)


def test_words_carry_times_and_confidence(model, digits_lexicon, fsdd_dir):
    lp = _log_probs(model, fsdd_dir / "7_jackson_0.wav")
    for settings in ({}, {"kind": "beam", "lexicon": str(digits_lexicon)}):
        (word,) = decoder(model, **settings).decode(lp, offset=10.0)[0].words
        assert word.text == "seven"
        assert 10.0 <= word.start < word.end <= 10.0 + lp.shape[0] * 0.04 + 1e-6
        assert 0.5 < word.confidence <= 1.0


# ------------------------------------------------------------------ bad decoder input

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "asr", *args], capture_output=True, text=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("args, message", [
    (["--beam", "0"], "--beam 0"),
    (["--lm", "missing.arpa"], "missing.arpa: language model not found"),
    (["--lexicon", "missing.txt"], "missing.txt"),
    (["--hotword", "日本"], "日本"),
    (["--nbest", "0"], "--nbest 0"),
])
def test_bad_decoder_settings_are_one_line_errors(fsdd_wav, args, message):
    proc = _cli("transcribe", "--model", str(SHIPPED), str(fsdd_wav), *args)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_corrupt_lm_and_foreign_symbols_are_one_line_errors(tmp_path, fsdd_wav):
    corrupt = tmp_path / "corrupt.arpa"
    corrupt.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\tone\n")
    foreign = tmp_path / "foreign.arpa"
    foreign.write_text("\\data\\\nngram 1=4\nngram 2=1\n\n\\1-grams:\n-99\t<s>\t-0.3\n-0.5\t</s>\n-0.5\tcafé\t-0.3\n"
                       "-1\t<unk>\n\n\\2-grams:\n-0.1\t<s> café\n\n\\end\\\n")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("one\nnaïve\tn a ï v e\n")
    for args, message in ((["--lm", str(corrupt)], "corrupt.arpa"), (["--lm", str(foreign)], "foreign.arpa"),
                          (["--lexicon", str(lexicon)], "lexicon.txt:2")):
        proc = _cli("transcribe", "--model", str(SHIPPED), str(fsdd_wav), *args)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_shipped_model_decodes_with_its_lexicon_and_lm_by_default(speech_commands):
    from asr.runtime import read_metadata

    decoding = read_metadata(SHIPPED)["decoding"]
    assert decoding["decoder"]["kind"] == "beam" and sorted(decoding["lexicon"]) == sorted(SC_WORDS)
    assert decoding["lm_arpa"].startswith("\\data\\")
    clip = str(speech_commands / MISSED_ZERO)  # greedy spells a non-word here
    default = json.loads(_cli("transcribe", "--model", str(SHIPPED), clip, "--format", "json").stdout)
    greedy = json.loads(_cli("transcribe", "--model", str(SHIPPED), clip, "--format", "json", "--decoder", "greedy").stdout)
    assert default["text"] in SC_WORDS and greedy["text"] == "nro"
    assert [w["word"] for s in default["segments"] for w in s["words"]] == [default["text"]]


def test_tflite_and_keras_ship_the_same_decoder():
    from asr.decoding import shipped_from_dir, shipped_from_metadata
    from asr.runtime import read_metadata

    keras = shipped_from_dir(REPO_ROOT / "models" / "fsdd")
    tflite = shipped_from_metadata(read_metadata(SHIPPED))
    assert keras.defaults == tflite.defaults and keras.words == tflite.words
    assert tflite.lm is None  # nothing written until a beam search needs the file
    assert open(keras.lm_file()).read() == open(tflite.lm_file()).read() == tflite.lm_text


def test_decoding_log_probs_of_the_wrong_width_is_an_error(model):
    from asr.decoding import DecoderError

    with pytest.raises(DecoderError, match="symbols"):
        decoder(model, kind="beam", lexicon="none").decode(np.zeros((5, 3), np.float32))
