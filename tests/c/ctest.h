/* ctest.h - a minimal test harness for the C unit tests.
 *
 *   TEST(name) { CHECK(x == 1); CHECK_EQ_INT(a, b); REQUIRE(p != NULL); }
 *   int main(int argc, char **argv) { return ctest_main(argc, argv); }
 *
 * Tests register themselves (a constructor per TEST) and run in the order
 * they appear in the file. CHECK_* record a failure and go on; REQUIRE*
 * record a failure and leave the test. Every test runs under a watchdog
 * (CTEST_TIMEOUT_S, default 120 s): a hung test is reported and the program
 * exits non-zero. Arguments, when given, select tests whose name contains
 * one of them. The last line printed is exactly "N passed, M failed" (tests,
 * not checks) and the exit status is non-zero when M > 0. */
#ifndef PPC_CTEST_H
#define PPC_CTEST_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef void (*ctest_fn)(void);
typedef struct ctest_case {
    const char *name;
    ctest_fn fn;
} ctest_case;

#define CTEST_MAX 256
static ctest_case ctest_cases[CTEST_MAX];
static int ctest_ncases;
static int ctest_cur_failed;   /* failures of the running test */
static const char *ctest_cur_name = "";
static unsigned long ctest_checks;

static inline void ctest_register(const char *name, ctest_fn fn)
{
    if (ctest_ncases < CTEST_MAX) {
        ctest_cases[ctest_ncases].name = name;
        ctest_cases[ctest_ncases].fn = fn;
        ctest_ncases++;
    }
}

#define TEST(name)                                                                                 \
    static void name(void);                                                                        \
    __attribute__((constructor)) static void ctest_reg_##name(void)                                \
    {                                                                                              \
        ctest_register(#name, name);                                                               \
    }                                                                                              \
    static void name(void)

static inline void ctest_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void ctest_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  FAIL %s:%d [%s]: ", file, line, ctest_cur_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    ctest_cur_failed++;
}

#define CHECK(c)                                                                                   \
    (ctest_checks++, (c) ? 1 : (ctest_fail(__FILE__, __LINE__, "CHECK(%s)", #c), 0))

#define CHECK_MSG(c, ...)                                                                          \
    (ctest_checks++, (c) ? 1 : (ctest_fail(__FILE__, __LINE__, __VA_ARGS__), 0))

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long ctest_a_ = (long long)(a), ctest_b_ = (long long)(b);                            \
        ctest_checks++;                                                                            \
        if (ctest_a_ != ctest_b_)                                                                  \
            ctest_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, ctest_a_, ctest_b_);  \
    } while (0)

#define CHECK_EQ_U64(a, b)                                                                         \
    do {                                                                                           \
        uint64_t ctest_a_ = (uint64_t)(a), ctest_b_ = (uint64_t)(b);                               \
        ctest_checks++;                                                                            \
        if (ctest_a_ != ctest_b_)                                                                  \
            ctest_fail(__FILE__, __LINE__, "%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, ctest_a_,  \
                       ctest_b_);                                                                  \
    } while (0)

/* Memory equality of two byte ranges (lengths compared first). */
#define CHECK_MEM(p1, n1, p2, n2)                                                                  \
    do {                                                                                           \
        size_t ctest_n1_ = (size_t)(n1), ctest_n2_ = (size_t)(n2);                                 \
        ctest_checks++;                                                                            \
        if (ctest_n1_ != ctest_n2_)                                                                \
            ctest_fail(__FILE__, __LINE__, "length of %s (%zu) != length of %s (%zu)", #p1,        \
                       ctest_n1_, #p2, ctest_n2_);                                                 \
        else if (ctest_n1_ && memcmp((p1), (p2), ctest_n1_) != 0)                                  \
            ctest_fail(__FILE__, __LINE__, "bytes of %s != bytes of %s", #p1, #p2);                \
    } while (0)

/* A (not necessarily NUL-terminated) byte range contains a C string. */
static inline int ctest_contains(const void *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    if (!hay || m > n)
        return 0;
    return memmem(hay, n, needle, m) != NULL;
}
#define CHECK_CONTAINS(p, n, s)                                                                    \
    do {                                                                                           \
        ctest_checks++;                                                                            \
        if (!ctest_contains((p), (size_t)(n), (s)))                                                \
            ctest_fail(__FILE__, __LINE__, "%s does not contain \"%s\" (it is \"%.*s\")", #p, (s), \
                       (int)((n) > 300 ? 300 : (n)), (p) ? (const char *)(p) : "");                \
    } while (0)

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!CHECK(c))                                                                             \
            return;                                                                                \
    } while (0)

static inline int64_t ctest_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void ctest_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void ctest_on_alarm(int sig)
{
    (void)sig;
    static const char m1[] = "\n  TIMEOUT in test ";
    ssize_t r = write(2, m1, sizeof m1 - 1);
    r = write(2, ctest_cur_name, strlen(ctest_cur_name));
    r = write(2, "\n", 1);
    (void)r;
    _exit(3);
}

static inline int ctest_selected(const char *name, int argc, char **argv)
{
    if (argc <= 1)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i]))
            return 1;
    return 0;
}

static inline int ctest_main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    unsigned timeout = 120;
    const char *t = getenv("CTEST_TIMEOUT_S");
    if (t && atoi(t) > 0)
        timeout = (unsigned)atoi(t);
    signal(SIGALRM, ctest_on_alarm);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < ctest_ncases; i++) {
        if (!ctest_selected(ctest_cases[i].name, argc, argv))
            continue;
        ctest_cur_name = ctest_cases[i].name;
        ctest_cur_failed = 0;
        int64_t t0 = ctest_now_ms();
        alarm(timeout);
        ctest_cases[i].fn();
        alarm(0);
        int64_t dt = ctest_now_ms() - t0;
        if (ctest_cur_failed) {
            failed++;
            printf("FAIL %s (%d failed checks, %lld ms)\n", ctest_cur_name, ctest_cur_failed,
                   (long long)dt);
        } else {
            passed++;
            printf("ok   %s (%lld ms)\n", ctest_cur_name, (long long)dt);
        }
    }
    printf("(%lu checks)\n", ctest_checks);
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed > 0;
}

#endif
