/* acme_crypto: keys, JWS, CSRs and certificates, each checked with OpenSSL
 * and jansson independently of the module's own code paths. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "acme_crypto.h"

/* RFC 7515 appendix A.3: the public half of an ES256 key given as a JWK. */
#define RFC7515_X "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
#define RFC7515_Y "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"

/* base64url decoding written here, independent of the module's encoder.
 * Returns the byte count, or -1 on a character outside the alphabet or
 * padding. */
static long b64url_decode(const char *in, unsigned char *out, size_t cap)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned long acc = 0;
    int bits = 0;
    size_t n = 0;
    for (const char *c = in; *c != '\0'; c++) {
        const char *pos = strchr(alphabet, *c);
        if (pos == NULL)
            return -1;
        acc = (acc << 6) | (unsigned long)(pos - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1UL << bits) - 1;
        }
    }
    return (long)n;
}

/* b64url decoding into a NUL-terminated malloc'd string. */
static char *b64url_text(const char *in)
{
    size_t cap = strlen(in) + 1;
    char *out = malloc(cap);
    assert_non_null(out);
    long n = b64url_decode(in, (unsigned char *)out, cap - 1);
    assert_true(n >= 0);
    out[n] = '\0';
    return out;
}

/* The P-256 public key with the given JWK coordinates. */
static EVP_PKEY *key_from_jwk(const char *x, const char *y)
{
    unsigned char point[65];
    point[0] = 0x04; /* uncompressed */
    assert_int_equal(b64url_decode(x, point + 1, 32), 32);
    assert_int_equal(b64url_decode(y, point + 33, 32), 32);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    assert_non_null(bld);
    assert_int_equal(
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0), 1);
    assert_int_equal(
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point), 1);
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *key = NULL;
    assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
    assert_int_equal(EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params), 1);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return key;
}

/* A scratch directory under $TMPDIR, removed (with its files) afterwards. */
static int make_dir(void **state)
{
    const char *base = getenv("TMPDIR");
    char *dir = malloc(4096);
    assert_non_null(dir);
    snprintf(dir, 4096, "%s/acme_crypto.XXXXXX", base != NULL ? base : "/tmp");
    assert_non_null(mkdtemp(dir));
    *state = dir;
    return 0;
}

static int remove_dir(void **state)
{
    char *dir = *state;
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4200];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
    free(dir);
    return 0;
}

/* The number of entries in dir besides . and .. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void assert_b64url(const char *data, size_t len, const char *want)
{
    char *got = acme_b64url((const unsigned char *)data, len);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void test_b64url_vectors(void **state)
{
    (void)state;
    /* RFC 4648 section 10, without the padding. */
    assert_b64url("", 0, "");
    assert_b64url("f", 1, "Zg");
    assert_b64url("fo", 2, "Zm8");
    assert_b64url("foo", 3, "Zm9v");
    assert_b64url("foob", 4, "Zm9vYg");
    assert_b64url("fooba", 5, "Zm9vYmE");
    assert_b64url("foobar", 6, "Zm9vYmFy");
    /* 62 and 63 are '-' and '_' (standard base64: "+/+/" and "+/8="). */
    assert_b64url("\xfb\xff\xbf", 3, "-_-_");
    assert_b64url("\xfb\xff", 2, "-_8");
    assert_b64url("\0\0", 2, "AAA");
}

/* The JWK's x and y are the key's public coordinates, 32 bytes each. */
static void assert_jwk_matches(EVP_PKEY *key, const char *jwk)
{
    const char *head = "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"";
    assert_int_equal(strncmp(jwk, head, strlen(head)), 0);
    /* 32 bytes are 43 base64url characters. */
    assert_int_equal(strlen(jwk), strlen(head) + 43 + strlen("\",\"y\":\"") + 43 + 2);
    assert_int_equal(strncmp(jwk + strlen(head) + 43, "\",\"y\":\"", 7), 0);
    assert_string_equal(jwk + strlen(jwk) - 2, "\"}");

    json_t *obj = json_loads(jwk, 0, NULL);
    assert_non_null(obj);
    assert_int_equal(json_object_size(obj), 4);
    const char *names[] = {OSSL_PKEY_PARAM_EC_PUB_X, OSSL_PKEY_PARAM_EC_PUB_Y};
    const char *members[] = {"x", "y"};
    for (int i = 0; i < 2; i++) {
        unsigned char got[40], want[32];
        assert_int_equal(
            b64url_decode(json_string_value(json_object_get(obj, members[i])), got, sizeof got),
            32);
        BIGNUM *bn = NULL;
        assert_int_equal(EVP_PKEY_get_bn_param(key, names[i], &bn), 1);
        assert_int_equal(BN_bn2binpad(bn, want, 32), 32);
        BN_free(bn);
        assert_memory_equal(got, want, 32);
    }
    json_decref(obj);
}

static void test_jwk_shape_and_point(void **state)
{
    (void)state;
    EVP_PKEY *key = key_from_jwk(RFC7515_X, RFC7515_Y);
    char *jwk = acme_jwk(key);
    assert_non_null(jwk);
    assert_string_equal(jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"" RFC7515_X
                             "\",\"y\":\"" RFC7515_Y "\"}");
    assert_jwk_matches(key, jwk);
    free(jwk);
    EVP_PKEY_free(key);

    key = acme_key_new();
    assert_non_null(key);
    jwk = acme_jwk(key);
    assert_non_null(jwk);
    assert_jwk_matches(key, jwk);
    free(jwk);
    EVP_PKEY_free(key);
}

/* A coordinate with a leading zero byte is still 32 bytes (left-padded). */
static void test_jwk_pads_short_coordinates(void **state)
{
    (void)state;
    for (int tries = 0; tries < 8192; tries++) {
        EVP_PKEY *key = acme_key_new();
        BIGNUM *x = NULL;
        assert_int_equal(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x), 1);
        int short_x = BN_num_bytes(x) < 32;
        BN_free(x);
        if (short_x) {
            char *jwk = acme_jwk(key);
            assert_non_null(jwk);
            assert_jwk_matches(key, jwk);
            assert_non_null(strstr(jwk, "\"x\":\"A")); /* the zero byte leads */
            free(jwk);
            EVP_PKEY_free(key);
            return;
        }
        EVP_PKEY_free(key);
    }
    fail_msg("no key with a short x in 8192 tries");
}

static void test_jwk_refuses_other_keys(void **state)
{
    (void)state;
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    assert_non_null(p384);
    assert_null(acme_jwk(p384));
    assert_null(acme_thumbprint(p384));
    assert_null(acme_jws(p384, NULL, "n", "https://x/", "{}"));
    EVP_PKEY_free(p384);
    assert_null(acme_jwk(NULL));
}

/* RFC 7638: b64url(SHA-256(jwk)), computed here with EVP_EncodeBlock. */
static void test_thumbprint(void **state)
{
    (void)state;
    EVP_PKEY *key = key_from_jwk(RFC7515_X, RFC7515_Y);
    char *jwk = acme_jwk(key);
    unsigned char md[32];
    unsigned int mdlen = 0;
    assert_int_equal(EVP_Digest(jwk, strlen(jwk), md, &mdlen, EVP_sha256(), NULL), 1);
    unsigned char b64[64];
    int n = EVP_EncodeBlock(b64, md, (int)mdlen);
    assert_int_equal(n, 44);
    assert_int_equal(b64[43], '=');
    b64[43] = '\0';
    for (int i = 0; i < 43; i++)
        b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    char *tp = acme_thumbprint(key);
    assert_non_null(tp);
    assert_string_equal(tp, (const char *)b64);
    /* The same value from Python's hashlib over the RFC 7515 key's JWK. */
    assert_string_equal(tp, "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
    free(tp);
    free(jwk);
    EVP_PKEY_free(key);
}

/* Verifies a raw r||s ES256 signature over input with key. */
static bool es256_verify(EVP_PKEY *key, const char *input, const unsigned char rs[64])
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, 32, NULL), *s = BN_bin2bn(rs + 32, 32, NULL);
    assert_non_null(sig);
    assert_int_equal(ECDSA_SIG_set0(sig, r, s), 1);
    unsigned char *der = NULL;
    int derlen = i2d_ECDSA_SIG(sig, &der);
    assert_true(derlen > 0);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    int ok =
        EVP_DigestVerify(ctx, der, (size_t)derlen, (const unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    return ok == 1;
}

struct jws_parts {
    char *header;  /* the decoded protected header text */
    json_t *hdr;   /* ... parsed */
    char *payload; /* the decoded payload */
    const char *payload_b64;
    json_t *root;
};

/* Parses a flattened JWS and checks its signature with key: exactly three
 * members, a 64-byte r||s signature that verifies over "protected.payload"
 * and fails over a changed input. */
static void jws_open(EVP_PKEY *key, const char *jws, struct jws_parts *out)
{
    json_error_t e;
    out->root = json_loads(jws, 0, &e);
    assert_non_null(out->root);
    assert_int_equal(json_object_size(out->root), 3);
    const char *prot = json_string_value(json_object_get(out->root, "protected"));
    const char *payload = json_string_value(json_object_get(out->root, "payload"));
    const char *sig = json_string_value(json_object_get(out->root, "signature"));
    assert_non_null(prot);
    assert_non_null(payload);
    assert_non_null(sig);
    unsigned char rs[80];
    assert_int_equal(b64url_decode(sig, rs, sizeof rs), 64);
    size_t len = strlen(prot) + 1 + strlen(payload) + 1;
    char *input = malloc(len);
    snprintf(input, len, "%s.%s", prot, payload);
    assert_true(es256_verify(key, input, rs));
    input[0] ^= 1;
    assert_false(es256_verify(key, input, rs));
    free(input);
    out->header = b64url_text(prot);
    out->hdr = json_loads(out->header, 0, &e);
    assert_non_null(out->hdr);
    out->payload = b64url_text(payload);
    out->payload_b64 = payload;
}

static void jws_close(struct jws_parts *p)
{
    free(p->header);
    free(p->payload);
    json_decref(p->hdr);
    json_decref(p->root);
}

static void test_jws_with_jwk(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *payload = "{\"termsOfServiceAgreed\":true}";
    char *jws = acme_jws(key, NULL, "nonce-1_x", "https://ca.test/acme/new-account", payload);
    assert_non_null(jws);
    struct jws_parts p;
    jws_open(key, jws, &p);
    char *jwk = acme_jwk(key);
    char want[512];
    snprintf(want, sizeof want,
             "{\"alg\":\"ES256\",\"jwk\":%s,\"nonce\":\"nonce-1_x\","
             "\"url\":\"https://ca.test/acme/new-account\"}",
             jwk);
    assert_string_equal(p.header, want);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "alg")), "ES256");
    assert_string_equal(json_string_value(json_object_get(p.hdr, "nonce")), "nonce-1_x");
    assert_string_equal(json_string_value(json_object_get(p.hdr, "url")),
                        "https://ca.test/acme/new-account");
    assert_null(json_object_get(p.hdr, "kid"));
    json_t *want_jwk = json_loads(jwk, 0, NULL);
    assert_true(json_equal(json_object_get(p.hdr, "jwk"), want_jwk));
    json_decref(want_jwk);
    assert_string_equal(p.payload, payload);
    jws_close(&p);
    free(jwk);
    free(jws);
    EVP_PKEY_free(key);
}

static void test_jws_with_kid(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *kid = "https://ca.test/acme/acct/17";
    char *jws = acme_jws(key, kid, "abc", "https://ca.test/acme/new-order", "{\"a\":1}");
    assert_non_null(jws);
    struct jws_parts p;
    jws_open(key, jws, &p);
    assert_string_equal(p.header, "{\"alg\":\"ES256\",\"kid\":\"https://ca.test/acme/acct/17\","
                                  "\"nonce\":\"abc\",\"url\":\"https://ca.test/acme/new-order\"}");
    assert_string_equal(json_string_value(json_object_get(p.hdr, "kid")), kid);
    assert_null(json_object_get(p.hdr, "jwk"));
    assert_string_equal(p.payload, "{\"a\":1}");
    jws_close(&p);
    free(jws);

    /* Another key's signature does not verify. */
    jws = acme_jws(key, kid, "abc", "https://ca.test/", "{}");
    json_t *root = json_loads(jws, 0, NULL);
    unsigned char rs[64];
    assert_int_equal(
        b64url_decode(json_string_value(json_object_get(root, "signature")), rs, sizeof rs), 64);
    char input[512];
    snprintf(input, sizeof input, "%s.%s", json_string_value(json_object_get(root, "protected")),
             json_string_value(json_object_get(root, "payload")));
    EVP_PKEY *other = acme_key_new();
    assert_true(es256_verify(key, input, rs));
    assert_false(es256_verify(other, input, rs));
    EVP_PKEY_free(other);
    json_decref(root);
    free(jws);
    EVP_PKEY_free(key);
}

static void test_jws_post_as_get(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    char *jws = acme_jws(key, "https://ca.test/acct/1", "n0", "https://ca.test/order/9", "");
    assert_non_null(jws);
    assert_non_null(strstr(jws, "\"payload\":\"\""));
    struct jws_parts p;
    jws_open(key, jws, &p); /* verifies over "protected." */
    assert_string_equal(p.payload_b64, "");
    jws_close(&p);
    free(jws);
    EVP_PKEY_free(key);
}

/* Strings in the header are JSON-escaped: a quote cannot break out. */
static void test_jws_escapes_header_strings(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *url = "https://ca.test/\"x\"\\y\n";
    char *jws = acme_jws(key, NULL, "n\"1", url, "{}");
    assert_non_null(jws);
    struct jws_parts p;
    jws_open(key, jws, &p);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "url")), url);
    assert_string_equal(json_string_value(json_object_get(p.hdr, "nonce")), "n\"1");
    assert_int_equal(json_object_size(p.hdr), 4);
    jws_close(&p);
    free(jws);
    assert_null(acme_jws(key, NULL, NULL, "https://x/", "{}"));
    assert_null(acme_jws(key, NULL, "n", NULL, "{}"));
    assert_null(acme_jws(key, NULL, "n", "https://x/", NULL));
    EVP_PKEY_free(key);
}

/* The dNSNames of a GENERAL_NAMES, in order, joined by ','. */
static void dns_list(const GENERAL_NAMES *gens, char *out, size_t cap)
{
    out[0] = '\0';
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        assert_int_equal(gn->type, GEN_DNS);
        size_t used = strlen(out);
        snprintf(out + used, cap - used, "%s%.*s", i > 0 ? "," : "",
                 ASN1_STRING_length(gn->d.dNSName),
                 (const char *)ASN1_STRING_get0_data(gn->d.dNSName));
    }
}

static void assert_cn(const X509_NAME *nm, const char *want)
{
    char cn[256];
    assert_int_equal(X509_NAME_get_text_by_NID(nm, NID_commonName, cn, sizeof cn),
                     (int)strlen(want));
    assert_string_equal(cn, want);
}

static void test_csr(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *names[] = {"mail.example.org", "imap.example.org"};
    char *csr = acme_csr(key, names, 2);
    assert_non_null(csr);
    assert_null(strpbrk(csr, "+/=")); /* base64url, no padding */
    unsigned char der[4096];
    long n = b64url_decode(csr, der, sizeof der);
    assert_true(n > 0);
    const unsigned char *p = der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, n);
    assert_non_null(req);
    assert_ptr_equal(p, der + n);
    assert_int_equal(X509_REQ_verify(req, key), 1);
    EVP_PKEY *other = acme_key_new();
    assert_int_not_equal(X509_REQ_verify(req, other), 1);
    EVP_PKEY_free(other);
    assert_int_equal(X509_REQ_get_signature_nid(req), NID_ecdsa_with_SHA256);
    assert_cn(X509_REQ_get_subject_name(req), "mail.example.org");

    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    assert_non_null(exts);
    GENERAL_NAMES *gens = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
    assert_non_null(gens);
    char list[512];
    dns_list(gens, list, sizeof list);
    assert_string_equal(list, "mail.example.org,imap.example.org");
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    free(csr);

    assert_null(acme_csr(key, names, 0));
    const char *bad[] = {"two words.example"};
    assert_null(acme_csr(key, bad, 1));
    EVP_PKEY_free(key);
}

static void assert_lifetime(X509 *cert, int days)
{
    time_t nb = 0, na = 0;
    time_t now = time(NULL);
    assert_int_equal(acme_cert_times(cert, &nb, &na), 0);
    assert_int_equal(na - nb, (time_t)days * 86400);
    assert_true(nb <= now - 3600 + 5 && nb >= now - 3600 - 60);
    /* The same times OpenSSL compares against. */
    assert_int_equal(X509_cmp_time(X509_get0_notBefore(cert), &now), -1);
    time_t before = nb - 1, at = nb + 1;
    assert_int_equal(X509_cmp_time(X509_get0_notBefore(cert), &before), 1);
    assert_int_equal(X509_cmp_time(X509_get0_notBefore(cert), &at), -1);
}

static void test_alpn_cert(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *keyauth = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.thumbprint-here";
    X509 *cert = acme_alpn_cert(key, "mail.example.org", keyauth);
    assert_non_null(cert);
    assert_int_equal(X509_verify(cert, key), 1);
    assert_int_equal(X509_get_version(cert), X509_VERSION_3);
    assert_cn(X509_get_subject_name(cert), "mail.example.org");

    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    int at = X509_get_ext_by_OBJ(cert, oid, -1);
    assert_true(at >= 0);
    assert_int_equal(X509_get_ext_by_OBJ(cert, oid, at), -1); /* only once */
    ASN1_OBJECT_free(oid);
    X509_EXTENSION *ext = X509_get_ext(cert, at);
    assert_int_equal(X509_EXTENSION_get_critical(ext), 1);
    ASN1_OCTET_STRING *value = X509_EXTENSION_get_data(ext);
    const unsigned char *p = ASN1_STRING_get0_data(value);
    long len = ASN1_STRING_length(value);
    assert_int_equal(len, 34); /* 04 20 + 32 bytes */
    ASN1_OCTET_STRING *inner = d2i_ASN1_OCTET_STRING(NULL, &p, len);
    assert_non_null(inner);
    assert_ptr_equal(p, ASN1_STRING_get0_data(value) + len);
    unsigned char md[32];
    assert_int_equal(EVP_Digest(keyauth, strlen(keyauth), md, NULL, EVP_sha256(), NULL), 1);
    assert_int_equal(ASN1_STRING_length(inner), 32);
    assert_memory_equal(ASN1_STRING_get0_data(inner), md, 32);
    ASN1_OCTET_STRING_free(inner);

    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    char list[512];
    dns_list(gens, list, sizeof list);
    assert_string_equal(list, "mail.example.org");
    GENERAL_NAMES_free(gens);
    assert_lifetime(cert, 7);
    X509_free(cert);
    EVP_PKEY_free(key);
}

static void test_selfsigned_cert(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *names[] = {"mail.example.org", "smtp.example.org", "imap.example.org"};
    X509 *cert = acme_selfsigned_cert(key, names, 3, 30);
    assert_non_null(cert);
    assert_int_equal(X509_verify(cert, key), 1);
    assert_int_equal(X509_check_issued(cert, cert), X509_V_OK);
    assert_cn(X509_get_subject_name(cert), "mail.example.org");
    assert_true(acme_cert_covers(cert, names, 3));
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    char list[512];
    dns_list(gens, list, sizeof list);
    assert_string_equal(list, "mail.example.org,smtp.example.org,imap.example.org");
    GENERAL_NAMES_free(gens);
    assert_lifetime(cert, 30);
    /* Two certificates get different serial numbers. */
    X509 *again = acme_selfsigned_cert(key, names, 1, 1);
    assert_non_null(again);
    assert_lifetime(again, 1);
    assert_int_not_equal(
        ASN1_INTEGER_cmp(X509_get0_serialNumber(cert), X509_get0_serialNumber(again)), 0);
    X509_free(again);
    X509_free(cert);
    assert_null(acme_selfsigned_cert(key, names, 3, 0));
    EVP_PKEY_free(key);
}

/* A names[0] too long for a CN still gets a certificate: SAN only. */
static void test_long_name_has_no_cn(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *names[] = {"a-label-that-is-long-enough.to-exceed-the-cn-limit.example.org"
                           ".example"};
    assert_true(strlen(names[0]) > 64);
    X509 *cert = acme_selfsigned_cert(key, names, 1, 1);
    assert_non_null(cert);
    assert_int_equal(X509_NAME_entry_count(X509_get_subject_name(cert)), 0);
    assert_true(acme_cert_covers(cert, names, 1));
    X509_free(cert);
    EVP_PKEY_free(key);
}

static void test_cert_covers(void **state)
{
    (void)state;
    EVP_PKEY *key = acme_key_new();
    const char *names[] = {"mail.example.org", "imap.example.org"};
    X509 *cert = acme_selfsigned_cert(key, names, 2, 1);
    const char *reordered[] = {"IMAP.example.org", "Mail.Example.Org"};
    const char *repeated[] = {"imap.example.org", "mail.example.org", "imap.example.org"};
    const char *subset[] = {"mail.example.org"};
    const char *superset[] = {"mail.example.org", "imap.example.org", "pop.example.org"};
    const char *other[] = {"mail.example.org", "imap.example.com"};
    const char *prefix[] = {"mail.example.or", "imap.example.org"};
    assert_true(acme_cert_covers(cert, names, 2));
    assert_true(acme_cert_covers(cert, reordered, 2));
    assert_true(acme_cert_covers(cert, repeated, 3));
    assert_false(acme_cert_covers(cert, subset, 1));
    assert_false(acme_cert_covers(cert, superset, 3));
    assert_false(acme_cert_covers(cert, other, 2));
    assert_false(acme_cert_covers(cert, prefix, 2));
    assert_false(acme_cert_covers(cert, names, 0));
    X509_free(cert);

    /* A certificate without a subjectAltName covers nothing. */
    X509 *bare = X509_new();
    assert_int_equal(X509_set_pubkey(bare, key), 1);
    assert_true(X509_sign(bare, key, EVP_sha256()) > 0);
    assert_false(acme_cert_covers(bare, subset, 1));
    X509_free(bare);
    EVP_PKEY_free(key);
}

static void test_file_write(void **state)
{
    const char *dir = *state;
    char path[4200], err[512];
    snprintf(path, sizeof path, "%s/account.key", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("the old content, longer than the new one\n", f);
    fclose(f);
    assert_int_equal(chmod(path, 0644), 0);

    err[0] = '\0';
    assert_int_equal(acme_file_write(path, "new\n", 4, err, sizeof err), 0);
    char *text = read_text(path);
    assert_string_equal(text, "new\n");
    free(text);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(count_entries(dir), 1); /* no temporary file left */

    /* A new file; an empty one. */
    snprintf(path, sizeof path, "%s/empty", dir);
    assert_int_equal(acme_file_write(path, "", 0, err, sizeof err), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(count_entries(dir), 2);
}

static void test_file_write_errors(void **state)
{
    const char *dir = *state;
    char path[4200], err[512];
    snprintf(path, sizeof path, "%s/no-such-dir/cert.pem", dir);
    err[0] = '\0';
    errno = 0;
    assert_int_equal(acme_file_write(path, "x", 1, err, sizeof err), -1);
    assert_int_equal(errno, ENOENT);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "No such file or directory"));
    assert_int_equal(count_entries(dir), 0);

    /* Renaming over a directory fails, and the temporary file goes. */
    snprintf(path, sizeof path, "%s/sub", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    err[0] = '\0';
    assert_int_equal(acme_file_write(path, "x", 1, err, sizeof err), -1);
    assert_int_equal(errno, EISDIR);
    assert_non_null(strstr(err, "cannot rename"));
    assert_int_equal(count_entries(dir), 1);
    assert_int_equal(rmdir(path), 0);
}

static void write_key_file(const char *path, EVP_PKEY *key)
{
    char *pem = NULL;
    size_t len = 0;
    char err[512];
    assert_int_equal(acme_key_pem(key, &pem, &len), 0);
    assert_int_equal(len, strlen(pem));
    assert_int_equal(acme_file_write(path, pem, len, err, sizeof err), 0);
    free(pem);
}

static void test_key_round_trip(void **state)
{
    const char *dir = *state;
    char path[4200], err[512] = "";
    snprintf(path, sizeof path, "%s/account.key", dir);
    EVP_PKEY *key = acme_key_new();
    char *pem = NULL;
    size_t len = 0;
    assert_int_equal(acme_key_pem(key, &pem, &len), 0);
    assert_int_equal(strncmp(pem, "-----BEGIN PRIVATE KEY-----\n", 28), 0); /* PKCS#8 */
    free(pem);
    write_key_file(path, key);

    EVP_PKEY *loaded = acme_key_load(path, err, sizeof err);
    assert_non_null(loaded);
    assert_int_equal(EVP_PKEY_eq(key, loaded), 1);
    /* The private half came back too: a JWS by the loaded key verifies with
     * the original. */
    char *jws = acme_jws(loaded, NULL, "n", "https://ca.test/", "{}");
    struct jws_parts p;
    jws_open(key, jws, &p);
    jws_close(&p);
    free(jws);
    char *a = acme_thumbprint(key), *b = acme_thumbprint(loaded);
    assert_string_equal(a, b);
    free(a);
    free(b);
    EVP_PKEY_free(loaded);
    EVP_PKEY_free(key);
}

static void assert_load_refused(const char *path, const char *reason)
{
    char err[512] = "";
    assert_null(acme_key_load(path, err, sizeof err));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, reason));
    assert_null(strchr(err, '\n'));
}

static void test_key_load_refusals(void **state)
{
    const char *dir = *state;
    char path[4200], err[512];
    snprintf(path, sizeof path, "%s/rsa.key", dir);
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    assert_non_null(rsa);
    write_key_file(path, rsa);
    EVP_PKEY_free(rsa);
    assert_load_refused(path, "not an ECDSA P-256 key");

    snprintf(path, sizeof path, "%s/p384.key", dir);
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    write_key_file(path, p384);
    EVP_PKEY_free(p384);
    assert_load_refused(path, "not an ECDSA P-256 key");

    snprintf(path, sizeof path, "%s/garbage.key", dir);
    assert_int_equal(acme_file_write(path, "not a key\n", 10, err, sizeof err), 0);
    assert_load_refused(path, "no unencrypted PEM private key");

    /* An encrypted key fails instead of asking for a passphrase. */
    snprintf(path, sizeof path, "%s/encrypted.key", dir);
    EVP_PKEY *key = acme_key_new();
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PKCS8PrivateKey(f, key, EVP_aes_128_cbc(), "secret", 6, NULL, NULL),
                     1);
    fclose(f);
    EVP_PKEY_free(key);
    assert_load_refused(path, "no unencrypted PEM private key");

    snprintf(path, sizeof path, "%s/missing.key", dir);
    errno = 0;
    assert_load_refused(path, "does not exist");
    errno = 0;
    assert_null(acme_key_load(path, err, sizeof err));
    assert_int_equal(errno, ENOENT);
    assert_string_equal(err + strlen(path), ": does not exist");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_jwk_shape_and_point),
        cmocka_unit_test(test_jwk_pads_short_coordinates),
        cmocka_unit_test(test_jwk_refuses_other_keys),
        cmocka_unit_test(test_thumbprint),
        cmocka_unit_test(test_jws_with_jwk),
        cmocka_unit_test(test_jws_with_kid),
        cmocka_unit_test(test_jws_post_as_get),
        cmocka_unit_test(test_jws_escapes_header_strings),
        cmocka_unit_test(test_csr),
        cmocka_unit_test(test_alpn_cert),
        cmocka_unit_test(test_selfsigned_cert),
        cmocka_unit_test(test_long_name_has_no_cn),
        cmocka_unit_test(test_cert_covers),
        cmocka_unit_test_setup_teardown(test_file_write, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_file_write_errors, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_key_round_trip, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_key_load_refusals, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
