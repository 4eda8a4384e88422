# etcd for the container cluster: Debian's etcd-server binary (copied from the host, where
# scripts/setup-test-deps.sh installs it) on the debootstrap'd base. Non-root.
ARG BASE=tributary-base:bookworm
FROM ${BASE}
RUN groupadd --system --gid 10002 etcd \
 && useradd --system --uid 10002 --gid 10002 --home-dir /var/lib/etcd --shell /usr/sbin/nologin etcd \
 && mkdir -p /var/lib/etcd && chown 10002:10002 /var/lib/etcd
COPY etcd /usr/local/bin/etcd
USER 10002:10002
WORKDIR /var/lib/etcd
EXPOSE 2379/tcp 2380/tcp
ENTRYPOINT ["/usr/local/bin/etcd"]
