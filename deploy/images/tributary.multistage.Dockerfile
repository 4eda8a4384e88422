# The tributary image built from source inside Docker, for machines with a registry (it pulls
# rust:1.95-bookworm and debian:bookworm-slim). UNTESTED here: these machines can pull no
# image, so deploy/images/build.sh uses tributary.Dockerfile with the host's binary by default;
# `build.sh --variant multistage` selects this file. Same runtime layout as the default.
ARG BASE=debian:bookworm-slim
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && cargo build --release --bin tributary && cp target/release/tributary /tributary

FROM ${BASE}
ARG GPU=0
RUN if [ "$GPU" = "1" ]; then apt-get update && apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers && rm -rf /var/lib/apt/lists/*; fi \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin tributary \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /tributary /usr/local/bin/tributary
USER 10001:10001
WORKDIR /data
ENV TRIBUTARY_DATA_DIR=/data TRIBUTARY_CACHE_DIR=/data/cache
VOLUME ["/data"]
# QUIC (workers), HTTP (API, /healthz, /readyz, /metrics)
EXPOSE 7401/udp 7400/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tributary"]
CMD ["--help"]
