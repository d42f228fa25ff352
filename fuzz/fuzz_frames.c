/* fuzz_frames.c - libFuzzer target for the wire-frame decoder and the
 * handshake payload decoders.
 *
 * The input is a byte stream received from an untrusted peer. It is fed,
 * in chunk sizes derived from the input, into a ppc_buf the way the
 * engine's readers do (src/core/pool.c on_readable: reserve room for the
 * announced frame, read, parse, consume), and every complete frame is
 * decoded: HELLO / WELCOME payloads with the auth.h decoders (those frames
 * travel inside TLS), the first bytes as a TLS preamble (tls.h)
 * (discovery datagrams: fuzz_announce.c).
 *
 * Besides "no crash, no leak, no out-of-bounds access" (ASan, UBSan,
 * LeakSanitizer) it checks:
 *  - ppc_frame_parse's contract on every call (return codes, header
 *    fields, payload pointer and length within what was given, lengths
 *    over the limit rejected, f.len = 0 before a complete header);
 *  - nothing is reserved for a frame beyond header + limit;
 *  - the chunked reader sees exactly the frames, payload bytes and final
 *    status that a single parse pass over the whole input sees;
 *  - decoders accept exactly the right length and magic, and re-encoding
 *    a decoded payload gives back the same bytes;
 *  - ppc_auth_equal agrees with memcmp;
 *  - ppc_frame_put re-encodes every frame to the same bytes;
 *  - OOB blob and hole-table parsers accept only tables inside the input.
 * Built with -fsanitize=fuzzer (clang) or with fuzz/standalone.c (any C
 * compiler); see fuzz/README.md. */
#include <stdint.h>
#include <string.h>

#include "auth.h"
#include "buf.h"
#include "frame.h"
#include "result.h"
#include "shm.h"
#include "tls.h"
#include "vm.h"
#include "fuzz_common.h"

#define MAX_CHUNK 65536u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct pass {
    uint64_t nframes;
    uint64_t digest; /* of every frame's header fields and stream offset */
    int status;      /* PPC_FRAME_NEED_MORE at end of input, or the error */
    size_t end;      /* stream offset of the first byte not consumed */
} pass;

static void mix(uint64_t *d, uint64_t v)
{
    *d ^= v;
    *d *= 0x100000001b3ull;
    *d ^= *d >> 29;
}

static int known_type(uint8_t t)
{
    return (t >= PPC_F_INIT && t <= PPC_F_VMOK) || (t >= PPC_F_HELLO && t <= PPC_F_TYPE_MAX) ||
           t == PPC_F_KILL;
}

/* The contract of ppc_frame_parse(head, avail, FUZZ_FRAME_LIMIT, f) -> rc. */
static void check_parse(int rc, const uint8_t *head, size_t avail, const ppc_frame *f)
{
    if (avail < PPC_FRAME_HDR) {
        FUZZ_ASSERT(rc == PPC_FRAME_NEED_MORE);
        FUZZ_ASSERT(f->len == 0);
        return;
    }
    FUZZ_ASSERT(f->len == ppc_get_u64(head));
    FUZZ_ASSERT(f->id == ppc_get_u64(head + 8));
    FUZZ_ASSERT(f->type == head[16] && f->flags == head[17]);
    FUZZ_ASSERT(f->aux == (uint16_t)(head[18] | head[19] << 8));
    FUZZ_ASSERT(f->extra == ppc_get_u32(head + 20));
    switch (rc) {
    case PPC_FRAME_OK:
        FUZZ_ASSERT(known_type(f->type));
        FUZZ_ASSERT(f->len <= FUZZ_FRAME_LIMIT);
        FUZZ_ASSERT(f->len <= avail - PPC_FRAME_HDR);
        FUZZ_ASSERT(f->payload == head + PPC_FRAME_HDR);
        break;
    case PPC_FRAME_NEED_MORE:
        FUZZ_ASSERT(known_type(f->type));
        FUZZ_ASSERT(f->len <= FUZZ_FRAME_LIMIT);
        FUZZ_ASSERT(f->len > avail - PPC_FRAME_HDR);
        break;
    case PPC_FRAME_ETOOBIG:
        FUZZ_ASSERT(known_type(f->type));
        FUZZ_ASSERT(f->len > FUZZ_FRAME_LIMIT);
        break;
    case PPC_FRAME_ETYPE:
        FUZZ_ASSERT(!known_type(f->type));
        break;
    default:
        FUZZ_ASSERT(!"ppc_frame_parse returned an unknown code");
    }
}

/* Run the payload decoders on one complete frame. */
static void decode_payload(pass *ps, const ppc_frame *f)
{
    const uint8_t *p = f->payload;
    size_t n = (size_t)f->len;
    int magic_ok = n >= 4 && memcmp(p, "PPC\2", 4) == 0;
    (void)ps;

    switch (f->type) {
    case PPC_F_HELLO: {
        ppc_hello h;
        int rc = ppc_hello_decode(p, n, &h);
        FUZZ_ASSERT((rc == 0) == (n == PPC_HELLO_LEN && magic_ok));
        if (rc == 0) {
            uint8_t re[PPC_HELLO_LEN];
            ppc_hello_encode(&h, re);
            FUZZ_ASSERT(memcmp(re, p, PPC_HELLO_LEN) == 0);
        }
        break;
    }
    case PPC_F_WELCOME: {
        ppc_welcome w;
        int rc = ppc_welcome_decode(p, n, &w);
        FUZZ_ASSERT((rc == 0) == (n == PPC_WELCOME_LEN && magic_ok));
        if (rc == 0) {
            uint8_t re[PPC_WELCOME_LEN];
            ppc_welcome_encode(&w, re);
            FUZZ_ASSERT(memcmp(re, p, PPC_WELCOME_LEN) == 0);
        }
        break;
    }
    default:
        break;
    }
}

/* A complete frame at stream offset `at` of the input. */
static void on_frame(pass *ps, const uint8_t *in, size_t size, size_t at, const ppc_frame *f,
                     int decode)
{
    FUZZ_ASSERT(at <= size && size - at >= PPC_FRAME_HDR);
    FUZZ_ASSERT(f->len <= size - at - PPC_FRAME_HDR);
    /* The bytes the parser handed out are the peer's bytes at that offset. */
    FUZZ_ASSERT(memcmp(f->payload - PPC_FRAME_HDR, in + at, PPC_FRAME_HDR + (size_t)f->len) == 0);
    ps->nframes++;
    mix(&ps->digest, at);
    mix(&ps->digest, f->len);
    mix(&ps->digest, f->id);
    mix(&ps->digest, (uint64_t)f->type | (uint64_t)f->flags << 8 | (uint64_t)f->aux << 16 |
                         (uint64_t)f->extra << 32);
    if (decode) {
        /* the encoder writes the same bytes back (payload in two pieces) */
        ppc_buf out = {0};
        size_t n = (size_t)f->len, half = n / 2;
        FUZZ_ASSERT(ppc_frame_put(&out, f->type, f->flags, f->aux, f->extra, f->id, f->payload,
                                  half, f->payload + half, n - half) == 0);
        FUZZ_ASSERT(ppc_buf_unread(&out) == PPC_FRAME_HDR + n);
        FUZZ_ASSERT(memcmp(ppc_buf_head(&out), in + at, PPC_FRAME_HDR + n) == 0);
        ppc_buf_free(&out);
        decode_payload(ps, f);
    }
}

/* Single pass over the whole input, as if it had arrived at once. */
static void parse_whole(const uint8_t *in, size_t size, pass *ps)
{
    size_t at = 0;
    for (;;) {
        ppc_frame f;
        int rc = ppc_frame_parse(in + at, size - at, FUZZ_FRAME_LIMIT, &f);
        check_parse(rc, in + at, size - at, &f);
        if (rc != PPC_FRAME_OK) {
            ps->status = rc;
            break;
        }
        on_frame(ps, in, size, at, &f, 0);
        at += PPC_FRAME_HDR + (size_t)f.len;
    }
    ps->end = at;
}

static size_t pick_chunk(uint64_t *rs, size_t left)
{
    uint64_t r = fuzz_rand(rs);
    size_t c;
    switch (r & 7) {
    case 0:
        c = 1;
        break;
    case 1:
    case 2:
    case 3:
        c = 1 + (size_t)((r >> 8) % 24);
        break;
    case 4:
    case 5:
        c = 1 + (size_t)((r >> 8) % 256);
        break;
    case 6:
        c = 1 + (size_t)((r >> 8) % MAX_CHUNK);
        break;
    default:
        c = left;
        break;
    }
    return c < left ? c : left;
}

/* The input arriving in pieces, read the way the engine reads a socket. */
static void parse_chunked(const uint8_t *in, size_t size, pass *ps)
{
    ppc_buf b = {0};
    uint64_t rs = fuzz_hash(in, size) ^ ((uint64_t)size << 32) ^ 0x5eed;
    size_t fed = 0; /* bytes of the input appended so far */
    size_t at = 0;  /* stream offset of the buffer's head */
    ps->status = PPC_FRAME_NEED_MORE;
    for (;;) {
        ppc_frame f;
        size_t avail = ppc_buf_unread(&b);
        FUZZ_ASSERT(avail == fed - at);
        const uint8_t *head = ppc_buf_head(&b);
        int rc = ppc_frame_parse(head, avail, FUZZ_FRAME_LIMIT, &f);
        check_parse(rc, head, avail, &f);
        if (rc < 0) {
            ps->status = rc;
            break;
        }
        if (rc == PPC_FRAME_OK) {
            on_frame(ps, in, size, at, &f, 1);
            size_t used = PPC_FRAME_HDR + (size_t)f.len;
            ppc_buf_consume(&b, used);
            at += used;
            if (ppc_buf_unread(&b) == 0 && (fuzz_rand(&rs) & 7) == 0)
                ppc_buf_shrink(&b, (fuzz_rand(&rs) & 1) ? 0 : 4096);
            continue;
        }
        if (fed == size)
            break; /* the peer closed mid-frame */
        size_t chunk = pick_chunk(&rs, size - fed);
        size_t want = chunk;
        if (f.len > 0) {
            size_t need = PPC_FRAME_HDR + (size_t)f.len - avail;
            if (need > want)
                want = need;
        }
        /* Only checked lengths may size an allocation. */
        FUZZ_ASSERT(want <= PPC_FRAME_HDR + FUZZ_FRAME_LIMIT + MAX_CHUNK);
        FUZZ_ASSERT(ppc_buf_reserve(&b, want) == 0);
        FUZZ_ASSERT(b.cap - b.len >= want);
        FUZZ_ASSERT(b.cap <= 8 * (PPC_FRAME_HDR + FUZZ_FRAME_LIMIT + MAX_CHUNK));
        size_t room = b.cap - b.len;
        size_t n = chunk < room ? chunk : room;
        memcpy(b.data + b.len, in + fed, n);
        b.len += n;
        fed += n;
    }
    ps->end = at;
    FUZZ_ASSERT(ps->status < 0 || ppc_buf_unread(&b) == size - at);
    ppc_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pass whole, chunked;
    memset(&whole, 0, sizeof whole);
    memset(&chunked, 0, sizeof chunked);
    parse_whole(data, size, &whole);
    parse_chunked(data, size, &chunked);
    FUZZ_ASSERT(whole.status == chunked.status);
    FUZZ_ASSERT(whole.nframes == chunked.nframes);
    FUZZ_ASSERT(whole.digest == chunked.digest);
    FUZZ_ASSERT(whole.end == chunked.end);

    /* The first bytes as the cleartext TLS preamble a client reads. */
    if (size >= PPC_TLS_PREAMBLE_LEN) {
        int mode;
        uint8_t salt[PPC_TLS_SALT_LEN], re[PPC_TLS_PREAMBLE_LEN];
        if (ppc_tls_preamble_decode(data, PPC_TLS_PREAMBLE_LEN, &mode, salt) == 0) {
            ppc_tls_preamble_encode(mode, salt, re);
            FUZZ_ASSERT(memcmp(re, data, PPC_TLS_PREAMBLE_LEN) == 0);
        }
    }
    /* Two MACs from the input: ppc_auth_equal agrees with memcmp. */
    if (size >= 2 * PPC_MAC_LEN)
        FUZZ_ASSERT(ppc_auth_equal(data, data + PPC_MAC_LEN) ==
                    (memcmp(data, data + PPC_MAC_LEN, PPC_MAC_LEN) == 0));

    /* The raw input as an out-of-band pickle blob (a worker's result):
     * whatever load accepts stays inside the input, in a private copy. */
    ppc_oob o;
    if (ppc_oob_load(data, size, &o) == 0) {
        size_t table = size - ppc_oob_tail_len(o.nbufs);
        FUZZ_ASSERT(o.stream_len <= table && o.nbufs <= PPC_OOB_MAX_BUFS);
        FUZZ_ASSERT(o.nbufs == 0 || ((const uint8_t *)o.bufs + 16 * (size_t)o.nbufs <= data ||
                                     (const uint8_t *)o.bufs >= data + size));
        for (uint32_t i = 0; i < o.nbufs; i++)
            FUZZ_ASSERT(o.bufs[2 * i] <= table && o.bufs[2 * i + 1] <= table - o.bufs[2 * i]);
        size_t sl;
        uint32_t nb;
        FUZZ_ASSERT(ppc_oob_parse(data, size, &sl, &nb) == 0 && sl == o.stream_len &&
                    nb == o.nbufs);
        ppc_oob_release(&o);
    }

    /* The raw input as a segment mapping whose blob is its first half,
     * followed by a hole table (vm.h): what parse accepts names holes
     * inside the blob, in order, without overlap, and fits the mapping;
     * the holes are a private copy. */
    ppc_vm_src vs;
    if (ppc_vm_table_parse(data, size, size / 2, &vs) == 0) {
        FUZZ_ASSERT(vs.ngaps >= 1 && vs.ngaps <= PPC_VM_MAX_GAPS && vs.pid > 0);
        FUZZ_ASSERT(ppc_vm_table_at(size / 2) + ppc_vm_table_len(vs.ngaps) <= size);
        uint64_t end = 0;
        for (uint32_t i = 0; i < vs.ngaps; i++) {
            ppc_vm_gap g;
            ppc_vm_gap_get(&vs, i, &g);
            FUZZ_ASSERT(g.len > 0 && g.off >= end && g.off + g.len <= size / 2);
            end = g.off + g.len;
        }
        ppc_vm_src_free(&vs);
    }

    /* The raw input as a job's result body (result.h): what parse accepts
     * stays inside the input, and a reference it yields is the data. */
    ppc_result rr;
    if (ppc_result_parse(data, size, &rr) == 0) {
        FUZZ_ASSERT(rr.kind <= PPC_R_EXCEPTION);
        FUZZ_ASSERT(rr.out == data + PPC_RESULT_BODY_HEAD);
        FUZZ_ASSERT(rr.data == rr.out + rr.outlen && rr.data + rr.datalen == data + size);
        ppc_shm_ref ref;
        if (ppc_result_ref(&rr, &ref) == 0)
            FUZZ_ASSERT(rr.datalen == PPC_SHM_REF_LEN && ref.len > 0);
    }
    return 0;
}
