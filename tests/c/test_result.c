/* test_result.c - unit tests of result.c: a RESULT frame written by the
 * encoder and read back by the decoder (value, exception, printed output,
 * a segment reference), a body made for an inline copy, and rejection of
 * truncated bodies, output running past the end, unknown kinds and
 * references of the wrong size. */
#include "ctest.h"

#include <stdlib.h>

#include "frame.h"
#include "result.h"

TEST(result_frame_roundtrip)
{
    ppc_buf b = {0};
    const char out[] = "printed\n";
    uint8_t *d = ppc_result_put(&b, 42, PPC_AUX_OOB, 123456789, PPC_R_EXCEPTION, out,
                                sizeof out - 1, 5);
    REQUIRE(d != NULL);
    memcpy(d, "hello", 5);
    /* a second frame after it: the first one's length must be right */
    REQUIRE(ppc_result_put(&b, 43, 0, 7, PPC_R_VALUE, NULL, 0, 0) != NULL);
    ppc_frame f;
    REQUIRE(ppc_frame_parse(ppc_buf_head(&b), ppc_buf_unread(&b), 1 << 20, &f) == PPC_FRAME_OK);
    CHECK_EQ_INT(f.type, PPC_F_RESULT);
    CHECK_EQ_U64(f.id, 42);
    CHECK_EQ_INT(f.aux, PPC_AUX_OOB);
    uint64_t ns;
    const uint8_t *body;
    size_t n;
    REQUIRE(ppc_result_split(f.payload, (size_t)f.len, &ns, &body, &n) == 0);
    CHECK_EQ_U64(ns, 123456789);
    ppc_result r;
    REQUIRE(ppc_result_parse(body, n, &r) == 0);
    CHECK_EQ_INT(r.kind, PPC_R_EXCEPTION);
    CHECK_MEM(r.out, r.outlen, out, sizeof out - 1);
    CHECK_MEM(r.data, r.datalen, "hello", 5);
    ppc_buf_consume(&b, PPC_FRAME_HDR + (size_t)f.len);
    REQUIRE(ppc_frame_parse(ppc_buf_head(&b), ppc_buf_unread(&b), 1 << 20, &f) == PPC_FRAME_OK);
    CHECK_EQ_U64(f.id, 43);
    REQUIRE(ppc_result_split(f.payload, (size_t)f.len, &ns, &body, &n) == 0);
    REQUIRE(ppc_result_parse(body, n, &r) == 0);
    CHECK(r.kind == PPC_R_VALUE && r.outlen == 0 && r.datalen == 0 && ns == 7);
    ppc_buf_free(&b);
}

TEST(result_segment_reference)
{
    ppc_buf b = {0};
    ppc_shm_ref ref = {1234, 17, 99, 4096}, got;
    uint8_t *d = ppc_result_put(&b, 1, PPC_AUX_SHM, 0, PPC_R_VALUE, "x", 1, PPC_SHM_REF_LEN);
    REQUIRE(d != NULL);
    ppc_shm_ref_put(d, &ref);
    ppc_frame f;
    REQUIRE(ppc_frame_parse(ppc_buf_head(&b), ppc_buf_unread(&b), 1 << 20, &f) == PPC_FRAME_OK);
    uint64_t ns;
    const uint8_t *body;
    size_t n;
    ppc_result r;
    REQUIRE(ppc_result_split(f.payload, (size_t)f.len, &ns, &body, &n) == 0);
    REQUIRE(ppc_result_parse(body, n, &r) == 0);
    REQUIRE(ppc_result_ref(&r, &got) == 0);
    CHECK(got.pid == 1234 && got.fd == 17 && got.id == 99 && got.len == 4096);
    r.datalen--; /* not exactly a reference */
    CHECK(ppc_result_ref(&r, &got) < 0);
    ref.len = 0; /* names no blob */
    ppc_shm_ref_put(d, &ref);
    REQUIRE(ppc_result_parse(body, n, &r) == 0);
    CHECK(ppc_result_ref(&r, &got) < 0);
    ppc_buf_free(&b);
}

TEST(result_body_new_for_inline_copies)
{
    uint8_t *body = NULL;
    size_t n = 0;
    uint8_t *d = ppc_result_body_new(PPC_R_VALUE, (const uint8_t *)"out", 3, 4, &body, &n);
    REQUIRE(d != NULL && body != NULL);
    memcpy(d, "blob", 4);
    CHECK_EQ_U64(n, PPC_RESULT_BODY_HEAD + 3 + 4);
    ppc_result r;
    REQUIRE(ppc_result_parse(body, n, &r) == 0);
    CHECK_MEM(r.out, r.outlen, "out", 3);
    CHECK_MEM(r.data, r.datalen, "blob", 4);
    free(body);
    CHECK(ppc_result_body_new(0, NULL, 0, SIZE_MAX, &body, &n) == NULL);
}

TEST(result_rejects_malformed_bodies)
{
    uint8_t body[16] = {0};
    ppc_result r;
    uint64_t ns;
    const uint8_t *p;
    size_t n;
    CHECK(ppc_result_split(body, 7, &ns, &p, &n) < 0);
    CHECK(ppc_result_parse(body, 4, &r) < 0);  /* truncated head */
    CHECK(ppc_result_parse(NULL, 0, &r) < 0);
    REQUIRE(ppc_result_parse(body, 5, &r) == 0); /* empty value */
    ppc_put_u32(body + 1, 12);
    CHECK(ppc_result_parse(body, 16, &r) < 0); /* output past the end */
    CHECK(ppc_result_parse(body, 17 - 1, &r) < 0);
    ppc_put_u32(body + 1, 11);
    REQUIRE(ppc_result_parse(body, 16, &r) == 0);
    CHECK(r.outlen == 11 && r.datalen == 0);
    ppc_put_u32(body + 1, 0xffffffffu);
    CHECK(ppc_result_parse(body, 16, &r) < 0);
    ppc_put_u32(body + 1, 0);
    body[0] = 2; /* unknown kind */
    CHECK(ppc_result_parse(body, 16, &r) < 0);
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}
