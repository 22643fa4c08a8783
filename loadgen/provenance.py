"""The reproducibility record: engine and version, model, flags, GPU and driver, k6, host, plan."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from loadgen.k6_runner import k6_version
from loadgen.probe import auth_headers
from loadgen.prom import Prometheus, PrometheusDown

# Engine settings worth recording from vllm:cache_config_info's labels.
CACHE_CONFIG_LABELS = ("block_size", "num_gpu_blocks", "num_gpu_blocks_override", "kv_cache_size_tokens",
                       "kv_cache_max_concurrency", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization")
NATIVE_SETTINGS = ("NATIVE_KV_BLOCKS", "NATIVE_MAX_NUM_SEQS", "NATIVE_MAX_MODEL_LEN", "NATIVE_KVCACHE_SPACE_GIB",
                   "NATIVE_ENGINE_CORE_NICE")
DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float8_e4m3fn": 1.0, "fp8": 1.0, "int8": 1.0,
               "int4": 0.5}


def _get_json(url: str, api_key: str | None = None) -> Any:
    try:
        response = requests.get(url, timeout=10, headers=auth_headers(api_key))
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError):
        return None


def model_parameters(config: dict[str, Any]) -> int | None:
    """Parameter count of a dense decoder (Llama/Qwen shape) from its config.json."""
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads", heads))
        head_dim = int(config.get("head_dim") or hidden // heads)
        intermediate = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate
    norms = 2 * hidden + 2 * head_dim
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp + norms) + embeddings + hidden


def model_record(models: Any) -> dict[str, Any]:
    entry = (models or {}).get("data", [{}])[0] if isinstance(models, dict) else {}
    record: dict[str, Any] = {"id": entry.get("id"), "root": entry.get("root"),
                              "max_model_len": entry.get("max_model_len")}
    root = entry.get("root")
    config_path = Path(root) / "config.json" if isinstance(root, str) else None
    if config_path is not None and config_path.exists():
        config = json.loads(config_path.read_text())
        record.update(architecture=(config.get("architectures") or [None])[0], dtype=config.get("torch_dtype"),
                      parameters=model_parameters(config), bytes_per_param=DTYPE_BYTES.get(config.get("torch_dtype")),
                      config_source=str(config_path))
    return record


def gpu_record(prom: Prometheus | None) -> dict[str, Any]:
    if prom is not None:
        try:
            result = prom.vector("DCGM_FI_DEV_GPU_UTIL")
        except PrometheusDown:
            result = []
        if result:
            labels = result[0]["metric"]
            return {"source": "DCGM exporter", "gpus": len(result), "name": labels.get("modelName"),
                    "driver": labels.get("DCGM_FI_DRIVER_VERSION")}
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            lines = out.stdout.strip().splitlines()
            name, driver, memory = ([*(f.strip() for f in lines[0].split(",")), "", ""])[:3]
            return {"source": "nvidia-smi", "name": name, "driver": driver, "gpus": len(lines),
                    "memory": memory or None}
    return {"source": None, "name": None, "driver": None,
            "note": "no GPU visible: no DCGM exporter series in Prometheus and no nvidia-smi here"}


def engine_flags(prom: Prometheus | None, vllm_url: str | None = None) -> dict[str, str]:
    """vLLM's cache_config_info labels (KV capacity and friends): from Prometheus, else (a Prometheus
    that has not scraped yet) straight from vLLM's /metrics."""
    labels: dict[str, str] = {}
    if prom is not None:
        try:
            result = prom.vector("vllm:cache_config_info")
        except PrometheusDown:
            result = []
        labels = result[0]["metric"] if result else {}
    if not labels and vllm_url:
        try:
            text = requests.get(f"{vllm_url}/metrics", timeout=10).text
            families = text_string_to_metric_families(text)
            labels = next((sample.labels for family in families if family.name == "vllm:cache_config_info"
                           for sample in family.samples), {})
        except (requests.RequestException, ValueError):
            labels = {}
    return {key: labels[key] for key in CACHE_CONFIG_LABELS if key in labels}


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def collect(target: str, vllm_url: str | None, prom: Prometheus | None, settings: dict[str, str],
            api_key: str | None = None) -> dict[str, Any]:
    version = _get_json(f"{target}/version", api_key) or (_get_json(f"{vllm_url}/version") if vllm_url else None)
    model = model_record(_get_json(f"{target}/v1/models", api_key))
    # The native CPU stack's knobs describe the measured server only when it is that stack's model.
    native = model.get("id") is not None and model.get("id") == settings.get("NATIVE_SERVED_MODEL_NAME")
    return {
        "engine": "vLLM" if version else "unknown (no /version)",
        "engine_version": (version or {}).get("version"),
        "model": model,
        "engine_flags": engine_flags(prom, vllm_url),
        "native_settings": ({key: settings[key] for key in NATIVE_SETTINGS if key in settings} if native else
                            "not the native stack's server: see engine_flags"),
        "gpu": gpu_record(prom),
        "k6_version": k6_version(),
        "host": {"machine": platform.machine(), "system": platform.platform(), "cpus": os.cpu_count(),
                 "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "loadgen_commit": git_commit(),
    }
