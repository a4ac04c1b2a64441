/* Run with LD_PRELOAD=libpmem_alloc_preload.so PMEM_HEAP_FILE=HEAP: checks every interposed
 * entry point, that blocks come from the heap file's mapping, thread exits, and fork (the child
 * sees the heap as of the fork, and nothing it does reaches the parent's heap).
 * Usage: preload_test HEAP; prints "all ok". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                                   \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

static uintptr_t lo = UINTPTR_MAX, hi;

static void find_heap(const char *file) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        size_t n = strlen(line), m = strlen(file);
        if (n >= m && strcmp(line + n - m, file) == 0 && strstr(line, " rw-s ")) {
            unsigned long a, b;
            if (sscanf(line, "%lx-%lx", &a, &b) == 2) {
                if (a < lo)
                    lo = a;
                if (b > hi)
                    hi = b;
            }
        }
    }
    if (f)
        fclose(f);
}

static int in_heap(const void *p) { return (uintptr_t)p >= lo && (uintptr_t)p < hi; }

static void *worker(void *arg) {
    (void)arg;
    void *keep[64];
    for (int r = 0; r < 300; r++) {
        for (int k = 0; k < 64; k++) {
            size_t n = (size_t)((r * 64 + k) % 300) + 1;
            keep[k] = malloc(n);
            if (!keep[k] || !in_heap(keep[k]))
                __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
            else
                memset(keep[k], 1, n);
        }
        for (int k = 0; k < 64; k++)
            free(keep[k]);
    }
    return NULL;
}

typedef void *(*mallocx_t)(size_t, int);
typedef void *(*rallocx_t)(void *, size_t, int);
typedef size_t (*xallocx_t)(void *, size_t, size_t, int);
typedef size_t (*sallocx_t)(const void *, int);
typedef void (*dallocx_t)(void *, int);
typedef void (*sdallocx_t)(void *, size_t, int);
typedef size_t (*nallocx_t)(size_t, int);
typedef int (*mallctl_t)(const char *, void *, size_t *, void *, size_t);
#define MALLOCX_LG_ALIGN(la) ((int)(la))
#define MALLOCX_ZERO ((int)0x40)

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    void *first = malloc(16);
    find_heap(argv[1]);
    CHECK(hi > lo);
    CHECK(in_heap(first));
    free(first);

    /* the standard entry points */
    char *p = malloc(100);
    CHECK(p && in_heap(p) && ((uintptr_t)p & 15) == 0 && malloc_usable_size(p) >= 100);
    memset(p, 'a', 100);
    p = realloc(p, 100000);
    CHECK(p && in_heap(p) && p[0] == 'a' && p[99] == 'a' && malloc_usable_size(p) >= 100000);
    p = realloc(p, 10);
    CHECK(p && p[9] == 'a');
    CHECK(realloc(p, 0) == NULL);
    void *z0 = malloc(0);
    CHECK(z0 && in_heap(z0));
    free(z0);
    free(NULL);
    unsigned char *c = calloc(1000, 7);
    int zero = 1;
    for (int i = 0; c && i < 7000; i++)
        zero &= c[i] == 0;
    CHECK(c && zero && in_heap(c));
    free(c);
    volatile size_t halfmax = SIZE_MAX / 2; /* hides the overflow from the compiler */
    errno = 0;
    CHECK(calloc(halfmax, 4) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(NULL, halfmax, 4) == NULL && errno == ENOMEM);
    void *ra = reallocarray(NULL, 10, 10);
    CHECK(ra && in_heap(ra));
    free(ra);
    void *pm = NULL;
    CHECK(posix_memalign(&pm, 4096, 100) == 0 && pm && ((uintptr_t)pm & 4095) == 0 && in_heap(pm));
    free(pm);
    CHECK(posix_memalign(&pm, 3, 100) == EINVAL);
    void *aa = aligned_alloc(64, 128);
    CHECK(aa && ((uintptr_t)aa & 63) == 0);
    free(aa);
    void *ma = memalign(1 << 16, 10);
    CHECK(ma && ((uintptr_t)ma & 0xffff) == 0 && in_heap(ma));
    free(ma);
    void *va = valloc(10);
    CHECK(va && ((uintptr_t)va & 4095) == 0);
    free(va);
    void *pv = pvalloc(10);
    CHECK(pv && ((uintptr_t)pv & 4095) == 0 && malloc_usable_size(pv) >= 4096);
    free(pv);
    char *dup = strdup("through libc's own malloc call");
    CHECK(dup && in_heap(dup));
    free(dup);
    void *huge = malloc((size_t)200 << 20); /* beyond the initial size: the heap grows */
    CHECK(huge && in_heap(huge));
    memset(huge, 7, (size_t)200 << 20);
    free(huge);

    /* jemalloc's API, as redis-server calls it */
    mallocx_t mallocx = (mallocx_t)dlsym(RTLD_DEFAULT, "mallocx");
    rallocx_t rallocx = (rallocx_t)dlsym(RTLD_DEFAULT, "rallocx");
    xallocx_t xallocx = (xallocx_t)dlsym(RTLD_DEFAULT, "xallocx");
    sallocx_t sallocx = (sallocx_t)dlsym(RTLD_DEFAULT, "sallocx");
    dallocx_t dallocx = (dallocx_t)dlsym(RTLD_DEFAULT, "dallocx");
    sdallocx_t sdallocx = (sdallocx_t)dlsym(RTLD_DEFAULT, "sdallocx");
    nallocx_t nallocx = (nallocx_t)dlsym(RTLD_DEFAULT, "nallocx");
    mallctl_t mallctl = (mallctl_t)dlsym(RTLD_DEFAULT, "mallctl");
    CHECK(mallocx && rallocx && xallocx && sallocx && dallocx && sdallocx && nallocx && mallctl);
    if (mallocx && rallocx && xallocx && sallocx && dallocx && sdallocx && nallocx && mallctl) {
        char *x = mallocx(100, MALLOCX_LG_ALIGN(12));
        CHECK(x && ((uintptr_t)x & 4095) == 0 && in_heap(x));
        CHECK(sallocx(x, 0) == malloc_usable_size(x));
        dallocx(x, 0);
        unsigned char *xz = mallocx(5000, MALLOCX_ZERO);
        int allz = 1;
        for (int i = 0; xz && i < 5000; i++)
            allz &= xz[i] == 0;
        CHECK(xz && allz);
        memset(xz, 9, 5000);
        xz = rallocx(xz, 50000, MALLOCX_ZERO);
        CHECK(xz && xz[4999] == 9 && xz[5000] == 0 && xz[49999] == 0);
        CHECK(xallocx(xz, 100, 0, 0) >= 100);
        sdallocx(xz, 100, 0);
        for (size_t s = 1; s < 100000; s = s * 3 + 1) {
            void *b = malloc(s);
            CHECK(nallocx(s, 0) == malloc_usable_size(b));
            free(b);
        }
        size_t allocated = 0, len = sizeof allocated;
        char *volatile hold = malloc(1 << 20); /* volatile: the compiler must not elide it */
        memset(hold, 1, 1 << 20);
        uint64_t epoch = 1;
        size_t elen = sizeof epoch;
        CHECK(mallctl("epoch", &epoch, &elen, &epoch, elen) == 0);
        CHECK(mallctl("stats.allocated", &allocated, &len, NULL, 0) == 0 && allocated >= 1 << 20);
        CHECK(mallctl("no.such.name", &allocated, &len, NULL, 0) == ENOENT);
        free(hold);
    }

    /* threads that come and go */
    for (int round = 0; round < 3; round++) {
        pthread_t t[8];
        for (int i = 0; i < 8; i++)
            CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0);
        for (int i = 0; i < 8; i++)
            pthread_join(t[i], NULL);
    }

    /* fork: snapshot semantics, and the child cannot damage the parent's heap */
    size_t big = (size_t)16 << 20;
    char *shared = malloc(4096), *bigb = malloc(big);
    CHECK(shared && bigb);
    memset(shared, 'P', 4096);
    memset(bigb, 'B', big);
    int to_child[2], to_parent[2];
    CHECK(pipe(to_child) == 0 && pipe(to_parent) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        char go;
        int bad = 0;
        if (read(to_child[0], &go, 1) != 1) /* the parent has written 'Q' by now */
            _exit(10);
        for (int i = 0; i < 4096; i++)
            bad |= shared[i] != 'P';
        memset(shared, 'C', 4096);
        free(bigb); /* a large free: the engine may punch holes, in the child's copy only */
        void *keep[1000];
        for (int i = 0; i < 1000; i++) {
            keep[i] = malloc((size_t)(i % 50) * 100 + 1);
            bad |= keep[i] == NULL;
            memset(keep[i], 'c', (size_t)(i % 50) * 100 + 1);
        }
        size_t lots = (size_t)400 << 20; /* more than the parent ever mapped: the child grows */
        char *more = malloc(lots);
        bad |= more == NULL;
        if (more)
            memset(more, 'm', lots);
        free(more);
        /* freed pages are punched and reused as known-zero: calloc must still see zeros */
        unsigned char *cz = calloc(1, lots);
        bad |= cz == NULL;
        for (size_t i = 0; cz && i < lots; i += 4096)
            bad |= cz[i] != 0 ? 2 : 0;
        free(cz);
        for (int i = 0; i < 1000; i++)
            free(keep[i]);
        char done = 'x';
        if (write(to_parent[1], &done, 1) != 1)
            bad = 1;
        _exit(bad ? 11 : 0);
    }
    CHECK(pid > 0);
    memset(shared, 'Q', 4096);
    char go = 'g', done;
    CHECK(write(to_child[1], &go, 1) == 1);
    CHECK(read(to_parent[0], &done, 1) == 1);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int intact = 1;
    for (int i = 0; i < 4096; i++)
        intact &= shared[i] == 'Q';
    for (size_t i = 0; i < big; i += 512)
        intact &= bigb[i] == 'B';
    CHECK(intact);
    free(shared);
    free(bigb);
    void *after = malloc(1000);
    CHECK(after && in_heap(after));
    free(after);

    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all ok\n");
    return 0;
}
