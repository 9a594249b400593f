"""asr.tokens and the BPE vocabulary: SentencePiece training on real transcripts, encode/decode,
config round trips, tokens files (idempotent builds), the TF-free runtime's decoding rule
(BPE and old character metadata) and the exported .tflite's metadata."""
from __future__ import annotations

import base64
import json
import pickle
import random
from collections import Counter

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT, tiny_config
from asr.config import ConfigError, ExperimentConfig, config_diff
from asr.decoding import greedy_ids, log_softmax
from asr.manifest import Utterance, write_manifest
from asr.text import BLANK, DIGIT_WORDS, WORD_BOUNDARY, Vocabulary, normalize_text
from asr.tokens import DEFAULT_VOCAB_SIZE, TokensError, build_tokens, load_tokens, train_bpe

BPE_SIZE = 120  # small enough for the few real transcripts of ../shared/data
SHIPPED_TFLITE = REPO_ROOT / "models" / "fsdd.tflite"


def digit_sentences(n: int = 300, seed: int = 0) -> list[str]:
    """Connected-digit sentences like the FSDD recipe's, 1 to 7 words each."""
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(DIGIT_WORDS) for _ in range(rnd.randint(1, 7))) for _ in range(n)]


@pytest.fixture(scope="module")
def real_texts(librispeech_dir, clips_dir) -> list[str]:
    """Normalized real transcripts (LibriSpeech test-clean sample and the clips) plus digit sentences."""
    raw = []
    for trans in sorted(librispeech_dir.glob("test-clean/*/*/*.trans.txt")):
        raw += [line.split(" ", 1)[1] for line in trans.read_text().splitlines() if line.strip()]
    rows = (clips_dir / "transcripts.tsv").read_text().splitlines()[1:]
    raw += [row.split("\t")[1] for row in rows if row.strip()]
    assert len(raw) >= 10
    return [normalize_text(t) for t in raw] + digit_sentences()


@pytest.fixture(scope="module")
def bpe(real_texts) -> Vocabulary:
    return train_bpe(real_texts, BPE_SIZE)


def write_texts(path, texts) -> str:
    """A manifest whose utterances have ``texts`` (the audio paths are never opened)."""
    write_manifest(path, [Utterance(f"u{i}", f"u{i}.wav", 1.0, t) for i, t in enumerate(texts)])
    return str(path)


def scores_for(ids: list[int], blank: int, vocab_size: int, rng) -> np.ndarray:
    """Log-probabilities [frames, vocab_size] whose best path spells ``ids``: each id held for
    1-3 frames, blanks between and around, and a blank wherever an id repeats."""
    path = [blank] * int(rng.integers(0, 3))
    for k, i in enumerate(ids):
        if k and ids[k - 1] == i:
            path.append(blank)
        path += [i] * int(rng.integers(1, 4))
        path += [blank] * int(rng.integers(0, 2))
    scores = rng.normal(0.0, 1.0, (len(path), vocab_size)).astype(np.float32)
    scores[np.arange(len(path)), path] = 8.0
    return log_softmax(scores)


# ------------------------------------------------------------------ the BPE vocabulary


def test_bpe_layout(bpe):
    assert bpe.kind == "bpe" and bpe.chars == "" and bpe.word_boundary == WORD_BOUNDARY
    assert bpe.size == len(bpe.pieces) + 1 == len(bpe.symbols) == BPE_SIZE  # <unk>'s place is the blank's
    assert bpe.symbols[bpe.blank] == BLANK and bpe.symbols[1:] == list(bpe.pieces)
    assert "<unk>" not in bpe.pieces and WORD_BOUNDARY in bpe.pieces
    assert any(p.startswith(WORD_BOUNDARY) and len(p) > 2 for p in bpe.pieces)  # merged word pieces


@pytest.mark.parametrize("blank", [0, 7])
def test_bpe_encode_decode_round_trip_on_real_text(real_texts, bpe, blank):
    vocab = Vocabulary.from_sentencepiece(base64.b64decode(bpe.sp_model), blank=blank)
    assert vocab.pieces == bpe.pieces
    total_ids = total_chars = 0
    for text in real_texts:
        unknown = Counter()
        ids = vocab.encode(text, unknown)
        assert not unknown
        assert blank not in ids and all(0 <= i < vocab.size for i in ids)
        assert vocab.decode(ids) == text
        total_ids, total_chars = total_ids + len(ids), total_chars + len(text)
    assert total_ids < total_chars / 2  # pieces, not characters


def test_bpe_decode_rule(bpe):
    index = {s: i for i, s in enumerate(bpe.symbols)}
    boundary = index[WORD_BOUNDARY]
    ids = [boundary, boundary] + bpe.encode("one two") + [boundary, boundary]  # stray word boundaries
    assert bpe.decode(ids) == "one two"
    assert bpe.decode([0] + bpe.encode("three") + [0]) == "three"  # blanks dropped
    assert bpe.decode([]) == "" and bpe.decode([boundary]) == ""


def test_bpe_unknown_characters_are_skipped_and_counted(bpe):
    unknown = Counter()
    ids = bpe.encode("he was жж here ßo", unknown)
    assert bpe.decode(ids) == "he was here o"
    assert unknown == Counter({"ж": 2, "ß": 1})
    assert bpe.encode("жж") == []


def test_bpe_training_is_deterministic(real_texts, bpe):
    assert train_bpe(list(real_texts), BPE_SIZE) == bpe


def test_bpe_sample_above_max_sentences_is_seeded(real_texts):
    a = train_bpe(real_texts, 60, max_sentences=100, seed=1)
    assert a == train_bpe(real_texts, 60, max_sentences=100, seed=1)
    assert a.size == 60


def test_bpe_vocab_size_below_the_characters_is_a_clear_error():
    letters = len(set("".join(DIGIT_WORDS)))
    with pytest.raises(TokensError, match=rf"vocab_size 10 is too small.*at least {letters + 2} \({letters} distinct"):
        train_bpe(digit_sentences(), 10)
    assert train_bpe(digit_sentences(), letters + 2).size == letters + 2  # the smallest size works
    with pytest.raises(TokensError, match="no transcripts"):
        train_bpe(["", ""], 50)


def test_bpe_vocab_size_above_what_the_corpus_supports_gives_fewer_pieces():
    vocab = train_bpe(digit_sentences(), 1000)
    assert 20 < vocab.size < 1000
    assert all(vocab.decode(vocab.encode(t)) == t for t in digit_sentences(50, seed=3))


def test_bpe_vocabulary_pickles_and_validates(bpe):
    again = pickle.loads(pickle.dumps(bpe))
    assert again == bpe and again.encode("one two") == bpe.encode("one two")
    with pytest.raises(ValueError, match="no chars"):
        Vocabulary(pieces=bpe.pieces, sp_model=bpe.sp_model)  # chars left at the default
    with pytest.raises(ValueError, match="do not match"):
        Vocabulary(chars="", pieces=bpe.pieces[::-1], sp_model=bpe.sp_model)
    with pytest.raises(ValueError, match="both pieces and sp_model"):
        Vocabulary(chars="", pieces=bpe.pieces)
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        Vocabulary(chars="", pieces=bpe.pieces, sp_model=base64.b64encode(b"junk").decode())
    with pytest.raises(ValueError, match="blank must be in"):
        Vocabulary.from_sentencepiece(base64.b64decode(bpe.sp_model), blank=BPE_SIZE)


def test_encoding_many_transcripts_is_fast(real_texts, bpe):
    """The processor is loaded once per vocabulary, not per call: 20k encodes well under a second
    (300k transcripts at the start of a training run take seconds)."""
    import time

    texts = [real_texts[i % len(real_texts)] for i in range(20000)]
    start = time.perf_counter()
    for t in texts:
        bpe.encode(t)
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------ configs


def test_bpe_config_round_trip_through_dict_json_and_yaml(bpe):
    cfg = ExperimentConfig(vocabulary=bpe)
    d = cfg.to_dict()
    assert set(d["vocabulary"]) == {"blank", "pieces", "sp_model"}
    assert ExperimentConfig.from_dict(d) == cfg
    assert ExperimentConfig.from_dict(json.loads(json.dumps(d, ensure_ascii=False))) == cfg
    loaded = ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(d, allow_unicode=True)))
    assert loaded == cfg and loaded.vocabulary.encode("four two") == bpe.encode("four two")


def test_character_config_dict_is_unchanged_and_old_model_json_loads():
    assert ExperimentConfig().to_dict()["vocabulary"] == {"chars": Vocabulary().chars, "blank": 0}
    shipped = REPO_ROOT / "models" / "fsdd" / "model.json"
    if not shipped.is_file():
        pytest.skip("the shipped Keras model is absent")
    config = ExperimentConfig.from_dict(json.loads(shipped.read_text())["config"])
    assert config.vocabulary == Vocabulary() and config.vocabulary.kind == "chars"


def test_bad_vocabulary_section_is_a_config_error(bpe):
    with pytest.raises(ConfigError, match="unknown vocabulary key"):
        ExperimentConfig.from_dict({"vocabulary": {"pices": ["a"]}})
    with pytest.raises(ConfigError, match="list of strings"):
        ExperimentConfig.from_dict({"vocabulary": {"pieces": [1, 2], "sp_model": bpe.sp_model}})
    with pytest.raises(ConfigError, match="does not match"):
        ExperimentConfig.from_dict({"vocabulary": {**bpe.to_dict(), "kind": "chars"}})


def test_config_diff_of_two_bpe_models_is_short(real_texts, bpe):
    other = train_bpe(real_texts, BPE_SIZE + 20)
    lines = config_diff(ExperimentConfig(vocabulary=bpe).to_dict(), ExperimentConfig(vocabulary=other).to_dict())
    assert [line.split(":")[0] for line in lines] == ["vocabulary.pieces", "vocabulary.sp_model"]
    assert all(len(line) < 160 for line in lines), lines
    assert f"({len(repr(other.sp_model))} chars)" in lines[1]
    to_chars = config_diff(ExperimentConfig(vocabulary=bpe).to_dict(), ExperimentConfig().to_dict())
    assert len(to_chars) == 3 and all(len(line) < 160 for line in to_chars)


# ------------------------------------------------------------------ tokens files


def test_build_tokens_is_idempotent_and_rebuilds_when_settings_or_texts_change(tmp_path):
    texts = digit_sentences() + ["he could wait no longer", "for a full hour he had paced up and down"]
    manifest = write_texts(tmp_path / "train.jsonl", texts)
    out = tmp_path / "lang" / "tokens.json"
    log = []
    first = build_tokens([manifest], out, "bpe", 60, log=log.append)
    assert first.kind == "bpe" and first.size == 60 and load_tokens(out) == first
    assert "wrote a bpe vocabulary of 60 outputs from 302 transcripts" in log[-1]
    stamp, content = out.stat().st_mtime_ns, out.read_bytes()

    log.clear()
    assert build_tokens([manifest], out, "bpe", 60, log=log.append) == first
    assert out.stat().st_mtime_ns == stamp and out.read_bytes() == content
    assert len(log) == 1 and "up to date" in log[0]

    log.clear()
    second = build_tokens([manifest], out, "bpe", 70, log=log.append)  # other settings
    assert "rebuilding" in log[0] and second.size == 70 and load_tokens(out) == second
    data = json.loads(out.read_text())
    assert data["settings"]["vocab_size"] == 70 and data["corpus"] == {
        "manifests": ["train.jsonl"], "transcripts": 302, "texts_sha256": data["corpus"]["texts_sha256"]}
    assert not list(out.parent.glob(".*tmp"))  # written through a renamed temporary file

    log.clear()
    more = write_texts(tmp_path / "more.jsonl", ["stuff it into you his belly counselled him"])
    third = build_tokens([manifest, more], out, "bpe", 70, log=log.append)  # other transcripts
    assert "rebuilding" in log[0] and third != second

    log.clear()
    chars = build_tokens([manifest, more], out, "chars", log=log.append)
    assert chars == Vocabulary() == load_tokens(out) and "rebuilding" in log[0]


def test_build_tokens_chars_reports_characters_outside_the_vocabulary(tmp_path):
    manifest = write_texts(tmp_path / "train.jsonl", ["Straße 42", "über café", "привет"])
    log = []
    vocab = build_tokens([manifest], tmp_path / "tokens.json", "chars", log=log.append)
    assert vocab == Vocabulary()
    outside = [line for line in log if "outside" in line]
    assert len(outside) == 1 and "'ß'x1" in outside[0] and "'п'x1" in outside[0]
    assert "'u'" not in outside[0]  # accents are stripped by the normalization first


def test_build_tokens_errors(tmp_path):
    manifest = write_texts(tmp_path / "train.jsonl", digit_sentences(20))
    with pytest.raises(TokensError, match="kind must be one of chars, bpe"):
        build_tokens([manifest], tmp_path / "t.json", "wordpiece")
    with pytest.raises(TokensError, match="too small"):
        build_tokens([manifest], tmp_path / "t.json", "bpe", 5)
    assert not (tmp_path / "t.json").exists()
    with pytest.raises(TokensError, match="is not a tokens file; not overwriting"):
        build_tokens([manifest], manifest, "chars")  # never clobbers another file
    with pytest.raises(TokensError, match="not found"):
        load_tokens(tmp_path / "absent.json")
    with pytest.raises(TokensError, match="not a tokens file"):
        load_tokens(manifest)
    assert DEFAULT_VOCAB_SIZE == 500


# ------------------------------------------------------------------ the TF-free runtime


def test_runtime_decodes_bpe_metadata(bpe, real_texts, rng):
    from asr.runtime import decode_text, decoding_rule
    from export.metadata import decoding_metadata

    meta = {"decoding": json.loads(json.dumps(decoding_metadata(bpe), ensure_ascii=False))}
    assert meta["decoding"]["tokenizer"] == "bpe" and meta["decoding"]["word_boundary"] == "\u2581"
    blank, symbols, boundary = decoding_rule(meta)
    assert (blank, symbols, boundary) == (bpe.blank, bpe.symbols, WORD_BOUNDARY)
    for text in real_texts[:40]:
        ids = bpe.encode(text)
        scores = scores_for(ids, blank, bpe.size, rng)
        assert greedy_ids(scores, blank) == ids
        assert decode_text(scores, symbols, blank, boundary) == text == bpe.decode(ids)


def test_runtime_decodes_character_metadata_without_the_new_keys_as_before(rng):
    """Metadata of version 1 (no tokenizer key): characters, their spaces collapsed and trimmed."""
    from asr.runtime import decode_text, decoding_rule

    vocab = Vocabulary()
    old = {"decoding": {"method": "greedy CTC", "blank_index": 0, "vocabulary": vocab.symbols}}
    blank, symbols, boundary = decoding_rule(old)
    assert boundary is None
    for text in ["one two", " one  two ", "don't", ""]:
        scores = scores_for(vocab.encode(text), blank, vocab.size, rng)
        assert decode_text(scores, symbols, blank, boundary) == " ".join(text.split()) == vocab.decode(greedy_ids(scores, blank))


def test_shipped_tflite_metadata_decodes_as_characters(rng, tmp_path):
    """The shipped file decodes as characters, whether its metadata states the tokenizer
    (metadata version 2) or predates it (version 1, no "tokenizer": read as chars); a file
    made in the old layout from the shipped one decodes the same way."""
    from asr.runtime import TFLiteModel, decode_text, decoding_rule, read_metadata
    from export.metadata import embed

    if not SHIPPED_TFLITE.is_file():
        pytest.skip("the shipped .tflite is absent")
    meta = read_metadata(SHIPPED_TFLITE)
    assert meta["decoding"].get("tokenizer", "chars") == "chars"
    old = json.loads(json.dumps(meta))
    old["metadata_version"] = 1
    for key in ("tokenizer", "text", "word_boundary"):
        old["decoding"].pop(key, None)
    old_file = tmp_path / "v1.tflite"
    old_file.write_bytes(embed(SHIPPED_TFLITE.read_bytes(), old))
    for path, m in ((SHIPPED_TFLITE, meta), (old_file, read_metadata(old_file))):
        blank, symbols, boundary = decoding_rule(m)
        assert boundary is None and symbols == Vocabulary().symbols
        scores = scores_for(Vocabulary().encode("seven  three"), blank, len(symbols), rng)
        assert decode_text(scores, symbols, blank, boundary) == "seven three"
        assert TFLiteModel(path, num_threads=1).decode(scores) == "seven three"
    assert "tokenizer" not in read_metadata(old_file)["decoding"]


def test_runtime_refuses_an_unknown_tokenizer():
    from asr.runtime import ModelFileError, decoding_rule

    meta = {"decoding": {"blank_index": 0, "vocabulary": [BLANK, "a"], "tokenizer": "wordpiece"}}
    with pytest.raises(ModelFileError, match="unknown tokenizer 'wordpiece'"):
        decoding_rule(meta, "x.tflite")


@pytest.mark.slow
def test_exported_bpe_model_carries_the_tokenizer_and_decodes_with_it(bpe, tmp_path, clips_dir):
    """A tiny random BPE model exported to .tflite: its metadata states the BPE rule and the
    TF-free runtime follows it, on the model's own output for real audio."""
    import dataclasses

    from asr.audio import load_audio
    from asr.checkpoint import load_model_dir, save_model_dir
    from asr.model import build_model
    from asr.runtime import TFLiteModel, read_metadata
    from export.convert import export_model

    config = dataclasses.replace(tiny_config("model.conv_channels=4", "model.lstm_units=8"), vocabulary=bpe)
    net = build_model(config.model, config.features.n_mels, config.vocabulary.size)
    model_dir = save_model_dir(tmp_path / "bpe", config, net, None, corpus="test")
    flat = export_model(model_dir, tmp_path / "bpe.tflite", "float32")

    assert load_model_dir(model_dir)[0].vocabulary == bpe  # model.json carries the whole tokenizer
    meta = read_metadata(flat)
    assert meta["metadata_version"] == 2
    assert meta["decoding"]["tokenizer"] == "bpe" and meta["decoding"]["word_boundary"] == WORD_BOUNDARY
    assert meta["decoding"]["vocabulary"] == bpe.symbols and meta["output"]["shape"] == ["num_frames", bpe.size]

    model = TFLiteModel(flat, num_threads=1)
    assert model.word_boundary == WORD_BOUNDARY
    pcm = load_audio(clips_dir / "sr_english.wav")
    log_probs = model.log_probs(pcm)
    assert log_probs.shape[1] == bpe.size
    assert model.transcribe(pcm) == bpe.decode(greedy_ids(log_probs, bpe.blank))
    ids = bpe.encode("one two three")
    assert model.decode(scores_for(ids, bpe.blank, bpe.size, np.random.default_rng(0))) == "one two three"
