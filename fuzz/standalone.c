/* standalone.c - a main() for the fuzz targets when libFuzzer is not
 * available (gcc, or clang without compiler-rt): it replays the given
 * corpus files, then runs N deterministic pseudo-random mutations of them
 * through LLVMFuzzerTestOneInput. Build it with -fsanitize=address,undefined
 * so that memory errors and leaks are caught.
 *
 *   standalone [-n MUTATIONS] [-s SEED] [-m MAX_LEN] [-o CRASH_FILE] PATH...
 *
 * PATH is a file or a directory of files. On a crash (sanitizer report,
 * failed invariant, fatal signal) the input that caused it is written to
 * CRASH_FILE (default ./crash-standalone) and the process exits non-zero.
 * Output: one summary line with the number of executions. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Provided by the sanitizer runtimes; null when built without them. */
extern void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

typedef struct seed {
    uint8_t *data;
    size_t len;
    char *name;
} seed;

static seed *seeds;
static size_t nseeds, capseeds;

/* The input being run, for the crash file. */
static const uint8_t *cur_data;
static size_t cur_len;
static const char *crash_path = "crash-standalone";
static const char *cur_what = "";

static void save_crash(void)
{
    static volatile sig_atomic_t saved;
    if (saved || !cur_data)
        return;
    saved = 1;
    int fd = open(crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        size_t off = 0;
        while (off < cur_len) {
            ssize_t w = write(fd, cur_data + off, cur_len - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        close(fd);
    }
    static const char msg1[] = "\nstandalone: CRASH while running ";
    static const char msg2[] = "; input saved to ";
    ssize_t ignored = write(2, msg1, sizeof msg1 - 1);
    ignored = write(2, cur_what, strlen(cur_what));
    ignored = write(2, msg2, sizeof msg2 - 1);
    ignored = write(2, crash_path, strlen(crash_path));
    ignored = write(2, "\n", 1);
    (void)ignored;
}

static void on_signal(int sig)
{
    save_crash();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void add_seed(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "standalone: out of memory reading %s\n", path);
        exit(2);
    }
    if (nseeds == capseeds) {
        capseeds = capseeds ? 2 * capseeds : 64;
        seeds = realloc(seeds, capseeds * sizeof *seeds);
        if (!seeds)
            exit(2);
    }
    seeds[nseeds].data = buf;
    seeds[nseeds].len = len;
    seeds[nseeds].name = strdup(path);
    nseeds++;
}

static int cmp_seed(const void *a, const void *b)
{
    return strcmp(((const seed *)a)->name, ((const seed *)b)->name);
}

static void add_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        perror(path);
        exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
        add_seed(path);
        return;
    }
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        exit(2);
    }
    struct dirent *e;
    size_t first = nseeds;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        size_t pl = strlen(path) + strlen(e->d_name) + 2;
        char *p = malloc(pl);
        if (!p)
            exit(2);
        snprintf(p, pl, "%s/%s", path, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            add_seed(p);
        free(p);
    }
    closedir(d);
    /* readdir order is not portable: sort so runs are reproducible */
    qsort(seeds + first, nseeds - first, sizeof *seeds, cmp_seed);
}

static const uint64_t interesting64[] = {
    0, 1, 4, 24, 32, 40, 64, 76, 0xff, 0xffff, 0xffffffffull, 0x100000000ull,
    (1u << 20) - 1, 1u << 20, (1u << 20) + 1, (uint64_t)1 << 40, (uint64_t)1 << 62,
    (uint64_t)1 << 63, ((uint64_t)1 << 63) - 1, UINT64_MAX, UINT64_MAX - 23, FUZZ_NOW,
};
static const uint8_t interesting8[] = {0,  1,  2,  3,  4,  5,  15, 16,   17,   18,  19,
                                       20, 21, 22, 23, 24, 'P', 'C', 0x7f, 0x80, 0xff};

/* Apply one random edit to buf[0..*len), capacity cap. */
static void mutate_once(uint64_t *rs, uint8_t *buf, size_t *len, size_t cap)
{
    uint64_t r = fuzz_rand(rs);
    size_t n = *len;
    switch (r % 11) {
    case 0: /* flip a bit */
        if (n)
            buf[fuzz_rand(rs) % n] ^= (uint8_t)(1u << (r >> 8) % 8);
        break;
    case 1: /* random byte */
        if (n)
            buf[fuzz_rand(rs) % n] = (uint8_t)(r >> 8);
        break;
    case 2: /* interesting byte, often at a header's type position */
        if (n) {
            size_t at = (r >> 8) & 1 && n > 16 ? 16 : fuzz_rand(rs) % n;
            buf[at] = interesting8[fuzz_rand(rs) % sizeof interesting8];
        }
        break;
    case 3: /* interesting u64, often at a header's length position */
        if (n >= 8) {
            size_t at = (r >> 8) & 1 ? 0 : fuzz_rand(rs) % (n - 7);
            uint64_t v = interesting64[fuzz_rand(rs) % (sizeof interesting64 / 8)];
            if ((r >> 9) & 1)
                v += (fuzz_rand(rs) % 5) - 2;
            for (int i = 0; i < 8; i++)
                buf[at + i] = (uint8_t)(v >> (8 * i));
        }
        break;
    case 4: { /* insert random bytes */
        size_t k = 1 + fuzz_rand(rs) % 16, at = n ? fuzz_rand(rs) % (n + 1) : 0;
        if (n + k > cap)
            break;
        memmove(buf + at + k, buf + at, n - at);
        for (size_t i = 0; i < k; i++)
            buf[at + i] = (uint8_t)fuzz_rand(rs);
        *len = n + k;
        break;
    }
    case 5: { /* delete a range */
        if (!n)
            break;
        size_t at = fuzz_rand(rs) % n, k = 1 + fuzz_rand(rs) % (n - at < 32 ? n - at : 32);
        memmove(buf + at, buf + at + k, n - at - k);
        *len = n - k;
        break;
    }
    case 6: { /* duplicate a range (repeats whole frames when lucky) */
        if (!n)
            break;
        size_t from = fuzz_rand(rs) % n, k = 1 + fuzz_rand(rs) % (n - from);
        if (n + k > cap)
            break;
        size_t at = fuzz_rand(rs) % (n + 1);
        memmove(buf + at + k, buf + at, n - at);
        memmove(buf + at, buf + (from < at ? from : from + k), k);
        *len = n + k;
        break;
    }
    case 7: { /* splice: keep a prefix, append another seed's suffix */
        const seed *o = &seeds[fuzz_rand(rs) % nseeds];
        size_t keep = n ? fuzz_rand(rs) % (n + 1) : 0;
        size_t from = o->len ? fuzz_rand(rs) % (o->len + 1) : 0;
        size_t k = o->len - from;
        if (keep + k > cap)
            k = cap - keep;
        memcpy(buf + keep, o->data + from, k);
        *len = keep + k;
        break;
    }
    case 8: /* truncate */
        if (n)
            *len = fuzz_rand(rs) % n;
        break;
    case 9: { /* append a frame header with a small length and known type */
        if (n + 24 + 80 > cap)
            break;
        uint8_t *h = buf + n;
        uint64_t plen = fuzz_rand(rs) % 81;
        memset(h, 0, 24);
        for (int i = 0; i < 8; i++)
            h[i] = (uint8_t)(plen >> (8 * i));
        h[16] = interesting8[fuzz_rand(rs) % sizeof interesting8];
        for (size_t i = 0; i < plen; i++)
            h[24 + i] = (uint8_t)fuzz_rand(rs);
        if (plen >= 4 && (r >> 8) & 1)
            memcpy(h + 24, "PPC\1", 4);
        *len = n + 24 + (size_t)plen;
        break;
    }
    default: /* overwrite a range with another seed's bytes */
        if (n) {
            const seed *o = &seeds[fuzz_rand(rs) % nseeds];
            if (!o->len)
                break;
            size_t at = fuzz_rand(rs) % n, from = fuzz_rand(rs) % o->len;
            size_t k = 1 + fuzz_rand(rs) % 32;
            if (k > n - at)
                k = n - at;
            if (k > o->len - from)
                k = o->len - from;
            memcpy(buf + at, o->data + from, k);
        }
        break;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: standalone [-n MUTATIONS] [-s SEED] [-m MAX_LEN] [-o CRASH_FILE] "
                    "PATH...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned long long mutations = 10000, seedval = 1;
    size_t max_len = 16384;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "-n"))
            mutations = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-s"))
            seedval = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-m"))
            max_len = (size_t)strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-o"))
            crash_path = argv[++i];
        else
            usage();
    }
    if (i == argc || max_len < 128)
        usage();
    for (; i < argc; i++)
        add_path(argv[i]);
    if (!nseeds) {
        fprintf(stderr, "standalone: no input files\n");
        return 2;
    }
    if (__sanitizer_set_death_callback)
        __sanitizer_set_death_callback(save_crash);
    signal(SIGABRT, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    signal(SIGILL, on_signal);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long long execs = 0;
    for (size_t s = 0; s < nseeds; s++) {
        /* each seed in a buffer of its exact size, so ASan sees overreads */
        uint8_t *copy = malloc(seeds[s].len ? seeds[s].len : 1);
        if (!copy)
            return 2;
        memcpy(copy, seeds[s].data, seeds[s].len);
        cur_data = copy;
        cur_len = seeds[s].len;
        cur_what = seeds[s].name;
        LLVMFuzzerTestOneInput(copy, seeds[s].len);
        free(copy);
        execs++;
    }

    uint8_t *work = malloc(max_len);
    if (!work)
        return 2;
    uint64_t rs = seedval * 0x9e3779b97f4a7c15ull + 1;
    cur_what = "a mutation";
    for (unsigned long long m = 0; m < mutations; m++) {
        const seed *s = &seeds[fuzz_rand(&rs) % nseeds];
        size_t len = s->len < max_len ? s->len : max_len;
        memcpy(work, s->data, len);
        int edits = 1 + (int)(fuzz_rand(&rs) % 4);
        for (int e = 0; e < edits; e++)
            mutate_once(&rs, work, &len, max_len);
        /* run it from the end of the buffer, so that a read past the input
         * runs past the allocation and ASan reports it */
        uint8_t *in = work + (max_len - len);
        memmove(in, work, len);
        cur_data = in;
        cur_len = len;
        LLVMFuzzerTestOneInput(in, len);
        execs++;
    }
    free(work);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("standalone: %zu corpus files + %llu mutations (seed %llu): %llu execs in %.1f s, "
           "no crash\n",
           nseeds, mutations, seedval, execs, secs);
    for (size_t s = 0; s < nseeds; s++) {
        free(seeds[s].data);
        free(seeds[s].name);
    }
    free(seeds);
    return 0;
}
