# acmeproxy container image: a release build on Debian bookworm, run as a
# non-root user. Mount a ca.json at /etc/acmeproxy/ca.json (its "dataDir"
# should be /var/lib/acmeproxy and its metrics address 0.0.0.0:9123 to be
# reachable from outside) and keep /var/lib/acmeproxy on a volume:
#
#   docker build -t acmeproxy .
#   docker run -d --name acmeproxy -p 443:443 -p 127.0.0.1:9123:9123 \
#     -v /etc/acmeproxy/ca.json:/etc/acmeproxy/ca.json:ro \
#     -v acmeproxy-data:/var/lib/acmeproxy acmeproxy
#
# Port 443 without root: Docker (20.10 and later) lets unprivileged processes
# bind any port inside the container (net.ipv4.ip_unprivileged_port_start=0);
# other runtimes need that sysctl (or `--cap-add NET_BIND_SERVICE` with a root
# user, or an address such as ":8443" in ca.json).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other members: cargo reads their manifests.
COPY bench ./bench
COPY testkit ./testkit
RUN cargo build --release --locked -p acmeproxy \
    && strip target/release/acmeproxy

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 acmeproxy \
    && useradd --system --uid 10001 --gid acmeproxy --home-dir /var/lib/acmeproxy \
        --no-create-home --shell /usr/sbin/nologin acmeproxy \
    && install -d -m 0700 -o acmeproxy -g acmeproxy /var/lib/acmeproxy \
    && install -d -m 0755 /etc/acmeproxy
COPY --from=builder /src/target/release/acmeproxy /usr/local/bin/acmeproxy
USER 10001:10001
EXPOSE 443 9123
VOLUME /var/lib/acmeproxy
STOPSIGNAL SIGTERM
ENTRYPOINT ["acmeproxy"]
CMD ["/etc/acmeproxy/ca.json"]
