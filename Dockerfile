# One image for web, worker and migrations; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OPENBLAS_NUM_THREADS=1 \
    XRAY_VAR_DIR=/var/lib/xray \
    STORAGE_DIR=/var/lib/xray/storage \
    MODEL_DIR=/app/models/demo

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY web ./web
COPY worker ./worker
COPY training ./training
COPY migrations ./migrations
COPY cli ./cli
COPY gateway ./gateway
COPY bench ./bench
COPY setup.py ./
# gcc only for the build of the two optional C kernels (setup.py): shared._png_unfilter and
# shared._resample (without them 1024 px PNGs decode about 3x slower). Without a compiler the
# install still works.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install '.[ml]' \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
COPY models ./models

RUN useradd --system --uid 10001 --home /var/lib/xray xray \
    && mkdir -p /var/lib/xray/storage && chown -R xray /var/lib/xray
USER xray
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--timeout", "120", "web.wsgi:app"]
