# The gateway image: `docker build -t portcullis .`; docker-compose.yml uses it.

FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, built against placeholder sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit. Every target Cargo.toml names
# gets a placeholder, or Cargo refuses the manifest.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for f in tests/it/main.rs bench/bare_proxy.rs bench/bare_answer.rs bench/idle_conns.rs bench/rapid_reset.rs bench/authn.rs bench/policy.rs bench/trivial_check.rs bench/ws_echo.rs bench/ratelimit.rs; do \
         echo 'fn main() {}' > "$f"; \
       done \
    && cargo build --release --locked --bin portcullis \
    && rm -rf src

# The real sources (and the published development key and example secret, which `check`
# recognises).
COPY src src
COPY config/dev config/dev
COPY config/examples/seed.secret config/examples/seed.secret
# Newer than the placeholders' build, whatever the context's timestamps.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin portcullis

FROM debian:bookworm-slim
# The system's roots: a `rediss://` Redis is verified against them (the key fetches carry
# their own). Without them every TLS handshake to Redis failed, and the shared limits fell
# back to `on_redis_failure`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# A home for key files a volume mounts (docker-compose.yml's `keys`), owned by the user below.
RUN install -d -o 65532 -g 65532 /var/lib/portcullis
USER 65532:65532
ENTRYPOINT ["portcullis"]
