"""JSONL manifests: the contract between data preparation and training.

One JSON object per line: {"id", "audio", "duration", "text", "speaker"}, plus "gender" where
the corpus gives one (written only when non-empty, so other manifests are unchanged). ``audio``
is a path, absolute or relative to the manifest's folder; ``duration`` is in seconds.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

REQUIRED = ("id", "audio", "duration", "text")


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str
    duration: float
    text: str
    speaker: str = ""
    gender: str = ""  # e.g. "F" / "M" from the corpus's speaker list; "" when unknown

    def to_json(self, relative_to: Path | None = None) -> str:
        d = asdict(self)
        if not d["gender"]:
            del d["gender"]  # optional key: written only when known
        if relative_to is not None:
            d["audio"] = os.path.relpath(self.audio, relative_to)
        return json.dumps(d, ensure_ascii=False)


def read_manifest(path: str | os.PathLike, check_audio: bool = False) -> list[Utterance]:
    """Read a manifest. Relative audio paths resolve against the manifest's folder.

    Raises ManifestError naming ``path:line`` for malformed JSON, missing keys, duplicate
    ids, and (with check_audio) audio files that do not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.resolve().parent
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(d, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
            missing = [k for k in REQUIRED if k not in d]
            if missing:
                raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}")
            try:
                utt = _utterance(d, base)
            except (TypeError, ValueError) as err:
                raise ManifestError(f"{where}: bad value ({err})") from None
            if utt.id in seen:
                raise ManifestError(f"{where}: duplicate id {utt.id!r}")
            seen.add(utt.id)
            if check_audio and not Path(utt.audio).is_file():
                raise ManifestError(f"{where}: audio file not found: {utt.audio} (utterance {utt.id!r})")
            out.append(utt)
    return out


def _utterance(d: dict, base: Path) -> Utterance:
    """One parsed line -> Utterance; raises TypeError/ValueError on values of the wrong type."""
    for key in ("id", "audio", "text"):
        if not isinstance(d[key], str):
            raise TypeError(f"{key!r} must be a string, got {type(d[key]).__name__}")
    duration = float(d["duration"])
    if not duration >= 0:
        raise ValueError(f"duration must be >= 0, got {d['duration']!r}")
    audio = Path(d["audio"])
    audio = audio if audio.is_absolute() else Path(os.path.normpath(base / audio))  # no "a/../b"
    return Utterance(d["id"], str(audio), duration, d["text"], str(d.get("speaker") or ""),
                     str(d.get("gender") or ""))


def write_manifest(path: str | os.PathLike, utterances, relative: bool = True) -> None:
    """Write utterances as JSONL atomically; audio paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    base = path.resolve().parent if relative else None
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utterances:
            f.write(utt.to_json(base) + "\n")
    os.replace(tmp, path)
