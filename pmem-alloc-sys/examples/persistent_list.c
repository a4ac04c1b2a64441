/* A persistent linked list that survives kill -9.
 *
 *   persistent_list POOL add N     append N nodes (creating the pool if needed)
 *   persistent_list POOL check     verify the list and print "ok LENGTH"
 *
 * Each node holds a value one larger than the next node's; the root holds the head and a count.
 * The order of durability makes every crash point safe: a node is written and persisted before
 * the head that links it is published (persisted), and the count follows the head, so after a
 * crash the list is intact and its length is the count or the count + 1. Links are pma_pptr
 * values, never addresses: recovery keeps the blocks they reach, and frees the rest (a node
 * allocated but not yet linked when the process died).
 *
 * Build: cc persistent_list.c $(pkg-config --cflags --libs pmem-alloc) -o persistent_list
 */
#include "pmem_alloc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    pma_pptr next;
    uint64_t value;
};

struct root {
    pma_pptr head;
    uint64_t count;
};

static int check(pma_pool *pool, struct root *r, uint64_t *len_out) {
    uint64_t len = 0, expect = 0;
    struct node *n = pma_from_pptr(pool, r->head);
    if (n)
        expect = n->value;
    while (n) {
        if (n->value != expect) {
            fprintf(stderr, "node %llu holds %llu, expected %llu\n", (unsigned long long)len,
                    (unsigned long long)n->value, (unsigned long long)expect);
            return 1;
        }
        expect--;
        len++;
        n = pma_from_pptr(pool, n->next);
    }
    if (expect != 0 || (len != r->count && len != r->count + 1)) {
        fprintf(stderr, "list of %llu nodes, count %llu, last value %llu\n",
                (unsigned long long)len, (unsigned long long)r->count,
                (unsigned long long)expect + 1);
        return 1;
    }
    *len_out = len;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s POOL add N | check\n", argv[0]);
        return 2;
    }
    pma_pool *pool = NULL;
    int rc = pma_pool_open(argv[1], "pma-list", &pool);
    if (rc == PMA_ERR_IO)
        rc = pma_pool_create(argv[1], 64 << 20, "pma-list", &pool);
    if (rc != PMA_OK) {
        fprintf(stderr, "%s: %s (%s)\n", argv[1], pma_strerror(rc), pma_errormsg());
        return 1;
    }
    struct root *r;
    if ((rc = pma_pool_root(pool, sizeof *r, (void **)&r)) != PMA_OK) {
        fprintf(stderr, "root: %s (%s)\n", pma_strerror(rc), pma_errormsg());
        return 1;
    }
    uint64_t len;
    if (check(pool, r, &len))
        return 1;
    if (r->count != len) { /* died between publishing the head and counting it */
        r->count = len;
        pma_persist(pool, &r->count, sizeof r->count);
    }
    if (strcmp(argv[2], "check") == 0) {
        printf("ok %llu\n", (unsigned long long)len);
        return pma_pool_close(pool) == PMA_OK ? 0 : 1;
    }
    if (strcmp(argv[2], "add") != 0 || argc < 4)
        return 2;
    unsigned long long n = strtoull(argv[3], NULL, 10);
    for (unsigned long long i = 0; i < n; i++) {
        struct node *nd = pma_malloc(pool, sizeof *nd);
        if (!nd) {
            fprintf(stderr, "pool full after %llu nodes\n", (unsigned long long)r->count);
            return 1;
        }
        nd->next = r->head;
        nd->value = r->count + 1;
        pma_persist(pool, nd, sizeof *nd);
        r->head = pma_to_pptr(pool, nd); /* publish: the node is durable first */
        pma_persist(pool, &r->head, sizeof r->head);
        r->count++;
        pma_persist(pool, &r->count, sizeof r->count);
        if (r->count % 1000 == 0) {
            printf("count %llu\n", (unsigned long long)r->count);
            fflush(stdout);
        }
    }
    printf("done %llu\n", (unsigned long long)r->count);
    return pma_pool_close(pool) == PMA_OK ? 0 : 1;
}
