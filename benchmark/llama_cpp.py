"""Build and run llama.cpp's `llama-server`, the peer the benchmarks compare against.

The sources come from the llama-cpp-python sdist (which vendors llama.cpp), fetched with
pip; the build goes to ~/.cache/sglang-bench/llama.cpp/, never into this repository.

    python benchmark/llama_cpp.py build     # ~10 min on 2 cores; prints the binary path
    python benchmark/llama_cpp.py path      # prints the binary path if built
    python benchmark/llama_cpp.py serve --port 8080 -- -np 4   # runs it on the default GGUF
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import BENCH_CACHE, ServerProcess, default_gguf_path  # noqa: E402

LLAMA_CACHE = BENCH_CACHE / "llama.cpp"
SDIST_DIR = LLAMA_CACHE / "sdist"
SRC_DIR = LLAMA_CACHE / "src"
BUILD_DIR = LLAMA_CACHE / "build"
BINARY = BUILD_DIR / "bin" / "llama-server"
# Every llama.cpp tool the benchmarks run: the server, and the bench / perplexity tools.
TOOLS = ("llama-server", "llama-bench", "llama-batched-bench", "llama-perplexity")


def tool_path(name: str = "llama-server") -> Path | None:
    """The built llama.cpp tool `name`, or None when it is not built yet."""
    path = BUILD_DIR / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def binary_path() -> Path | None:
    """The built llama-server, or None when it is not built yet."""
    return tool_path("llama-server")


@functools.lru_cache(maxsize=None)
def repacking_crashes() -> bool:
    """Whether llama.cpp's weight repacking dies on this machine (its AMX path segfaults on some
    virtual machines): probed once with a tiny llama-bench run. Where it does, every tool runs
    with repacking off, and the benchmarks say so."""
    binary = tool_path("llama-bench")
    if binary is None:
        return False
    probe = [str(binary), "-m", default_gguf_path(), "-p", "8", "-n", "0", "-r", "1"]
    crashed = subprocess.run(probe, capture_output=True, text=True).returncode < 0
    if crashed:
        print("# llama.cpp: weight repacking crashes here; its tools run without it", flush=True)
    return crashed


def run_tool(cmd: list[str], no_repack: list[str]) -> subprocess.CompletedProcess:
    """Run a llama.cpp tool, capturing its output; `no_repack` is the tool's flag that turns
    weight repacking off, added where repacking crashes (repacking_crashes)."""
    if repacking_crashes():
        cmd = [*cmd, *no_repack]
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    """Run a build step at the lowest CPU priority so the machine stays usable."""
    print("+", " ".join(cmd), flush=True)
    subprocess.run(["nice", "-n", "19", *cmd], cwd=cwd, check=True)


def _fetch_sdist() -> Path:
    """Download the llama-cpp-python source distribution (once)."""
    SDIST_DIR.mkdir(parents=True, exist_ok=True)
    found = sorted(SDIST_DIR.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "llama-cpp-python",
                "-d",
                str(SDIST_DIR),
            ]
        )
        found = sorted(SDIST_DIR.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no llama_cpp_python sdist in {SDIST_DIR}")
    return found[-1]


def _unpack(sdist: Path) -> Path:
    """Unpack the sdist and return its vendored llama.cpp source folder."""
    marker = SRC_DIR / ".unpacked"
    if not marker.is_file():
        shutil.rmtree(SRC_DIR, ignore_errors=True)
        SRC_DIR.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(SRC_DIR, filter="data")
        marker.write_text(sdist.name)
    tops = [p for p in SRC_DIR.iterdir() if p.is_dir()]
    vendored = tops[0] / "vendor" / "llama.cpp"
    if not (vendored / "CMakeLists.txt").is_file():
        raise RuntimeError(f"no vendored llama.cpp sources at {vendored}")
    return vendored


def build(jobs: int = 2) -> Path:
    """Build llama-server and the bench tools once; later calls return the existing server."""
    existing = binary_path()
    if existing and all(tool_path(t) for t in TOOLS):
        return existing
    src = _unpack(_fetch_sdist())
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(BUILD_DIR),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DGGML_NATIVE=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=ON",
            "-DBUILD_SHARED_LIBS=OFF",
        ]
    )
    _run(
        [
            "cmake",
            "--build",
            str(BUILD_DIR),
            "--config",
            "Release",
            "--target",
            *TOOLS,
            "-j",
            str(jobs),
        ]
    )
    built = binary_path()
    if built is None:
        raise RuntimeError(f"build finished but {BINARY} is missing")
    return built


def start_llama_server(
    port: int,
    extra_args: list[str],
    model: str | None = None,
    log_path: str | None = None,
    timeout: float = 300.0,
) -> ServerProcess:
    """Start llama-server on `port` and wait until its /health answers 200."""
    binary = binary_path()
    if binary is None:
        raise SystemExit("llama-server is not built: run `python benchmark/llama_cpp.py build`")
    cmd = [
        str(binary),
        "-m",
        model or default_gguf_path(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    if repacking_crashes():
        cmd.append("--no-repack")
    return ServerProcess.start(cmd, f"http://127.0.0.1:{port}", log_path=log_path, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="build llama-server and the bench tools (idempotent)")
    p_build.add_argument("--jobs", type=int, default=2)
    sub.add_parser("path", help="print the binary path if built")
    p_serve = sub.add_parser("serve", help="run llama-server on the default GGUF")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("extra", nargs="*", help="arguments passed to llama-server (after --)")
    args = parser.parse_args()
    if args.cmd == "build":
        print(build(args.jobs))
    elif args.cmd == "path":
        path = binary_path()
        if path is None:
            raise SystemExit("not built")
        print(path)
    else:
        server = start_llama_server(args.port, args.extra)
        print(f"llama-server at {server.url} (Ctrl-C stops it)")
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            server.stop()


if __name__ == "__main__":
    main()
