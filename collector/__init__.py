"""collector: an OpenAI-compatible reverse proxy that times every request and every token.

It sits in front of vLLM, measures what clients feel (TTFT, inter-token latency, time per output
token, end-to-end latency, tokens), exports Prometheus metrics and OpenTelemetry traces, and turns
upstream failures into clear OpenAI-style errors.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
