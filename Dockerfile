# colo-proxy on Debian 12 with the distribution's DPDK 22.11.
# The steps mirror .ci/setup + .ci/run (keep them identical; no Docker engine runs in CI).
#
# Build:  docker build -t colo-proxy .
# Run:    DPDK needs hugepages (or falls back to --no-huge) and privileges:
#   docker run --rm -it --privileged -v /dev/hugepages:/dev/hugepages colo-proxy selfcheck
# Instead of --privileged, the minimum is usually
#   --cap-add IPC_LOCK --cap-add SYS_ADMIN --cap-add NET_ADMIN
# (IPC_LOCK: pin hugepage memory; SYS_ADMIN: hugetlbfs / pagemap; NET_ADMIN: tap/af_packet
# ports). Reserve the hugepages on the host (dpdk-config/setup-hugepages.sh): a container cannot
# change the host's nr_hugepages. vfio-pci NICs also need --device /dev/vfio/... (see
# dpdk-config/BIND-NICS.md).
FROM debian:12

ENV DEBIAN_FRONTEND=noninteractive
# Same package list as .ci/setup.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
      libdpdk-dev libclang-dev pkg-config dpdk-dev qemu-system-x86 iproute2 ethtool iputils-ping \
      tshark build-essential curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Debian 12's rustc is too old for this crate (rust-version 1.88): rustup, as .ci/setup does.
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH

WORKDIR /src
COPY . .
RUN cargo build --release --all-targets \
 && install -m 0755 target/release/colo-proxy /usr/local/bin/colo-proxy

ENTRYPOINT ["colo-proxy"]
CMD ["selfcheck"]
