# mediabind image: the package, ffmpeg and the pinned stack (same pins as
# scripts/setup.sh, which installs `pip install -e .` from pyproject.toml).
# One image serves every role of docker-compose.yml: the Prefect `serve`
# process or worker, the Ray head and the Ray GPU workers. Ray requires the
# same Python and Ray versions on every node, which one image guarantees.
#
#   docker build -t mediabind .
#
# torch==2.14.1 from PyPI is a CUDA build: the GPU workers need only the host's
# NVIDIA driver and the NVIDIA container toolkit, no CUDA base image.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# ffmpeg/ffprobe decode video and audio (apt, as scripts/setup.sh does).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; its home holds MEDIABIND_HOME, the model cache and the archive mounts.
RUN groupadd --gid 1000 mediabind \
    && useradd --uid 1000 --gid mediabind --create-home --shell /bin/bash mediabind \
    && mkdir -p /data/mediabind /models /archive \
    && chown -R mediabind:mediabind /data /models /archive

WORKDIR /opt/mediabind
# Dependencies first (pyproject.toml only) so code edits reuse this layer.
COPY pyproject.toml README.md ./
# The runtime dependencies plus the `cluster` extra (ray[default]: dashboard, Ray Client).
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + p['optional-dependencies']['cluster']; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps))" \
    && pip install -r /tmp/requirements.txt

# The package itself, exactly as pinned in pyproject.toml (non-editable here).
COPY schemas ./schemas
COPY ingest ./ingest
COPY embed_workers ./embed_workers
COPY search ./search
COPY flows ./flows
COPY prefect.yaml ./
RUN pip install --no-deps . && python -c "import flows.cli, schemas"

USER mediabind
ENV MEDIABIND_HOME=/data/mediabind \
    MEDIABIND_CACHE_DIR=/models
VOLUME ["/data/mediabind", "/models"]

# Default role: the mediabind CLI; docker-compose.yml sets the command per service.
ENTRYPOINT []
CMD ["mediabind", "--help"]
