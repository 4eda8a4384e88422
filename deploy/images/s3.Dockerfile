# An S3 API server for the container cluster: moto (atomic conditional writes, which the
# reward log's fencing needs; s3s-fs's are not atomic) in a virtual environment made by
# deploy/images/build.sh inside a debootstrap'd bookworm with python3. Non-root.
ARG BASE=tributary-python:bookworm
FROM ${BASE}
RUN groupadd --system --gid 10003 s3 \
 && useradd --system --uid 10003 --gid 10003 --home-dir /var/lib/s3 --shell /usr/sbin/nologin s3 \
 && mkdir -p /var/lib/s3 && chown 10003:10003 /var/lib/s3
USER 10003:10003
WORKDIR /var/lib/s3
EXPOSE 9000/tcp
ENTRYPOINT ["/opt/moto/bin/moto_server", "-H", "0.0.0.0", "-p", "9000"]
