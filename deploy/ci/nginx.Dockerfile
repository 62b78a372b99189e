# An nginx image built from Debian's package, standing in for
# nginx:1.27-alpine where no registry is reachable (scripts/compose-test:
# NGINX_IMAGE). The compose file mounts deploy/compose/nginx.conf over
# /etc/nginx/nginx.conf, as with the official image.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
