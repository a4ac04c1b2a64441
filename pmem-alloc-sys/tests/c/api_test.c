/* Exercises the whole pma_ C API; prints "all ok" and exits 0 on success.
 * Usage: api_test DIR [anon-heap-only]
 * (valgrind 3.19 aborts with an internal aspacem assertion when a file-backed volatile heap is
 * unmapped, so the valgrind run tests the anonymous heap only.) */
#include "pmem_alloc.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(c)                                                                 \
    do {                                                                         \
        if (!(c)) {                                                              \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: %s\n", __FILE__, __LINE__, #c, \
                    pma_errormsg());                                             \
            failures++;                                                          \
        }                                                                        \
    } while (0)

struct root {
    uint64_t magic;
    pma_pptr data;
    char text[48];
};

/* transactions: move 10 from a to b in a pair of counters kept in a block, and hang a new
 * node on the root; `fail` makes the callback abort after modifying everything */
struct tx_arg {
    pma_pool *pool;
    struct root *r;
    uint64_t *pair;
    int fail;
    int rc; /* the snapshot's result code */
};

static int transfer(pma_tx *tx, void *p) {
    struct tx_arg *a = p;
    const void *ranges[2] = {a->pair, &a->r->data};
    size_t lens[2] = {2 * sizeof(uint64_t), sizeof a->r->data};
    a->rc = pma_tx_snapshot_many(tx, ranges, lens, 2);
    if (a->rc != PMA_OK)
        return 1;
    a->pair[0] -= 10;
    a->pair[1] += 10;
    char *node = pma_tx_malloc(tx, 64);
    if (!node)
        return 2;
    strcpy(node, "in a transaction");
    a->r->data = pma_to_pptr(a->pool, node);
    return a->fail;
}

static int nested(pma_tx *tx, void *p) {
    struct tx_arg *a = p;
    if (pma_tx_snapshot(tx, a->pair, 2 * sizeof(uint64_t)) != PMA_OK)
        return 1;
    a->pair[0] += 1;
    /* an inner transaction joins this one; its abort aborts both */
    return pma_tx_run(a->pool, transfer, a) == PMA_OK ? 0 : 5;
}

static int unlink_node(pma_tx *tx, void *p) {
    struct tx_arg *a = p;
    if (pma_tx_snapshot(tx, &a->r->data, sizeof a->r->data) != PMA_OK)
        return 1;
    void *n = pma_from_pptr(a->pool, a->r->data);
    a->r->data = 0;
    return pma_tx_free(tx, n) == PMA_OK ? a->fail : 3;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char path[4096], junk[4096];
    snprintf(path, sizeof path, "%s/api.pool", argv[1]);
    snprintf(junk, sizeof junk, "%s/junk", argv[1]);

    /* errors and NULL checks */
    CHECK(strlen(pma_version()) > 0);
    CHECK(strcmp(pma_strerror(PMA_OK), "success") == 0);
    CHECK(strlen(pma_strerror(12345)) > 0);
    pma_pool *pool = NULL;
    CHECK(pma_pool_create(NULL, 8 << 20, NULL, &pool) == PMA_ERR_INVALID);
    CHECK(strlen(pma_errormsg()) > 0);
    CHECK(pma_pool_create(path, 8 << 20, NULL, NULL) == PMA_ERR_INVALID);
    CHECK(pma_pool_open("/nonexistent/dir/x.pool", NULL, &pool) == PMA_ERR_IO);
    CHECK(pma_pool_close(NULL) == PMA_ERR_INVALID);
    errno = 0;
    CHECK(pma_malloc(NULL, 8) == NULL && errno == EINVAL);
    pma_free(NULL, NULL);
    CHECK(pma_usable_size(NULL, NULL) == 0);
    CHECK(pma_pool_root(NULL, 8, NULL) == PMA_ERR_INVALID);
    CHECK(pma_pool_size(NULL) == 0);
    CHECK(pma_from_pptr(NULL, 1) == NULL);
    pma_persist(NULL, NULL, 0);
    pma_drain(NULL);

    /* a pool */
    CHECK(pma_pool_create(path, 8 << 20, "api-test", &pool) == PMA_OK);
    if (!pool)
        return 1;
    CHECK(pma_pool_size(pool) == 8 << 20);
    pma_pool *again = NULL;
    CHECK(pma_pool_open(path, NULL, &again) == PMA_ERR_LOCKED);
    struct root *r = NULL;
    CHECK(pma_pool_root(pool, sizeof *r, (void **)&r) == PMA_OK && r != NULL);
    CHECK(r->magic == 0 && r->data == 0);
    void *r2 = NULL;
    CHECK(pma_pool_root(pool, sizeof *r, &r2) == PMA_OK && r2 == r);
    CHECK(pma_pool_root(pool, sizeof *r + 8, &r2) == PMA_ERR_MISMATCH);

    /* allocation */
    char *a = pma_malloc(pool, 100);
    CHECK(a != NULL && pma_usable_size(pool, a) >= 100);
    memset(a, 'x', 100);
    uint64_t *z = pma_calloc(pool, 50, 8);
    CHECK(z != NULL);
    for (int i = 0; z && i < 50; i++)
        CHECK(z[i] == 0);
    a = pma_realloc(pool, a, 10000);
    CHECK(a != NULL && a[0] == 'x' && a[99] == 'x' && pma_usable_size(pool, a) >= 10000);
    void *al = pma_aligned_alloc(pool, 4096, 100);
    CHECK(al != NULL && ((uintptr_t)al & 4095) == 0);
    errno = 0;
    CHECK(pma_aligned_alloc(pool, 3, 8) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(pma_calloc(pool, SIZE_MAX, 16) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pma_malloc(pool, (size_t)1 << 40) == NULL && errno == ENOMEM);
    int local;
    CHECK(pma_realloc(pool, &local, 8) == NULL);
    CHECK(pma_usable_size(pool, &local) == 0);
    pma_free(pool, al);
    pma_free(pool, z);

    /* offset pointers and persistence */
    pma_pptr pp = pma_to_pptr(pool, a);
    CHECK(pp != 0 && pma_from_pptr(pool, pp) == a);
    CHECK(pma_pptr_offset(pp) == (uint64_t)((char *)a - (char *)r) + pma_pptr_offset(pma_to_pptr(pool, r)));
    CHECK(pma_to_pptr(pool, &local) == 0 && pma_to_pptr(pool, NULL) == 0);
    CHECK(pma_from_pptr(pool, 0) == NULL && pma_from_pptr(pool, 12345) == NULL);
    CHECK(pma_memcpy_persist(pool, a, "hello, pmem", 12) == a);
    CHECK(pma_memset_persist(pool, a + 12, 'y', 20) == a + 12);
    CHECK(pma_memcpy_persist(pool, &local, "x", 1) == NULL);
    strcpy(r->text, "persistent root");
    pma_flush(pool, r->text, sizeof r->text);
    pma_drain(pool);
    r->data = pp;
    r->magic = 0xC0FFEE;
    pma_persist(pool, r, sizeof *r);

    /* transactions */
    CHECK(pma_tx_run(NULL, transfer, NULL) == PMA_ERR_INVALID);
    CHECK(pma_tx_run(pool, NULL, NULL) == PMA_ERR_INVALID);
    CHECK(pma_tx_snapshot(NULL, r, 8) == PMA_ERR_INVALID);
    CHECK(pma_tx_malloc(NULL, 8) == NULL);
    {
        uint64_t *pair = pma_calloc(pool, 2, sizeof(uint64_t));
        CHECK(pair != NULL);
        pair[0] = 100;
        pma_persist(pool, pair, 2 * sizeof *pair);
        pma_pptr keep = r->data;
        struct tx_arg ta = {pool, r, pair, 0, 0};
        CHECK(pma_tx_run(pool, transfer, &ta) == PMA_OK);
        CHECK(pair[0] == 90 && pair[1] == 10);
        char *node = pma_from_pptr(pool, r->data);
        CHECK(node != NULL && strcmp(node, "in a transaction") == 0);
        pma_pptr committed = r->data;
        /* abort: every change rolled back, the allocation released */
        ta.fail = 7;
        CHECK(pma_tx_run(pool, transfer, &ta) == PMA_ERR_ABORTED);
        CHECK(strlen(pma_errormsg()) > 0);
        CHECK(pair[0] == 90 && pair[1] == 10 && r->data == committed);
        /* nested: the inner abort rolls back the outer changes too */
        CHECK(pma_tx_run(pool, nested, &ta) == PMA_ERR_ABORTED);
        CHECK(pair[0] == 90 && pair[1] == 10 && r->data == committed);
        ta.fail = 0;
        CHECK(pma_tx_run(pool, nested, &ta) == PMA_OK);
        CHECK(pair[0] == 81 && pair[1] == 20);
        /* a range outside the pool is refused */
        struct tx_arg bad = {pool, r, (uint64_t *)&local, 0, 0};
        CHECK(pma_tx_run(pool, transfer, &bad) == PMA_ERR_ABORTED && bad.rc == PMA_ERR_INVALID);
        /* free in a transaction: unlink and free the node; rolled back, then committed */
        pma_pptr last = r->data;
        ta.fail = 4;
        CHECK(pma_tx_run(pool, unlink_node, &ta) == PMA_ERR_ABORTED && r->data == last);
        ta.fail = 0;
        CHECK(pma_tx_run(pool, unlink_node, &ta) == PMA_OK && r->data == 0);
        r->data = keep;
        pma_persist(pool, &r->data, sizeof r->data);
        pma_free(pool, pair);
    }

    /* growth */
    CHECK(pma_pool_grow(pool, 16 << 20) == PMA_OK && pma_pool_size(pool) == 16 << 20);
    void *big = pma_malloc(pool, 5 << 20), *big2 = pma_malloc(pool, 5 << 20); /* needs the new zone */
    CHECK(big != NULL && big2 != NULL);
    pma_free(pool, big);
    pma_free(pool, big2);
    CHECK(pma_pool_close(pool) == PMA_OK);

    /* reopen: clean, data there */
    CHECK(pma_pool_open(path, "other-layout", &pool) == PMA_ERR_MISMATCH);
    pool = NULL;
    CHECK(pma_pool_open(path, "api-test", &pool) == PMA_OK);
    if (!pool)
        return 1;
    CHECK(pma_pool_was_clean(pool) == 1);
    CHECK(pma_pool_size(pool) == 16 << 20);
    CHECK(pma_pool_root(pool, sizeof *r, (void **)&r) == PMA_OK);
    CHECK(r->magic == 0xC0FFEE && strcmp(r->text, "persistent root") == 0);
    char *d = pma_from_pptr(pool, r->data);
    CHECK(d != NULL && memcmp(d, "hello, pmem", 12) == 0 && d[12] == 'y' && d[31] == 'y' && d[99] == 'x');
    CHECK(pma_pool_close(pool) == PMA_OK);

    /* a file that is not a pool */
    FILE *f = fopen(junk, "w");
    for (int i = 0; f && i < 2 << 20; i++)
        fputc('j', f);
    if (f)
        fclose(f);
    CHECK(pma_pool_open(junk, NULL, &pool) == PMA_ERR_CORRUPT);

    /* volatile heaps: on a file in DIR, and anonymous */
    const char *dirs[2] = {argv[1], NULL};
    for (int k = argc == 3 ? 1 : 0; k < 2; k++) {
        pma_heap *h = NULL;
        CHECK(pma_heap_create(dirs[k], 4 << 20, 64 << 20, &h) == PMA_OK && h != NULL);
        if (!h)
            continue;
        void *ptrs[1000];
        for (int i = 0; i < 1000; i++) {
            ptrs[i] = pma_heap_malloc(h, (size_t)(i % 97) * 13 + 1);
            CHECK(ptrs[i] != NULL);
            memset(ptrs[i], i & 0xff, (size_t)(i % 97) * 13 + 1);
        }
        for (int i = 0; i < 1000; i += 2)
            pma_heap_free(h, ptrs[i]);
        uint32_t *c = pma_heap_calloc(h, 1000, 4);
        CHECK(c != NULL && c[0] == 0 && c[999] == 0);
        char *g = pma_heap_realloc(h, ptrs[1], 50000);
        CHECK(g != NULL && (unsigned char)g[0] == 1 && pma_heap_usable_size(h, g) >= 50000);
        void *al2 = pma_heap_aligned_alloc(h, 1 << 16, 10);
        CHECK(al2 != NULL && ((uintptr_t)al2 & 0xffff) == 0);
        void *big2 = pma_heap_malloc(h, 32 << 20); /* beyond the initial size: grows */
        CHECK(big2 != NULL);
        CHECK(pma_heap_usable_size(h, &local) == 0);
        pma_heap_free(h, &local); /* foreign: ignored */
        pma_heap_free(h, big2);
        pma_heap_free(h, g);
        pma_heap_free(h, c);
        pma_heap_free(h, al2);
        for (int i = 3; i < 1000; i += 2)
            pma_heap_free(h, ptrs[i]);
        pma_heap_destroy(h);
    }
    pma_heap_destroy(NULL);
    CHECK(pma_heap_create(NULL, 0, 0, NULL) == PMA_ERR_INVALID);

    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all ok\n");
    return 0;
}
