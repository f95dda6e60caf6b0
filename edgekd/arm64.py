"""An arm64 sysroot on an x86 machine, to run exported artifacts under emulation.

`edgekd export --verify arm64` runs each ONNX/.ort artifact with the aarch64 build of
onnxruntime under `qemu-aarch64` and compares its outputs with the x86 run. What that
needs is built here once, from the package registries only, and cached:

- `qemu-aarch64` from Debian 13's `qemu-user` (10.0, static binaries; Debian 12's 7.2
  crashes when it imports onnxruntime 1.28 or later for aarch64);
- Debian 12's arm64 Python 3.11 and the libraries it links, unpacked with `dpkg-deb -x`
  into a folder of their own (arm64 Python cannot be installed beside the host's);
- the `manylinux_2_28_aarch64` wheels of the host's own onnxruntime version and numpy (and of
  onnxruntime-extensions where the host has it, for models that take strings).

Every download is checked: the Release file's signature against Debian's archive keyring
(gpgv), the package index against the Release file's SHA-256, each .deb against the index.
The finished sysroot records a digest of every file in it, and a cached one is trusted
only while that digest still holds. Emulated timing says nothing about a phone: only
outputs are compared here.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgekd.config import cache_dir
from edgekd.errors import UserError, exclusive

MIRROR = os.environ.get("EDGEKD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PYTHON_SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36 (manylinux_2_28 wheels run)
PYTHON_VERSION = "3.11"
PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")  # onnxruntime links libstdc++
QEMU_SUITE = "trixie"  # Debian 13: qemu 10.0
QEMU_PACKAGE = "qemu-user"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# Two core models: an older one and a recent one with the dot-product and int8-matmul
# instructions. ONNX Runtime picks other int8 kernels on the newer cores, as phones do.
CORES = ("cortex-a72", "neoverse-v1")
STAMP = "sysroot.json"
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Sysroot:
    """A verified arm64 sysroot: qemu, the arm64 Python and the wheels beside it."""

    root: Path
    qemu: Path
    python: Path  # the arm64 interpreter
    site: Path  # folder of the aarch64 wheels, put on PYTHONPATH
    versions: dict

    def command(self, *args: str) -> list[str]:
        return [str(self.qemu), str(self.python), *args]

    def environment(self, core: str, home: Path) -> dict:
        """`home`: a throwaway HOME, since onnxruntime writes a device id under ~/.cache."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QEMU_LD_PREFIX": str(self.root),
                "QEMU_CPU": core, "PYTHONPATH": str(self.site), "PYTHONNOUSERSITE": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "HOME": str(home)}


def onnxruntime_version() -> str:
    return metadata.version("onnxruntime")


def sysroot(*, log=print) -> Sysroot:
    """The cached sysroot for this host's onnxruntime version, built first if need be."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise UserError(f"--verify arm64 emulates arm64 on an x86_64 machine; this one is "
                        f"{platform.machine()}: run the artifacts natively instead")
    wheels = {"onnxruntime": onnxruntime_version(), "numpy": metadata.version("numpy")}
    try:  # the tokenizer operators, for the models that take strings (export --with-tokenizer)
        wheels["onnxruntime-extensions"] = metadata.version("onnxruntime-extensions")
    except metadata.PackageNotFoundError:
        pass
    key = hashlib.sha256(json.dumps([LAYOUT_VERSION, PYTHON_SUITE, PYTHON_PACKAGES, QEMU_SUITE, wheels],
                                    sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "arm64" / key
    with exclusive(folder, wait=True, what="arm64 sysroot"):  # a second process waits, then reuses it
        if (folder / STAMP).is_file():
            found = _verified(folder)
            if found is not None:
                return found
            log(f"arm64 sysroot {folder} does not match its record; building it again")
        log(f"building the arm64 sysroot in {folder} (once; about 250 MB from Debian and PyPI)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        # not errors.atomic_dir: that gives files plain permissions, and these are programs
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
        try:
            versions = _build(staging, wheels, log=log)
            (staging / STAMP).write_text(json.dumps(
                {"versions": versions, "digest": _tree_digest(staging)}, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    found = _verified(folder)
    if found is None:  # pragma: no cover - the digest was just written from this tree
        raise UserError(f"arm64 sysroot {folder} changed while it was built; run again")
    return found


def _verified(folder: Path) -> Sysroot | None:
    try:
        record = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if record.get("digest") != _tree_digest(folder):
        return None
    return Sysroot(root=folder / "root", qemu=folder / "qemu" / "qemu-aarch64",
                   python=folder / "root" / "usr" / "bin" / f"python{PYTHON_VERSION}", site=folder / "site",
                   versions=record["versions"])


def _tree_digest(folder: Path) -> str:
    """SHA-256 over every file's relative path, mode and bytes (links by their target)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if relative == STAMP:
            continue
        if path.is_symlink():
            digest.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {relative} {path.stat().st_mode & 0o777:o} ".encode())
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ building

def _build(staging: Path, wheels: dict, *, log) -> dict:
    for tool in ("dpkg-deb", "gpgv"):
        if shutil.which(tool) is None:
            raise UserError(f"building the arm64 sysroot needs {tool}; install Debian's "
                            f"{'dpkg' if tool == 'dpkg-deb' else 'gpgv'} package")
    if not KEYRING.is_file():
        raise UserError(f"building the arm64 sysroot needs Debian's archive keyring {KEYRING}; "
                        "install the debian-archive-keyring package")
    downloads = staging / "downloads"
    downloads.mkdir()
    qemu_index = _package_index(QEMU_SUITE, "amd64", downloads)
    (qemu,) = _closure(qemu_index, [QEMU_PACKAGE], follow=False)
    log(f"  qemu: {qemu['Package']} {qemu['Version']} (Debian {QEMU_SUITE})")
    unpacked = downloads / "qemu"
    unpack_deb(fetch_deb(qemu, downloads), unpacked)
    (staging / "qemu").mkdir()
    shutil.move(unpacked / "usr" / "bin" / "qemu-aarch64", staging / "qemu" / "qemu-aarch64")
    python_index = _package_index(PYTHON_SUITE, "arm64", downloads)
    packages = _closure(python_index, list(PYTHON_PACKAGES), follow=True)
    log(f"  arm64 Python {PYTHON_VERSION}: {len(packages)} packages (Debian {PYTHON_SUITE})")
    for package in packages:
        unpack_deb(fetch_deb(package, downloads), staging / "root")
    log(f"  aarch64 wheels: {', '.join(f'{n} {v}' for n, v in wheels.items())}")
    _install_wheels(wheels, staging / "site", downloads)
    shutil.rmtree(downloads)
    return {"qemu": qemu["Version"], "python": next(p["Version"] for p in packages
                                                    if p["Package"] == PYTHON_PACKAGES[0]),
            **wheels}


def _download(url: str, destination: Path) -> Path:
    try:
        with urllib.request.urlopen(url, timeout=120) as response, destination.open("wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as error:
        raise UserError(f"cannot download {url}: {error}; this needs Debian's archive "
                        "(set EDGEKD_DEBIAN_MIRROR to a reachable mirror)") from error
    return destination


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _package_index(suite: str, arch: str, downloads: Path) -> dict[str, dict]:
    """Debian's `main` package index for suite/arch, verified from the signed InRelease."""
    release = _download(f"{MIRROR}/dists/{suite}/InRelease", downloads / f"{suite}.InRelease")
    checked = subprocess.run(["gpgv", "--keyring", str(KEYRING), str(release)],
                             capture_output=True, text=True)
    if checked.returncode != 0:
        raise UserError(f"Debian's {suite} Release file does not carry a valid signature from "
                        f"{KEYRING}; update the debian-archive-keyring package")
    name = f"main/binary-{arch}/Packages.xz"
    expected = _release_sha256(release.read_text(errors="replace"), name)
    index = _download(f"{MIRROR}/dists/{suite}/{name}", downloads / f"{suite}-{arch}.Packages.xz")
    if _sha256(index) != expected:
        raise UserError(f"Debian's {suite} {name} does not match its signed Release file; "
                        "the mirror is out of step, try again later or set EDGEKD_DEBIAN_MIRROR")
    return parse_packages(lzma.decompress(index.read_bytes()).decode("utf-8", errors="replace"))


def _release_sha256(release: str, name: str) -> str:
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
        elif in_sha256 and line.split()[-1] == name:
            return line.split()[0]
    raise UserError(f"Debian's Release file does not list {name}")


def parse_packages(text: str) -> dict[str, dict]:
    """A Debian Packages file as {package name: its fields}."""
    packages = {}
    for stanza in text.split("\n\n"):
        fields, last = {}, None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages


def _closure(index: dict[str, dict], roots: list[str], *, follow: bool) -> list[dict]:
    """The packages `roots` need: each root, and with `follow` its Depends and Pre-Depends,
    recursively (the first alternative the index has; version limits are not checked, as
    one suite's index holds one version of each package)."""
    chosen: dict[str, dict] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in chosen:
            continue
        if name not in index:
            raise UserError(f"Debian's index has no package {name}")
        chosen[name] = index[name]
        if not follow:
            continue
        for field in ("Pre-Depends", "Depends"):
            for clause in filter(None, (c.strip() for c in index[name].get(field, "").split(","))):
                options = [option.split("(")[0].split(":")[0].strip() for option in clause.split("|")]
                present = [option for option in options if option in index]
                if present:  # a clause only virtual packages meet is left out (media-types, ...)
                    pending.append(present[0])
    return [chosen[name] for name in sorted(chosen)]


def fetch_deb(package: dict, downloads: Path) -> Path:
    """A .deb from Debian's pool, checked against the SHA-256 its index (`package`) gives."""
    path = _download(f"{MIRROR}/{package['Filename']}", downloads / Path(package["Filename"]).name)
    if _sha256(path) != package["SHA256"]:
        raise UserError(f"{path.name} does not match Debian's index; the mirror is out of step, "
                        "try again later or set EDGEKD_DEBIAN_MIRROR")
    return path


def unpack_deb(deb: Path, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"dpkg-deb cannot unpack {deb.name}: {done.stderr.strip()[:200]}")


def _install_wheels(wheels: dict, site: Path, downloads: Path) -> None:
    """The aarch64 wheels, asked for by platform explicitly (else pip picks an old one)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-warn-script-location", "--target", str(site), "--only-binary=:all:",
               "--platform", WHEEL_PLATFORM, "--python-version", PYTHON_VERSION,
               "--implementation", "cp", "--abi", f"cp{PYTHON_VERSION.replace('.', '')}",
               "--cache-dir", str(downloads / "pip"),
               *(f"{name}=={version}" for name, version in wheels.items())]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UserError(f"pip cannot fetch the {WHEEL_PLATFORM} wheels of "
                        f"{', '.join(f'{n}=={v}' for n, v in wheels.items())}: {tail[:200]}")


def run_emulated(root: Sysroot, core: str, args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    """Run the arm64 Python with `args` on the emulated `core`."""
    try:
        with tempfile.TemporaryDirectory(prefix="edgekd-arm64-home-") as home:
            return subprocess.run(root.command(*args), env=root.environment(core, Path(home)),
                                  capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise UserError(f"the arm64 run on {core} took over {timeout:.0f} s; pass fewer "
                        "--data rows to --verify arm64") from error


def probe(root: Sysroot, core: str) -> str:
    """The onnxruntime version the emulated Python imports: a check that the sysroot runs."""
    done = run_emulated(root, core, ["-c", "import platform, onnxruntime; "
                                          "print(platform.machine(), onnxruntime.__version__)"],
                        timeout=300)
    if done.returncode != 0:
        raise UserError(f"the arm64 Python cannot import onnxruntime under qemu ({core}): "
                        f"{(done.stderr.strip().splitlines() or ['exit ' + str(done.returncode)])[-1][:200]}")
    return done.stdout.strip()


def _main() -> None:  # python -m edgekd.arm64: build (or check) the sysroot, then probe it
    root = sysroot()
    for core in CORES:
        print(f"{core}: {probe(root, core)}")
    print(json.dumps(root.versions))


if __name__ == "__main__":
    _main()
