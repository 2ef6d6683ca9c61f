# jobstream: multi-stage build; the runtime image holds only the binary and CA
# certificates, and runs as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p jobstream-server \
 && cp target/release/jobstream /usr/local/bin/jobstream

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/jobstream --create-home jobstream
COPY --from=build /usr/local/bin/jobstream /usr/local/bin/jobstream
USER jobstream
WORKDIR /var/lib/jobstream
ENV JOBSTREAM_LISTEN=0.0.0.0:3000
EXPOSE 3000
ENTRYPOINT ["jobstream"]
CMD ["serve"]
