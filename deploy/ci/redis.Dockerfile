# A Redis image built from Debian's package, standing in for redis:7.4-alpine
# where no registry is reachable (scripts/compose-test: REDIS_IMAGE). The
# compose file's command (no persistence, protected mode off) and its
# `redis-cli ping` healthcheck work with it unchanged.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379
CMD ["redis-server"]
