"""Does a .tflite give the same results on arm64 (phones) as on x86? Checked under qemu emulation.

    # once, as root: host packages, binfmt, an arm64 Debian root and the arm64 LiteRT wheel
    # (~5 min; ~400 MB in --work plus ~400 MB of host packages)
    python benchmarks/arm64.py --setup [--work ~/.cache/asr-arm64]

    # then: run MODEL on the x86 host and in the emulated arm64 root, compare
    python benchmarks/arm64.py MODEL.tflite FILES_OR_DIRS... [--work DIR] [--limit N]
        [--out benchmarks/results/arm64.json]

For example:
    python benchmarks/arm64.py models/fsdd.tflite ../shared/data/fsdd/recordings/*_lucas_[01].wav \\
        ../shared/data/clips --out benchmarks/results/arm64.json

Each audio file is loaded on the host with ``asr.audio.load_audio`` (16 kHz float32) and run with
``asr.runtime.TFLiteModel(num_threads=1)``; the same waveforms are then run by the same
runtime code (RUNTIME_FILES of asr/ copied into the root; a streaming .tflite from ``asr export
--streaming`` runs chunk by chunk with asr.streaming.StreamingModel) with
the arm64 ai-edge-litert wheel under qemu-user, via benchmarks/arm64_worker.py. Reported per
file and in total: transcripts equal, frame-argmax agreement and max abs diff of the
log-probs. Results are not bit-identical across architectures: compare those, not bytes.
Exit status: 0 when every transcript is equal, 1 when any differs, 2 on errors.

Needs root (apt, mount, chroot) on a Debian bookworm host. --setup is idempotent: each
step is skipped when already done. It adds <host mirror> bookworm-backports to the apt
sources because qemu 7.2 (bookworm) computes WRONG int8 results (or crashes) with its
default CPU; qemu >= 10 is required, and checked before every run. Everything big lives in --work (outside the repository); a run
mounts proc and a read-only bind of /sys in the root and always unmounts them.

NOT part of CI and not a test: it is slow (emulated inference is ~50x slower than native)
and emulated speed says nothing about a phone's, so never use it for timing.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path.home() / ".cache" / "asr-arm64"  # the arm64 root and wheels, ~500 MB: never inside the repo
DEFAULT_OUT = REPO / "benchmarks" / "results" / "arm64.json"

# Host side
HOST_PACKAGES = ("binfmt-support", "debootstrap")  # any version
QEMU_PACKAGE = "qemu-user-static"
MIN_QEMU_MAJOR = 10  # qemu 7.2 gave wrong int8 results (20/50 frames off) with its default 'max' CPU; 10.0.2 verified
BACKPORTS_SOURCE = Path("/etc/apt/sources.list.d/asr-arm64-backports.sources")  # written if no backports entry exists
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")  # not mounted by default in containers
BINFMT_NAME = "qemu-aarch64"  # the registration's name
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # qemu 10 ships this (older ones: update-binfmts)

# The arm64 root
ROOT_SUITE = "bookworm"  # Debian release of the root: python 3.11, glibc 2.36 (the wheel needs >= 2.27)
ROOT_PACKAGES = ("python3", "python3-numpy")  # Debian's numpy 1.24 satisfies ai-edge-litert
LITERT = "ai-edge-litert"  # installed in the root at the host's version, unzipped onto PYTHONPATH
WHEEL_PLATFORM = "manylinux_2_27_aarch64"  # the only aarch64 tag LiteRT 2.3.0 publishes (2_17, 2014, 2_28: nothing)
PURE_DEPS = ("flatbuffers",)  # pure-Python dependencies asr.runtime.read_metadata needs besides numpy
CHROOT_LITERT = "/opt/litert"  # unzipped wheels
CHROOT_APP = "/opt/asr"  # asr/ (the runtime files), worker.py and job/ (one run's inputs and outputs)
# all that asr.runtime and asr.streaming import (asr.decoding's Decoder is not used here)
RUNTIME_FILES = ("__init__.py", "decoding.py", "runtime.py", "text.py", "windows.py", "streaming.py", "transcript.py")
WORKER = Path(__file__).resolve().with_name("arm64_worker.py")
CHROOT_ENV = {  # a clean environment: no host PYTHONPATH/VIRTUAL_ENV, and QEMU_CPU unset (empty makes qemu fail)
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
EMULATED_CPU = "max (qemu-user default, QEMU_CPU unset)"
NUM_THREADS = 1  # one interpreter thread on both sides


class Arm64Error(RuntimeError):
    """A problem the user has to fix; main() prints it as one line and exits 2."""


def say(message: str) -> None:
    print(message, flush=True)


def run(cmd, check=True, capture=False, env=None) -> subprocess.CompletedProcess:
    """Run a command (printing it unless captured); raise Arm64Error naming it when it fails."""
    cmd = [str(c) for c in cmd]
    if not capture:
        say("  $ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, text=True, env=env, stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
    except FileNotFoundError:
        raise Arm64Error(f"command not found: {cmd[0]} (run --setup)") from None
    if check and proc.returncode != 0:
        code = proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        detail = (proc.stderr or "").strip().splitlines()[-3:] if capture else []
        raise Arm64Error(f"{how}: {' '.join(cmd)}" + "".join(f"\n  {line}" for line in detail))
    return proc


def version_major(version: str) -> int:
    """'1:10.0.2+ds-1~bpo12+1' -> 10; 0 when unparsable."""
    m = re.match(r"(?:\d+:)?(\d+)", version.strip())
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------------------------
# Host: apt sources, packages, binfmt
# ---------------------------------------------------------------------------------------------

def host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise Arm64Error("/etc/os-release has no VERSION_CODENAME: this needs a Debian host")


def apt_source_entries() -> list[dict]:
    """Enabled 'deb' entries of the host's apt sources, one-line (.list) and deb822 (.sources) alike:
    [{"uri", "suites", "signed_by"}]."""
    files = []
    for place in APT_SOURCES:
        if place.is_file():
            files.append(place)
        elif place.is_dir():
            files += sorted(p for p in place.iterdir() if p.suffix in (".list", ".sources"))
    entries = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                    for uri in fields.get("uris", "").split():
                        entries.append({"uri": uri, "suites": fields.get("suites", "").split(),
                                        "signed_by": fields.get("signed-by")})
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
                    entries.append({"uri": m.group(2), "suites": [m.group(3)], "signed_by": opts.get("signed-by")})
    return entries


def debian_mirror(codename: str) -> dict:
    """The host's Debian mirror: the apt entry that serves the release itself (not -security/-updates)."""
    for entry in apt_source_entries():
        if codename in entry["suites"]:
            return entry
    raise Arm64Error(f"no apt source serves '{codename}' in /etc/apt/sources.list*: pass --mirror URL")


def installed_version(package: str) -> str | None:
    proc = run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package], check=False, capture=True)
    status, _, version = proc.stdout.partition(" ")
    return version if proc.returncode == 0 and status == "installed" else None


def candidate_version(package: str, release: str | None = None) -> str:
    cmd = ["apt-cache", "policy", package] if release is None else ["apt-cache", "-t", release, "policy", package]
    m = re.search(r"Candidate:\s*(\S+)", run(cmd, capture=True).stdout)
    return m.group(1) if m and m.group(1) != "(none)" else ""


def apt_env() -> dict:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def setup_host_packages(mirror: dict, codename: str) -> None:
    missing = [p for p in HOST_PACKAGES if installed_version(p) is None]
    qemu = installed_version(QEMU_PACKAGE)
    if not missing and qemu and version_major(qemu) >= MIN_QEMU_MAJOR:
        say(f"[skip] host packages: {', '.join(HOST_PACKAGES)}, {QEMU_PACKAGE} {qemu}")
        return
    say(f"[do] host packages: {', '.join(missing) or '(present)'}; {QEMU_PACKAGE} >= {MIN_QEMU_MAJOR} (have {qemu})")
    run(["apt-get", "update"], env=apt_env())
    if missing:
        run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=apt_env())
    release = None
    if version_major(candidate_version(QEMU_PACKAGE)) < MIN_QEMU_MAJOR:
        release = f"{codename}-backports"
        if not any(release in e["suites"] for e in apt_source_entries()):
            lines = ["Types: deb", f"URIs: {mirror['uri']}", f"Suites: {release}", "Components: main"]
            if mirror["signed_by"]:
                lines.append(f"Signed-By: {mirror['signed_by']}")
            say(f"  adding {release} from {mirror['uri']} to {BACKPORTS_SOURCE}")
            BACKPORTS_SOURCE.write_text("\n".join(lines) + "\n")
            run(["apt-get", "update"], env=apt_env())
        if version_major(candidate_version(QEMU_PACKAGE, release)) < MIN_QEMU_MAJOR:
            raise Arm64Error(f"no {QEMU_PACKAGE} >= {MIN_QEMU_MAJOR} in {release}: "
                             f"found {candidate_version(QEMU_PACKAGE, release) or 'nothing'}")
    run(["apt-get", "install", "-y", "--no-install-recommends", *(["-t", release] if release else []), QEMU_PACKAGE],
        env=apt_env())
    say(f"  {QEMU_PACKAGE} {installed_version(QEMU_PACKAGE)}")


def mount_binfmt_misc() -> None:
    if (BINFMT_DIR / "register").exists():
        say(f"[skip] binfmt_misc is mounted on {BINFMT_DIR}")
        return
    say(f"[do] mount binfmt_misc on {BINFMT_DIR}")
    run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])


def binfmt_enabled() -> bool:
    entry = BINFMT_DIR / BINFMT_NAME
    return entry.is_file() and entry.read_text().startswith("enabled")


def emulator_version(root: Path) -> str:
    """The version of the qemu the kernel actually runs for arm64 binaries (QEMU_VERSION=1 makes
    qemu-user print it and exit); '' when arm64 binaries do not run."""
    proc = run(["chroot", root, "/bin/true"], check=False, capture=True, env={**CHROOT_ENV, "QEMU_VERSION": "1"})
    m = re.search(r"version\s+(\S+(?:\s+\([^)]*\))?)", proc.stdout + proc.stderr)
    return m.group(1) if m and proc.returncode == 0 else ""


def register_binfmt(root: Path) -> None:
    """Register qemu-aarch64; re-register when the kernel still holds an old qemu (the 'F' flag
    keeps the binary that was registered, even after a package upgrade)."""
    if binfmt_enabled():
        version = emulator_version(root)
        if version_major(version) >= MIN_QEMU_MAJOR:
            say(f"[skip] binfmt {BINFMT_NAME} registered: qemu {version}")
            return
        say(f"[do] binfmt: drop the stale {BINFMT_NAME} registration (runs qemu '{version or 'nothing'}')")
        (BINFMT_DIR / BINFMT_NAME).write_text("-1")
    else:
        say(f"[do] binfmt: register {BINFMT_NAME}")
        if (BINFMT_DIR / BINFMT_NAME).exists():
            (BINFMT_DIR / BINFMT_NAME).write_text("-1")
    if BINFMT_CONF.is_file():  # qemu 10 packaging: a systemd binfmt.d line (no systemd here to load it)
        line = next(x for x in BINFMT_CONF.read_text().splitlines() if x.startswith(":"))
        say(f"  write {BINFMT_CONF.name} to {BINFMT_DIR / 'register'}")
        (BINFMT_DIR / "register").write_text(line)
    else:  # older packaging: update-binfmts' database
        run(["update-binfmts", "--enable", BINFMT_NAME])
    version = emulator_version(root)
    if version_major(version) < MIN_QEMU_MAJOR:
        raise Arm64Error(f"arm64 binaries run with qemu '{version or 'nothing'}', need >= {MIN_QEMU_MAJOR}")
    say(f"  arm64 binaries run with qemu {version}")


# ---------------------------------------------------------------------------------------------
# The arm64 root: mounts, debootstrap, packages, LiteRT
# ---------------------------------------------------------------------------------------------

def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
        if point == str(root) or point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(root: Path) -> None:
    for point in mounts_under(root):
        say(f"  unmount {point}")
        if run(["umount", point], check=False, capture=True).returncode != 0:
            run(["umount", "--lazy", point], check=False, capture=True)
    left = mounts_under(root)
    if left:
        raise Arm64Error(f"could not unmount: {', '.join(left)}")


@contextlib.contextmanager
def chroot_mounts(root: Path):
    """proc on ROOT/proc and a read-only bind of /sys on ROOT/sys (without /sys, LiteRT's cpuinfo
    fails and XNNPACK is silently skipped); everything under ROOT is unmounted on the way out."""
    unmount_all(root)  # leftovers of a killed run
    try:
        run(["mount", "-t", "proc", "proc", root / "proc"])
        run(["mount", "--bind", "/sys", root / "sys"])
        run(["mount", "-o", "remount,bind,ro", root / "sys"])
        yield
    finally:
        unmount_all(root)


def chroot(root: Path, *cmd, capture=False, extra_env=None) -> subprocess.CompletedProcess:
    return run(["chroot", root, *cmd], capture=capture, env={**CHROOT_ENV, **(extra_env or {})})


def base_state(root: Path) -> str:
    """'done', 'second-stage' (first stage finished), or 'none' (absent or a broken first stage)."""
    if (root / "debootstrap" / "debootstrap").is_file():
        return "second-stage"
    if (root / "etc" / "debian_version").is_file() and (root / "usr" / "bin" / "apt-get").is_file() \
            and not (root / "debootstrap").exists():
        return "done"
    return "none"


def setup_root_stage1(root: Path, mirror: str) -> None:
    if base_state(root) != "none":
        say(f"[skip] debootstrap first stage: {root}")
        return
    if root.exists() and any(root.iterdir()):
        say(f"  removing the incomplete root {root}")
        unmount_all(root)  # never delete through a bind mount
        shutil.rmtree(root)
    say(f"[do] debootstrap first stage: arm64 {ROOT_SUITE} minbase from {mirror} into {root}")
    root.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", ROOT_SUITE, root, mirror])


def setup_root_stage2(root: Path) -> None:
    if base_state(root) == "done":
        say("[skip] debootstrap second stage")
        return
    say("[do] debootstrap second stage (emulated, a few minutes)")
    try:
        chroot(root, "/debootstrap/debootstrap", "--second-stage")
    except Arm64Error as err:
        raise Arm64Error(f"{err}\n  see {root}/debootstrap/debootstrap.log; to start over: rm -rf {root}") from None
    finally:
        unmount_all(root)  # the second stage may leave its own /proc and /sys mounts behind


def setup_root_packages(root: Path) -> None:
    numpy = root / "usr" / "lib" / "python3" / "dist-packages" / "numpy"
    if (root / "usr" / "bin" / "python3").exists() and numpy.is_dir():
        say(f"[skip] root packages: {', '.join(ROOT_PACKAGES)}")
        return
    say(f"[do] root packages: {', '.join(ROOT_PACKAGES)} (emulated apt)")
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    with chroot_mounts(root):
        noninteractive = {"DEBIAN_FRONTEND": "noninteractive"}
        chroot(root, "apt-get", "update", extra_env=noninteractive)
        chroot(root, "apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *ROOT_PACKAGES,
               extra_env=noninteractive)  # Use-Pty=0: no /dev/pts in the root
        chroot(root, "apt-get", "clean")


def root_python(root: Path) -> str:
    """'3.11': the root's python3 version, from its /usr/bin/python3 symlink."""
    m = re.fullmatch(r"python(\d+\.\d+)", os.readlink(root / "usr" / "bin" / "python3"))
    if not m:
        raise Arm64Error(f"cannot tell the version of {root}/usr/bin/python3")
    return m.group(1)


def host_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise Arm64Error(f"{package} is not installed in this Python ({sys.executable})") from None


def dist_info(site: Path, package: str) -> Path:
    return site / f"{package.replace('-', '_')}-{host_version(package)}.dist-info"


def setup_litert(root: Path, work: Path) -> None:
    """The arm64 LiteRT wheel (and its pure-Python deps) at the host's versions, unzipped into ROOT/opt/litert."""
    site = root / CHROOT_LITERT.lstrip("/")
    packages = (LITERT, *PURE_DEPS)
    if all(dist_info(site, p).is_dir() for p in packages):
        say(f"[skip] {', '.join(f'{p} {host_version(p)}' for p in packages)} in {site}")
        return
    pyver = root_python(root)
    wheels = work / "wheels"
    say(f"[do] {', '.join(f'{p}=={host_version(p)}' for p in packages)} for arm64 cp{pyver} into {site}")
    if site.exists():
        shutil.rmtree(site)  # another version: start clean
    site.mkdir(parents=True)
    for package in packages:
        name = package.replace("-", "_")
        pattern = f"{name}-{host_version(package)}-*.whl"
        found = [w for w in wheels.glob(pattern) if w.name.endswith(("-any.whl", f"{WHEEL_PLATFORM}.whl"))]
        if not found:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--platform", WHEEL_PLATFORM, "--python-version", pyver, "--implementation", "cp",
                 f"{package}=={host_version(package)}", "-d", wheels])
            found = [w for w in wheels.glob(pattern) if w.name.endswith(("-any.whl", f"{WHEEL_PLATFORM}.whl"))]
            if not found:
                raise Arm64Error(f"pip found no {WHEEL_PLATFORM} or pure wheel of {package}=={host_version(package)}")
        say(f"  unzip {found[0].name}")
        with zipfile.ZipFile(found[0]) as wheel:
            wheel.extractall(site)


def setup(work: Path, mirror_override: str | None) -> None:
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise Arm64Error(f"--setup expects an x86_64 Linux host, not {sys.platform}/{os.uname().machine}")
    codename = host_codename()
    mirror = debian_mirror(codename) if not mirror_override else {"uri": mirror_override, "signed_by": None}
    root = work / "root"
    setup_host_packages(mirror, codename)
    mount_binfmt_misc()
    setup_root_stage1(root, mirror["uri"])
    register_binfmt(root)  # needs an arm64 /bin/true to check which qemu runs: the first stage provides it
    setup_root_stage2(root)
    setup_root_packages(root)
    setup_litert(root, work)


def check_ready(root: Path) -> str:
    """Raise Arm64Error unless --setup has completed; return the qemu version arm64 binaries run with."""
    problems = []
    if base_state(root) != "done":
        problems.append(f"no complete arm64 root at {root}")
    elif not (root / "usr" / "bin" / "python3").exists():
        problems.append("no python3 in the root")
    elif not all(dist_info(root / CHROOT_LITERT.lstrip("/"), p).is_dir() for p in (LITERT, *PURE_DEPS)):
        problems.append(f"no {LITERT} {host_version(LITERT)} in {root}{CHROOT_LITERT}")
    if not binfmt_enabled():
        problems.append(f"binfmt {BINFMT_NAME} is not registered (e.g. after a reboot)")
    if problems:
        raise Arm64Error("; ".join(problems) + ": run 'python benchmarks/arm64.py --setup' first")
    version = emulator_version(root)
    if version_major(version) < MIN_QEMU_MAJOR:
        raise Arm64Error(f"arm64 binaries run with qemu '{version or 'nothing'}', need >= {MIN_QEMU_MAJOR} "
                         "(older qemu gives wrong int8 results): run --setup")
    return version


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------

def collect_inputs(paths: list[Path], limit: int | None) -> list[Path]:
    """Audio files named, and those below named directories (sorted), the first ``limit`` of them."""
    from asr.audio import AUDIO_EXTENSIONS

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        elif path.exists():
            files.append(path)
        else:
            raise Arm64Error(f"{path}: no such file or directory")
    if not files:
        raise Arm64Error("no audio files among the inputs")
    return files[:limit] if limit else files


def run_x86(model_path: Path, files: list[Path]):
    """Waveforms, log-probs and transcripts on the host, with the same runtime as the app."""
    from asr.audio import AudioError, load_audio
    from asr.runtime import TFLiteModel, decode_text, is_streaming, read_metadata
    from asr.streaming import StreamingModel

    kind = StreamingModel if is_streaming(read_metadata(model_path)) else TFLiteModel
    model = kind(model_path, num_threads=NUM_THREADS)
    waves, log_probs, texts = [], [], []
    for path in files:
        try:
            waves.append(load_audio(path, model.sample_rate))
        except AudioError as err:
            raise Arm64Error(f"{path}: {err}") from None
        log_probs.append(model.log_probs(waves[-1]))
        texts.append(decode_text(log_probs[-1], model.symbols, model.blank, model.word_boundary))
    return model, waves, log_probs, texts


def prepare_job(root: Path, model_path: Path, names: list[str], waves, log_probs) -> Path:
    """ROOT/opt/asr: the runtime files, the worker, and job/ with the model, waveforms and x86 log-probs."""
    import numpy as np

    app = root / CHROOT_APP.lstrip("/")
    (app / "asr").mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copyfile(REPO / "asr" / name, app / "asr" / name)
    shutil.copyfile(WORKER, app / "worker.py")
    job = app / "job"
    if job.exists():
        shutil.rmtree(job)
    job.mkdir()
    shutil.copyfile(model_path, job / "model.tflite")
    (job / "files.json").write_text(json.dumps(names))
    arrays = {f"pcm_{i:04d}": w for i, w in enumerate(waves)}
    arrays.update({f"x86_{i:04d}": lp for i, lp in enumerate(log_probs)})
    np.savez(job / "input.npz", **arrays)
    return job


def run_arm64(root: Path, job: Path, count: int):
    """Run the worker in the emulated root; return (log-probs list, transcripts, environment)."""
    import numpy as np

    for name in ("output.npz", "output.json"):
        (job / name).unlink(missing_ok=True)
    inside = "/" + str(job.relative_to(root))
    with chroot_mounts(root):
        chroot(root, "env", f"PYTHONPATH={CHROOT_LITERT}:{CHROOT_APP}", "python3", f"{CHROOT_APP}/worker.py", inside)
    result = json.loads((job / "output.json").read_text())
    with np.load(job / "output.npz") as data:
        log_probs = [data[f"arm_{i:04d}"] for i in range(count)]
    return log_probs, result["transcripts"], result["environment"]


def compare(names, x86_lp, x86_text, arm_lp, arm_text) -> tuple[list[dict], dict]:
    import numpy as np

    rows = []
    for name, a, b, ta, tb in zip(names, x86_lp, arm_lp, x86_text, arm_text):
        same_shape = a.shape == b.shape
        rows.append({
            "file": name,
            "frames": int(a.shape[0]),
            "argmax_equal": int((a.argmax(-1) == b.argmax(-1)).sum()) if same_shape else 0,
            "max_abs_diff": float(np.abs(a - b).max()) if same_shape else float("inf"),
            "same_shape": same_shape,
            "transcripts_equal": ta == tb,
            "x86": ta,
            "arm64": tb,
        })
    frames = sum(r["frames"] for r in rows)
    agree = sum(r["argmax_equal"] for r in rows)
    summary = {
        "files": len(rows),
        "equal_transcripts": sum(r["transcripts_equal"] for r in rows),
        "frames": frames,
        "frames_argmax_equal": agree,
        "argmax_agreement": agree / frames if frames else 1.0,
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
    }
    return rows, summary


def print_table(rows: list[dict], summary: dict) -> None:
    width = max(len(r["file"]) for r in rows)
    say(f"\n{'file':<{width}}  frames  argmax equal  max |diff|  same text  transcript (x86 | arm64 if different)")
    for r in rows:
        text = repr(r["x86"]) if r["transcripts_equal"] else f"{r['x86']!r} | {r['arm64']!r}"
        say(f"{r['file']:<{width}}  {r['frames']:>6}  {r['argmax_equal']:>5}/{r['frames']:<6}  "
            f"{r['max_abs_diff']:10.2e}  {'yes' if r['transcripts_equal'] else 'NO':>9}  {text}")
    say(f"\n{summary['equal_transcripts']}/{summary['files']} transcripts equal, "
        f"argmax agreement {summary['frames_argmax_equal']}/{summary['frames']} "
        f"({100 * summary['argmax_agreement']:.2f}%), max abs diff {summary['max_abs_diff']:.2e}")


def display_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def benchmark(args) -> int:
    from asr.report import machine
    from asr.runtime import ModelFileError, read_metadata

    started = time.perf_counter()
    root = args.work / "root"
    model_path = args.model.resolve()
    try:
        meta = read_metadata(model_path)
    except ModelFileError as err:
        raise Arm64Error(str(err)) from None
    files = collect_inputs(args.inputs, args.limit)
    qemu = check_ready(root)
    names = [display_name(p) for p in files]

    say(f"x86: {model_path.name} on {len(files)} files (num_threads={NUM_THREADS})")
    t = time.perf_counter()
    _, waves, x86_lp, x86_text = run_x86(model_path, files)
    x86_seconds = time.perf_counter() - t

    say(f"arm64: qemu {qemu}, CPU {EMULATED_CPU}")
    job = prepare_job(root, model_path, names, waves, x86_lp)
    t = time.perf_counter()
    arm_lp, arm_text, arm_env = run_arm64(root, job, len(files))
    arm_seconds = time.perf_counter() - t

    rows, summary = compare(names, x86_lp, x86_text, arm_lp, arm_text)
    print_table(rows, summary)
    audio_seconds = sum(len(w) for w in waves) / meta["input"]["sample_rate"]
    result = {
        **summary,
        "model": str(model_path),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "quantization": meta.get("quantization"),
        "audio_seconds": round(audio_seconds, 2),
        "num_threads": NUM_THREADS,
        "qemu_version": qemu,
        "qemu_package": installed_version(QEMU_PACKAGE),
        "emulated_cpu": EMULATED_CPU,
        "arm64": arm_env,
        "host_machine": machine(),
        "x86": {"ai_edge_litert": host_version(LITERT), "numpy": host_version("numpy")},
        "wall_seconds": {  # informational only: emulated speed says nothing about a phone's
            "x86": round(x86_seconds, 2),
            "arm64_emulated_incl_startup": round(arm_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "per_file": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0 if summary["equal_transcripts"] == summary["files"] else 1


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Not part of CI; ~50x slower than native; never use it for timing.")
    parser.add_argument("model", type=Path, nargs="?", help="a .tflite made by 'asr export'")
    parser.add_argument("inputs", type=Path, nargs="*", help="audio files, or directories searched for them")
    parser.add_argument("--setup", action="store_true", help="prepare the host and the arm64 root (idempotent)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work directory (default {DEFAULT_WORK})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    parser.add_argument("--limit", type=int, help="use only the first N files")
    parser.add_argument("--mirror", help="Debian mirror URL for --setup (default: the host's, from its apt sources)")
    args = parser.parse_args(argv)
    if not args.setup and args.model is None:
        parser.error("give MODEL.tflite and audio FILES_OR_DIRS, or --setup")
    if args.model is not None and not args.inputs:
        parser.error("give at least one audio file or directory after MODEL.tflite")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    args.work = args.work.expanduser().resolve()
    return args


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that unmount


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("error: run as root (apt, mount and chroot need it)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    args.work.mkdir(parents=True, exist_ok=True)
    with open(args.work / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"error: another benchmarks/arm64.py is using {args.work}", file=sys.stderr)
            return 2
        try:
            if args.setup:
                t = time.perf_counter()
                setup(args.work, args.mirror)
                say(f"setup done in {time.perf_counter() - t:.0f} s ({args.work})")
            if args.model is not None:
                return benchmark(args)
            return 0
        except Arm64Error as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
