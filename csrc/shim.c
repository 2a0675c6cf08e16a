/* See shim.h. Each wrapper is one call; the compiler inlines DPDK's body here. */
#include "shim.h"

#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_pause.h>

uint16_t shim_rte_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t shim_rte_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_tx_burst(port, queue, pkts, n); }

struct rte_mbuf *shim_rte_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int shim_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n)
{ return rte_pktmbuf_alloc_bulk(mp, mbufs, n); }
void shim_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
char *shim_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
char *shim_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *shim_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
int shim_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
uint16_t shim_rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint16_t shim_rte_mbuf_refcnt_update(struct rte_mbuf *m, int16_t value)
{ return rte_mbuf_refcnt_update(m, value); }
int shim_rte_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail)
{ return rte_pktmbuf_chain(head, tail); }
int shim_rte_pktmbuf_linearize(struct rte_mbuf *m)
{ return rte_pktmbuf_linearize(m); }

unsigned shim_rte_mempool_avail_count(const struct rte_mempool *mp) { return rte_mempool_avail_count(mp); }
unsigned shim_rte_mempool_in_use_count(const struct rte_mempool *mp) { return rte_mempool_in_use_count(mp); }

unsigned shim_rte_ring_sp_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n,
                                        unsigned *free_space)
{ return rte_ring_sp_enqueue_burst(r, objs, n, free_space); }
unsigned shim_rte_ring_sc_dequeue_burst(struct rte_ring *r, void **objs, unsigned n,
                                        unsigned *available)
{ return rte_ring_sc_dequeue_burst(r, objs, n, available); }
unsigned shim_rte_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
unsigned shim_rte_ring_free_count(const struct rte_ring *r) { return rte_ring_free_count(r); }
unsigned shim_rte_ring_get_capacity(const struct rte_ring *r) { return rte_ring_get_capacity(r); }

unsigned shim_rte_lcore_id(void) { return rte_lcore_id(); }
int shim_rte_errno(void) { return rte_errno; }
uint64_t shim_rte_rdtsc(void) { return rte_rdtsc(); }
uint64_t shim_rte_get_tsc_hz(void) { return rte_get_tsc_hz(); }
void shim_rte_pause(void) { rte_pause(); }
