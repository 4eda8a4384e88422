# The tributary image: the binary the host built (the one the tests use), copied onto a base
# this machine can make (deploy/images/build.sh imports a debootstrap'd Debian bookworm as
# tributary-base:bookworm), non-root. `--build-arg GPU=1` adds the Vulkan loader and Mesa's
# drivers for burn-wgpu (untested here: no GPU, and it needs the package mirror from inside
# the build). On a machine with a registry, tributary.multistage.Dockerfile builds the binary
# inside Docker instead (build.sh --variant multistage; untested here).
ARG BASE=tributary-base:bookworm
FROM ${BASE}
ARG GPU=0
RUN if [ "$GPU" = "1" ]; then apt-get update && apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers && rm -rf /var/lib/apt/lists/*; fi \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin tributary \
 && mkdir -p /data && chown 10001:10001 /data
COPY tributary /usr/local/bin/tributary
USER 10001:10001
WORKDIR /data
ENV TRIBUTARY_DATA_DIR=/data TRIBUTARY_CACHE_DIR=/data/cache
VOLUME ["/data"]
# QUIC (workers), HTTP (API, /healthz, /readyz, /metrics)
EXPOSE 7401/udp 7400/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tributary"]
CMD ["--help"]
