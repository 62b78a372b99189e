# segswarm image: `segswarm serve` by default (one pod of the cluster).
#
# With a registry (pulls rust:1-bookworm and debian:bookworm-slim, builds with cargo):
#   docker build -t segswarm:dev .
# Without a registry, from a binary built on the host (debian:bookworm-slim
# must exist locally; docs/deploy.md, "Building without a registry"):
#   cargo build --release --locked
#   mkdir -p target/image && cp target/release/segswarm target/image/
#   docker build --target runtime-prebuilt -f Dockerfile -t segswarm:dev target/image
#
#   docker run --rm -p 8080:8080 -v segswarm-data:/data segswarm:dev
# Any other subcommand works too: `docker run --rm segswarm:dev transcode --help`.
#
# No `# syntax=` line: it would make BuildKit pull a frontend image, and the
# legacy builder (DOCKER_BUILDKIT=0) ignores it anyway. Stages are in the
# order the legacy builder needs: it builds every stage up to the target, so
# `--target runtime-prebuilt` never reaches the rust stage.

############################ runtime base ############################
FROM debian:bookworm-slim AS runtime-base

# ffmpeg/ffprobe do the encoding (bookworm ships ffmpeg 5.1, the version the
# encoding recipe was verified with); tini is PID 1 so that signals reach the
# pod and no ffmpeg zombie is left; ca-certificates for https sources and
# webhooks. The HEALTHCHECK uses bash's /dev/tcp, so no curl is needed.
# DL3008 (pin apt versions) is ignored on purpose: bookworm's security
# updates replace the pinned versions and old pins then fail to install; the
# base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid (10001) so that shared storage (NFS, RWX volumes)
# can be given to it, and Kubernetes' runAsUser/fsGroup can match it.
RUN groupadd --system --gid 10001 segswarm \
 && useradd --system --uid 10001 --gid segswarm --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin segswarm \
 && mkdir -p /data \
 && chown segswarm:segswarm /data

ENV SEGSWARM_STORAGE_DIR=/data \
    SEGSWARM_LISTEN=0.0.0.0:8080

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

# The pod handles SIGTERM itself (stop claiming, release claims, kill ffmpeg
# process groups, exit within SEGSWARM_SHUTDOWN_GRACE); tini forwards it.
STOPSIGNAL SIGTERM

# GET /healthz over bash's /dev/tcp on the port of SEGSWARM_LISTEN.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SEGSWARM_LISTEN##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["tini", "--", "segswarm"]
CMD ["serve"]

######################## runtime from a host binary ########################
# The build context is a folder holding only `segswarm`, built on a host
# whose glibc is not newer than bookworm's (2.36), e.g. Debian 12.
FROM runtime-base AS runtime-prebuilt
COPY segswarm /usr/local/bin/segswarm

############################ build ############################
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: they only rebuild when
# Cargo.toml / Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src ./src
# touch: make cargo rebuild the crate itself over the placeholder build above.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/segswarm /out/segswarm

############################ runtime (default target) ############################
FROM runtime-base AS runtime
COPY --from=build /out/segswarm /usr/local/bin/segswarm
