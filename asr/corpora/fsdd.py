"""Free Spoken Digit Dataset (FSDD): download, check, and manifests.

Source: v1.0.10 of github.com/Jakobovski/free-spoken-digit-dataset (CC BY-SA 4.0):
``recordings/{digit}_{speaker}_{index}.wav``, 8 kHz mono, index 0-49 per digit and speaker.

Manifests written by ``prepare`` (JSONL, see asr.manifest), in out_dir:
    split/     the dataset's own split: test = index 0-4, dev = index 5-9, train = 10-49
    heldout/   all speakers but one: train = their index 10-49, dev = 5-9, test_seen = 0-4
               (the dataset's test recordings of the speakers trained on); test = every
               recording of the held-out speaker (a voice the model has never heard)
each with isolated-digit manifests ``{train,dev,test}.jsonl``, connected-digit manifests
``{train,dev,test}_connected.jsonl`` (1 to 7 digits of one speaker joined by 50-300 ms pauses,
drawn only from the same part's recordings, deterministic by seed), and
``train_nonspeech.jsonl`` (silence and faint noise with an empty transcript).

Beside each connected manifest, ``{part}_connected.words.jsonl`` holds where each digit is in
its string, known from how the string was made (seconds from the start of the file, one line
per utterance, in the manifest's order; the manifest itself is unchanged):
    {"id": "test-george-0000", "words": [{"word": "five", "start": 0.0, "end": 0.423375,
     "speech_start": 0.03, "speech_end": 0.4}, ...]}
``start``/``end`` are the first sample and one past the last sample of the digit's recording,
``speech_start``/``speech_end`` the same of the speech inside it (``speech_region``: FSDD
recordings keep a little silence at either end).
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.manifest import Utterance, write_manifest
from asr.text import DIGIT_WORDS

VERSION = "1.0.10"
ARCHIVE_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v{VERSION}.tar.gz"
FILE_RE = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
SOURCE_RATE = 8000  # Hz
INDICES = 50  # recordings per digit and speaker
TEST_INDICES = range(0, 5)  # the dataset's own test split
DEV_INDICES = range(5, 10)  # carved from the dataset's train split
MIN_PAUSE, MAX_PAUSE = 0.05, 0.30  # seconds between connected digits
MAX_DIGITS = 7
CONNECTED_PER_SPEAKER = {"train": 300, "dev": 20, "test": 50, "test_seen": 50}
NONSPEECH = 60  # empty-transcript examples in the training set
HELDOUT_DEFAULT = "george"
TRIM_FRAME = 80  # samples: 10 ms frames of speech_region at SOURCE_RATE
TRIM_DB = 30.0  # speech_region: frames within this many dB of the recording's loudest frame
WORDS_SUFFIX = ".words.jsonl"  # test_connected.jsonl -> test_connected.words.jsonl


class CorpusError(ValueError):
    pass


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    index: int
    duration: float

    @property
    def id(self) -> str:
        return f"{self.digit}_{self.speaker}_{self.index}"


def find_recordings(data_dir) -> Path:
    """The ``recordings`` folder inside ``data_dir`` (itself, or one level down as in the archive)."""
    data_dir = Path(data_dir)
    for cand in [data_dir / "recordings", *sorted(data_dir.glob("*/recordings")), data_dir]:
        if cand.is_dir() and any(cand.glob("*_*_*.wav")):
            return cand
    raise CorpusError(f"{data_dir}: no FSDD recordings found (expected recordings/{{digit}}_{{speaker}}_{{index}}.wav)")


def scan(data_dir) -> tuple[list[Recording], list[str]]:
    """Check the recordings folder: names, completeness per speaker, readable headers.

    Returns (recordings, problems). Unexpected names and unreadable files are problems, as is
    a speaker without exactly 10 x 50 recordings."""
    rec_dir = find_recordings(data_dir)
    recs, problems = [], []
    for path in sorted(rec_dir.iterdir()):
        m = FILE_RE.match(path.name)
        if not m:
            if not path.name.startswith("."):
                problems.append(f"unexpected file name: {path.name}")
            continue
        digit, speaker, index = int(m.group(1)), m.group(2), int(m.group(3))
        if index >= INDICES:
            problems.append(f"index out of range: {path.name}")
            continue
        try:
            info = sf.info(str(path))
        except Exception as err:  # libsndfile raises several types
            problems.append(f"unreadable: {path.name} ({err})")
            continue
        recs.append(Recording(path.resolve(), digit, speaker, index, info.frames / info.samplerate))
    per_speaker = Counter(r.speaker for r in recs)
    for speaker, n in sorted(per_speaker.items()):
        if n != 10 * INDICES:
            problems.append(f"speaker {speaker}: {n} recordings, expected {10 * INDICES}")
    if not recs:
        raise CorpusError(f"{rec_dir}: no usable recordings")
    return recs, problems


def _utterance(rec: Recording) -> Utterance:
    return Utterance(rec.id, str(rec.path), round(rec.duration, 4), DIGIT_WORDS[rec.digit], rec.speaker)


def speech_region(audio: np.ndarray) -> tuple[int, int]:
    """(first sample, one past the last sample) of the speech in one recording [num_samples]
    at SOURCE_RATE: from the first to the last 10 ms frame (TRIM_FRAME samples) whose RMS is
    within TRIM_DB of the loudest frame's; the whole recording when it is shorter than a frame
    or silent."""
    frames = len(audio) // TRIM_FRAME
    if frames == 0:
        return 0, len(audio)
    rms = np.sqrt(np.mean(np.square(audio[: frames * TRIM_FRAME].reshape(frames, TRIM_FRAME), dtype=np.float64), axis=1))
    if rms.max() <= 0.0:
        return 0, len(audio)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-TRIM_DB / 20))
    return int(loud[0]) * TRIM_FRAME, min(len(audio), (int(loud[-1]) + 1) * TRIM_FRAME)


def _connected(recs: list[Recording], count: int, rng: np.random.Generator, out_dir: Path, prefix: str):
    """``count`` connected-digit utterances from one speaker's ``recs``, written as 8 kHz WAVs.

    Returns (utterances, truth): truth has one {"id", "words"} per utterance, the lines of
    the ``.words.jsonl`` described in the module docstring."""
    out_dir.mkdir(parents=True, exist_ok=True)
    utts, truth = [], []
    for n in range(count):
        k = int(rng.integers(1, MAX_DIGITS + 1))
        picks = [recs[int(i)] for i in rng.integers(0, len(recs), size=k)]
        pieces, words, cursor = [], [], 0  # cursor: samples written so far
        for j, rec in enumerate(picks):
            audio, rate = sf.read(str(rec.path), dtype="float32")
            if rate != SOURCE_RATE:
                raise CorpusError(f"{rec.path}: expected {SOURCE_RATE} Hz, found {rate}")
            if j:
                pause = int(rng.uniform(MIN_PAUSE, MAX_PAUSE) * SOURCE_RATE)
                floor = float(np.std(audio[: SOURCE_RATE // 50]))  # noise floor: the first 20 ms
                pieces.append(rng.normal(0.0, floor, pause).astype(np.float32))
                cursor += pause
            pieces.append(audio)
            first, last = speech_region(audio)
            words.append({"word": DIGIT_WORDS[rec.digit], "start": cursor / SOURCE_RATE,
                          "end": (cursor + len(audio)) / SOURCE_RATE, "speech_start": (cursor + first) / SOURCE_RATE,
                          "speech_end": (cursor + last) / SOURCE_RATE})
            cursor += len(audio)
        audio = np.concatenate(pieces)
        uid = f"{prefix}-{n:04d}"
        path = out_dir / f"{uid}.wav"
        sf.write(str(path), audio, SOURCE_RATE, subtype="PCM_16")
        text = " ".join(DIGIT_WORDS[r.digit] for r in picks)
        utts.append(Utterance(uid, str(path), round(len(audio) / SOURCE_RATE, 4), text, picks[0].speaker))
        truth.append({"id": uid, "words": words})
    return utts, truth


def digits_with_pauses(recordings: Path, seconds: float, seed: int = 0, noise: float = 3e-4,
                       skip_speaker: str = HELDOUT_DEFAULT) -> tuple[np.ndarray, str]:
    """A long test recording: FSDD test recordings (0-4) of every speaker but ``skip_speaker``
    (the held-out one: these are the speakers a model trained on), drawn at random (``seed``),
    each after 0.3-1.5 s of silence, until about ``seconds``; Gaussian noise of standard
    deviation ``noise`` over it all. Returns (float32 [num_samples] at 16 kHz, the words)."""
    from asr.audio import SAMPLE_RATE, load_audio

    rng = np.random.default_rng(seed)
    names = [p for p in sorted(Path(recordings).glob("*_[0-4].wav")) if f"_{skip_speaker}_" not in p.name]
    pieces, words, total = [], [], 0
    while total < seconds * SAMPLE_RATE:
        name = names[rng.integers(len(names))]
        pieces += [np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32), load_audio(name)]
        words.append(DIGIT_WORDS[int(name.name[0])])
        total += pieces[-2].size + pieces[-1].size
    pcm = np.concatenate(pieces)
    return (pcm + rng.normal(0, noise, pcm.size)).astype(np.float32), " ".join(words)


def words_path(manifest) -> Path:
    """The word-times file beside a connected manifest: x_connected.jsonl -> x_connected.words.jsonl."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name.removesuffix(".jsonl") + WORDS_SUFFIX)


def read_word_times(manifest) -> dict[str, list[dict]]:
    """utterance id -> its words [{"word", "start", "end", "speech_start", "speech_end"}]
    from the ``.words.jsonl`` beside the connected ``manifest``."""
    with open(words_path(manifest), encoding="utf-8") as f:
        return {d["id"]: d["words"] for d in map(json.loads, filter(str.strip, f))}


def _nonspeech(count: int, rng: np.random.Generator, out_dir: Path) -> list[Utterance]:
    """Digital silence and faint white noise (-90 to -50 dBFS), 0.2-2 s, empty transcripts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    utts = []
    for n in range(count):
        samples = int(rng.uniform(0.2, 2.0) * SOURCE_RATE)
        level = 0.0 if n % 4 == 0 else 10 ** (rng.uniform(-90, -50) / 20)
        audio = rng.normal(0.0, level, samples).astype(np.float32)
        uid = f"nonspeech-{n:03d}"
        path = out_dir / f"{uid}.wav"
        sf.write(str(path), audio, SOURCE_RATE, subtype="PCM_16")
        utts.append(Utterance(uid, str(path), round(samples / SOURCE_RATE, 4), "", ""))
    return utts


def _write_part(out_dir: Path, audio_dir: Path, parts: dict[str, list[Recording]], seed: int, counts: dict) -> dict:
    """Isolated and connected manifests for each part (train/dev/test) of one split."""
    written = {}
    for p_i, (part, recs) in enumerate(parts.items()):
        write_manifest(out_dir / f"{part}.jsonl", [_utterance(r) for r in recs])
        by_speaker = defaultdict(list)
        for r in recs:
            by_speaker[r.speaker].append(r)
        connected, truth = [], []
        for s_i, (speaker, srecs) in enumerate(sorted(by_speaker.items())):
            rng = np.random.default_rng([seed, p_i, s_i])
            utts, words = _connected(srecs, counts[part], rng, audio_dir / part, f"{part}-{speaker}")
            connected += utts
            truth += words
        manifest = out_dir / f"{part}_connected.jsonl"
        write_manifest(manifest, connected)
        words_path(manifest).write_text("".join(json.dumps(t) + "\n" for t in truth), encoding="utf-8")
        written[part] = (len(recs), len(connected))
    nonspeech = _nonspeech(NONSPEECH, np.random.default_rng([seed, 99]), audio_dir / "nonspeech")
    write_manifest(out_dir / "train_nonspeech.jsonl", nonspeech)
    return written


def prepare(data_dir, out_dir, heldout_speaker: str = HELDOUT_DEFAULT, seed: int = 0, connected=None) -> dict:
    """Write the manifests described in the module docstring; returns a summary dict.

    Raises CorpusError when the recordings are missing or the held-out speaker is absent.
    Problems found by ``scan`` (odd names, incomplete speakers) are reported, not fatal."""
    recs, problems = scan(data_dir)
    speakers = sorted({r.speaker for r in recs})
    if heldout_speaker not in speakers:
        raise CorpusError(f"held-out speaker {heldout_speaker!r} not in the data (speakers: {', '.join(speakers)})")
    counts = {**CONNECTED_PER_SPEAKER, **(connected or {})}
    out_dir = Path(out_dir)
    own = {
        "train": [r for r in recs if r.index >= DEV_INDICES.stop],
        "dev": [r for r in recs if r.index in DEV_INDICES],
        "test": [r for r in recs if r.index in TEST_INDICES],
    }
    rest = [r for r in recs if r.speaker != heldout_speaker]
    heldout = {
        "train": [r for r in rest if r.index >= DEV_INDICES.stop],
        "dev": [r for r in rest if r.index in DEV_INDICES],
        "test": [r for r in recs if r.speaker == heldout_speaker],
        "test_seen": [r for r in rest if r.index in TEST_INDICES],  # last: the seeds of the others stay
    }
    summary = {
        "recordings": len(recs),
        "speakers": speakers,
        "heldout_speaker": heldout_speaker,
        "problems": problems,
        "split": _write_part(out_dir / "split", out_dir / "audio" / "split", own, seed, counts),
        "heldout": _write_part(out_dir / "heldout", out_dir / "audio" / "heldout", heldout, seed, counts),
    }
    (out_dir / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def download(dest, url: str | None = None) -> Path:
    """Download the v1.0.10 archive into ``dest`` and unpack it safely; returns the recordings
    folder. GitHub publishes no checksum for its tag archives, so what arrived is checked by
    ``scan`` instead (names, 500 recordings per speaker, readable headers)."""
    from asr.download import fetch_and_extract

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fetch_and_extract(url or ARCHIVE_URL, dest / f"fsdd-v{VERSION}.tar.gz", dest)
    recs, problems = scan(dest)
    if problems:
        raise CorpusError(f"{dest}: the download is not a complete FSDD: " + "; ".join(problems[:5]))
    return find_recordings(dest)
