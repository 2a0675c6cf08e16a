//! The one raw OS call the lcore loop needs beyond DPDK: `poll(2)` over descriptors it does
//! not own (DPDK's rx-interrupt event fds, af_packet's sockets, link sockets, doorbells).

/// `poll(2)` on `fds` for at most `timeout_ms` (negative: no limit); returns what poll
/// returned (ready descriptors, 0 on timeout, -1 on error). Only `revents` is written.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> i32 {
    // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd entries; poll
    // reads fd/events and writes only revents. A stale fd yields POLLNVAL, not UB.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }
}
