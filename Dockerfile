# p2pcache master and worker: `docker run IMAGE master ...` / `docker run IMAGE worker ...`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip install . \
    && rm -rf /src \
    && groupadd --system --gid 10001 p2pcache \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin p2pcache \
    && install -d -o 10001 -g 10001 /var/cache/p2pcache

WORKDIR /
# Numeric, so Kubernetes' runAsNonRoot can verify it (the chart sets the same uid).
USER 10001
EXPOSE 7070 8080
ENTRYPOINT ["p2pcache"]
