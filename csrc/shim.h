/* One-line, non-inline wrappers around DPDK static inline functions and macros, so Rust can
 * call them. Names are shim_<dpdk name>. */
#ifndef COLO_SHIM_H
#define COLO_SHIM_H

#include <stdint.h>
#include <rte_config.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_ethdev.h>

/* ethdev */
uint16_t shim_rte_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_rte_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

/* mbuf */
struct rte_mbuf *shim_rte_pktmbuf_alloc(struct rte_mempool *mp);
int shim_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n);
void shim_rte_pktmbuf_free(struct rte_mbuf *m);
char *shim_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *shim_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *shim_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int shim_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t shim_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
uint16_t shim_rte_mbuf_refcnt_update(struct rte_mbuf *m, int16_t value);
int shim_rte_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail);
int shim_rte_pktmbuf_linearize(struct rte_mbuf *m);

/* mempool */
unsigned shim_rte_mempool_avail_count(const struct rte_mempool *mp);
unsigned shim_rte_mempool_in_use_count(const struct rte_mempool *mp);

/* ring */
unsigned shim_rte_ring_sp_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n,
                                        unsigned *free_space);
unsigned shim_rte_ring_sc_dequeue_burst(struct rte_ring *r, void **objs, unsigned n,
                                        unsigned *available);
unsigned shim_rte_ring_count(const struct rte_ring *r);
unsigned shim_rte_ring_free_count(const struct rte_ring *r);
unsigned shim_rte_ring_get_capacity(const struct rte_ring *r);

/* lcore, errno, time */
unsigned shim_rte_lcore_id(void);
int shim_rte_errno(void);
uint64_t shim_rte_rdtsc(void);
uint64_t shim_rte_get_tsc_hz(void);
void shim_rte_pause(void);

#endif
