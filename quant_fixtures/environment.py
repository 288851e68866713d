"""The environment a number was measured in: package versions, accelerator, CPU and its ISA.

The same code gives different numbers in different environments (bitsandbytes INT8 on the CPU
moves with the instruction set the kernels pick), so every stored result records a fingerprint,
keys include the parts that change numbers, and a comparison across environments says so.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

from quant_fixtures.json_types import JsonObject, JsonValue

PACKAGES = ("torch", "transformers", "bitsandbytes", "accelerate", "datasets", "safetensors", "gguf", "pytest")
# CPU features the kernels choose between (torch/oneDNN/MKL matmuls, bitsandbytes' CPU ops).
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# Environment switches that restrict those choices (ATen's dispatch, oneDNN, MKL).
ISA_SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def package_versions() -> JsonObject:
    versions: JsonObject = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; platform.processor() elsewhere."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    name, flags = platform.processor() or platform.machine(), frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name, flags


def _bitsandbytes_cpu_paths() -> JsonObject:
    """Which CPU kernels bitsandbytes takes here: int8 matmul through torch._int_mm only when ATen
    dispatches AVX512, NF4 in bfloat16 where its own library reports AVX512-BF16."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    try:
        from bitsandbytes.functional import has_avx512bf16

        bf16 = bool(has_avx512bf16())
    except Exception:  # bitsandbytes missing or its library failed to load
        bf16 = None
    return {"int8_matmul": "torch._int_mm" if capability == "AVX512" else "float32 matmul", "avx512bf16": bf16}


def _nvidia_driver() -> str | None:
    try:
        first = open("/proc/driver/nvidia/version", encoding="utf-8").readline()
    except OSError:
        return None
    parts = first.split("Kernel Module")
    return parts[1].split()[0] if len(parts) > 1 and parts[1].split() else first.strip() or None


def fingerprint(device: str) -> JsonObject:
    """Everything recorded about where a number was measured (for reports and messages)."""
    import torch

    from quant_fixtures.attention_kernels import ATTENTION_KERNELS

    cpu_name, flags = _cpuinfo()
    env: JsonObject = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device,
        "device_type": device.split(":")[0],
        "cpu": {
            "model": cpu_name,
            "isa": [f for f in sorted(ISA_FLAGS) if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "switches": {k: os.environ[k] for k in ISA_SWITCHES if os.environ.get(k)},
            "bitsandbytes": _bitsandbytes_cpu_paths(),
        },
    }
    if device.startswith("cuda"):
        index = torch.device(device)
        major, minor = torch.cuda.get_device_capability(index)
        gpu_name = torch.cuda.get_device_name(index)
        env["gpu"] = {
            "name": gpu_name,
            "capability": f"{major}.{minor}",
            "cuda": torch.version.cuda,
            "driver": _nvidia_driver(),
            "attention": ATTENTION_KERNELS,
        }
        env["device_name"], env["cuda"] = gpu_name, torch.version.cuda
    else:
        env["device_name"] = cpu_name
    return env


def _table(record: JsonObject, key: str) -> JsonObject:
    """``record[key]``, a JSON object (a fingerprint's nested record); KeyError where it is missing."""
    value = record[key]
    if not isinstance(value, dict):
        raise TypeError(f"fingerprint field {key!r}: expected an object, got {value!r}")
    return value


def _strings(value: JsonValue) -> list[str]:
    """A fingerprint's list of names (the ISA features) as strings."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list of names, got {value!r}")
    return [str(v) for v in value]


def numerics_key(env: JsonObject, packages: tuple[str, ...] = ("torch", "transformers")) -> JsonObject:
    """The parts of a fingerprint that change the numbers of the named packages' computations:
    their versions, the device type and, on CUDA, the GPU and CUDA version; on the CPU, the kernels'
    instruction set (ATen's capability, the ISA features and any restricting switch)."""
    versions = _table(env, "packages")
    key: JsonObject = {"device_type": env["device_type"], **{name: versions.get(name) for name in packages}}
    if env["device_type"] == "cuda":
        gpu = _table(env, "gpu")
        key.update(gpu=gpu["name"], capability=gpu["capability"], cuda=gpu["cuda"], attention=gpu.get("attention"))
    else:
        cpu = _table(env, "cpu")
        key.update(
            cpu_capability=cpu["torch_capability"],
            cpu_isa=",".join(_strings(cpu["isa"])),
            cpu_switches=",".join(f"{k}={v}" for k, v in sorted(_table(cpu, "switches").items())),
        )
    return key


def describe(env: JsonObject) -> str:
    """A short phrase: 'torch 2.13.0, transformers 5.24.0, bitsandbytes 0.50.2 on a CPU with AVX512, AMX'."""
    versions = _table(env, "packages")
    packages = ", ".join(f"{k} {versions.get(k)}" for k in ("torch", "transformers", "bitsandbytes"))
    if env.get("device_type") == "cuda" and env.get("gpu"):
        gpu = _table(env, "gpu")
        where = f"{gpu['name']} (CUDA {gpu['cuda']}, driver {gpu['driver']})"
    else:
        cpu = _table(env, "cpu") if "cpu" in env else {}
        isa = set(_strings(cpu.get("isa", [])))
        features = [str(cpu.get("torch_capability") or "?")]
        features += [
            label
            for label, flag in (("AVX512-BF16", "avx512_bf16"), ("AVX512-FP16", "avx512_fp16"), ("AMX", "amx_tile"))
            if flag in isa
        ]
        switches = cpu.get("switches") or {}
        features += [f"{k}={v}" for k, v in sorted(switches.items())] if isinstance(switches, dict) else []
        where = f"a CPU with {', '.join(features)} ({cpu.get('model', '?')})"
    return f"{packages} on {where}"


def differences(old: JsonObject, new: JsonObject) -> list[str]:
    """The numerics-relevant fields that differ between two fingerprints, as 'name: old -> new'."""
    a = numerics_key(old, ("torch", "transformers", "bitsandbytes"))
    b = numerics_key(new, ("torch", "transformers", "bitsandbytes"))
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def process_age() -> float | None:
    """Seconds since this process started (interpreter, imports, collection: a run's start-up),
    from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
