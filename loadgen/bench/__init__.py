"""Benchmarks: the collector's overhead and the sweep's accuracy and standing among other load tools.

    counters   vLLM's own counters as ground truth (prometheus-client's parser, a sampler thread, windows)
    tables     the one markdown-table helper
    client     the streaming load client (asyncio + aiohttp) shared by proxy and overhead
    scripted   a model-free SSE upstream (python -m loadgen.bench.scripted)
    proxy      direct vs nginx vs the collector                    (scripts/bench_proxy.py)
    overhead   direct vs the collector on a live stack             (scripts/bench_overhead.py)
    accuracy   the sweep against `vllm bench serve`                (scripts/bench_accuracy.py)
    peer_tools vllm bench, GuideLLM, AIPerf: command lines and result parsers
    peers      the side-by-side comparison                         (scripts/bench_peers.py)
    queries    every dashboard and rule query against a Prometheus (scripts/check_queries.py)

Dependencies point one way: loadgen.bench imports loadgen.settings, loadgen.procs, loadgen.native_stack
and the sweep's and report's modules; nothing outside loadgen.bench (and its thin scripts/ entry points)
imports loadgen.bench.
"""
