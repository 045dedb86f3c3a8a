#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "acme_crypto.h"

/* P-256 coordinates and ES256 signature halves are 32 bytes. */
#define P256_BYTES 32
/* RFC 5280 ub-common-name: a longer names[0] gets no CN. */
#define CN_MAX 64
/* The most days a certificate sallyport makes itself may last. */
#define DAYS_MAX 36500
/* id-pe-acmeIdentifier (RFC 8737 6.1); OpenSSL 3.0 has no NID for it. */
#define OID_ACME_IDENTIFIER "1.3.6.1.5.5.7.1.31"

/* Writes a one-line reason into err (if there is room) and keeps errno. */
__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt,
                                                          ...)
{
    int saved = errno;
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    errno = saved;
}

/* Concatenates parts[0..n) into one malloc'd string, or NULL. */
static char *concat(const char *const *parts, size_t n)
{
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(parts[i]);
        if (l > SIZE_MAX - total)
            return NULL;
        total += l;
    }
    char *out = malloc(total);
    if (out == NULL)
        return NULL;
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(parts[i]);
        memcpy(p, parts[i], l);
        p += l;
    }
    *p = '\0';
    return out;
}

/* s as a quoted JSON string (", \ and control bytes escaped), malloc'd. */
static char *json_quote(const char *s)
{
    size_t len = strlen(s);
    if (len > (SIZE_MAX - 3) / 6)
        return NULL;
    char *out = malloc(len * 6 + 3);
    if (out == NULL)
        return NULL;
    char *p = out;
    *p++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\') {
            *p++ = '\\';
            *p++ = (char)*c;
        } else if (*c < 0x20) {
            p += sprintf(p, "\\u%04x", *c);
        } else {
            *p++ = (char)*c;
        }
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

/* True for an EC key on P-256. */
static bool key_is_p256(EVP_PKEY *key)
{
    char group[64];
    size_t glen = 0;
    if (key == NULL || !EVP_PKEY_is_a(key, "EC"))
        return false;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                       &glen) != 1)
        return false;
    return strcmp(group, SN_X9_62_prime256v1) == 0;
}

/* True for a name as the header defines it: 1 to ACME_NAME_MAX printable
 * ASCII characters, no spaces. */
static bool name_ok(const char *name)
{
    if (name == NULL)
        return false;
    size_t len = strlen(name);
    if (len == 0 || len > ACME_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] <= 0x20 || name[i] >= 0x7f)
            return false;
    return true;
}

static bool names_ok(const char *const *names, size_t n)
{
    if (names == NULL || n == 0 || n > ACME_NAMES_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!name_ok(names[i]))
            return false;
    return true;
}

EVP_PKEY *acme_key_new(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* A PEM passphrase callback that has none: an encrypted key fails to load
 * instead of prompting on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

EVP_PKEY *acme_key_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        if (errno == ENOENT)
            set_err(err, errlen, "%s: does not exist", path);
        else
            set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
    int saved = errno;
    fclose(f);
    if (key == NULL) {
        ERR_clear_error();
        errno = saved == 0 ? EINVAL : saved;
        if (errno == EISDIR)
            set_err(err, errlen, "%s: is a directory, not a key file", path);
        else
            set_err(err, errlen, "%s: holds no unencrypted PEM private key", path);
        return NULL;
    }
    if (!key_is_p256(key)) {
        const char *type = EVP_PKEY_get0_type_name(key);
        set_err(err, errlen, "%s: not an ECDSA P-256 key (it is %s, %d bits)", path,
                type != NULL ? type : "of an unknown type", EVP_PKEY_get_bits(key));
        EVP_PKEY_free(key);
        ERR_clear_error();
        errno = EINVAL;
        return NULL;
    }
    return key;
}

int acme_key_pem(EVP_PKEY *key, char **pem, size_t *len)
{
    if (key == NULL || pem == NULL || len == NULL)
        return -1;
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return -1;
    int rc = -1;
    char *data = NULL;
    if (PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) == 1) {
        long n = BIO_get_mem_data(bio, &data);
        char *out = n > 0 ? malloc((size_t)n + 1) : NULL;
        if (out != NULL) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
            *pem = out;
            *len = (size_t)n;
            rc = 0;
        }
    }
    BIO_free(bio);
    return rc;
}

/* Splits path into its directory ("." or "/" when it has none) and the
 * name of a temporary file beside it, "<dir>/.<base>.XXXXXX" (a template
 * for mkostemp). Returns 0, or -1 with errno. */
static int temp_name(const char *path, char *dir, size_t dirlen, char *tmp, size_t tmplen)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash != NULL ? slash + 1 : path;
    int dn;
    if (slash == NULL)
        dn = snprintf(dir, dirlen, ".");
    else if (slash == path)
        dn = snprintf(dir, dirlen, "/");
    else
        dn = snprintf(dir, dirlen, "%.*s", (int)(slash - path), path);
    if (*base == '\0') {
        errno = EISDIR;
        return -1;
    }
    int tn = snprintf(tmp, tmplen, "%s/.%s.XXXXXX", dir, base);
    if (dn < 0 || (size_t)dn >= dirlen || tn < 0 || (size_t)tn >= tmplen) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* Writes all of data to fd. Returns 0 or -1 with errno. */
static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* fsync of a directory, so that a rename in it survives a crash. A file
 * system that cannot sync directories (EINVAL) is not an error. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    if (rc < 0 && errno == EINVAL)
        rc = 0;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Gives the new file fd its mode, data and fsync, and closes it. Returns
 * NULL, or the step that failed (with errno). */
static const char *fill_temp(int fd, const void *data, size_t len)
{
    const char *step = NULL;
    if (fchmod(fd, 0600) < 0)
        step = "cannot set mode 0600";
    else if (write_all(fd, data, len) < 0)
        step = "cannot write";
    else if (fsync(fd) < 0)
        step = "cannot sync";
    int saved = errno;
    if (close(fd) < 0 && step == NULL)
        return "cannot close";
    errno = saved;
    return step;
}

int acme_file_write(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    char dir[PATH_MAX], tmp[PATH_MAX];
    if (path == NULL || (data == NULL && len > 0)) {
        errno = EINVAL;
        set_err(err, errlen, "acme_file_write: no path or no data");
        return -1;
    }
    if (temp_name(path, dir, sizeof dir, tmp, sizeof tmp) < 0) {
        set_err(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create a temporary file in %s: %s", path, dir,
                strerror(errno));
        return -1;
    }
    const char *step = fill_temp(fd, data, len);
    if (step == NULL) {
        if (rename(tmp, path) < 0) {
            step = "cannot rename over it";
        } else if (sync_dir(dir) < 0) {
            set_err(err, errlen, "%s: written, but cannot sync directory %s: %s", path, dir,
                    strerror(errno));
            return -1;
        } else {
            return 0;
        }
    }
    int saved = errno;
    unlink(tmp);
    errno = saved;
    set_err(err, errlen, "%s: %s (temporary file %s): %s", path, step, tmp, strerror(errno));
    return -1;
}

char *acme_b64url(const unsigned char *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if (data == NULL && len > 0)
        return NULL;
    if (len > (SIZE_MAX - 4) / 4 * 3)
        return NULL;
    char *out = malloc(len / 3 * 4 + 4);
    if (out == NULL)
        return NULL;
    char *p = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *p++ = alphabet[v >> 18 & 63];
        *p++ = alphabet[v >> 12 & 63];
        *p++ = alphabet[v >> 6 & 63];
        *p++ = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        *p++ = alphabet[v >> 18 & 63];
        *p++ = alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
        *p++ = alphabet[v >> 18 & 63];
        *p++ = alphabet[v >> 12 & 63];
        *p++ = alphabet[v >> 6 & 63];
    }
    *p = '\0';
    return out;
}

/* One public coordinate (OSSL_PKEY_PARAM_EC_PUB_X or _Y) of a P-256 key as
 * b64url of its 32 bytes, left-padded. */
static char *coordinate_b64url(EVP_PKEY *key, const char *param)
{
    BIGNUM *bn = NULL;
    unsigned char buf[P256_BYTES];
    char *out = NULL;
    if (EVP_PKEY_get_bn_param(key, param, &bn) == 1 && BN_bn2binpad(bn, buf, sizeof buf) >= 0)
        out = acme_b64url(buf, sizeof buf);
    BN_free(bn);
    return out;
}

char *acme_jwk(EVP_PKEY *key)
{
    if (!key_is_p256(key))
        return NULL;
    char *x = coordinate_b64url(key, OSSL_PKEY_PARAM_EC_PUB_X);
    char *y = coordinate_b64url(key, OSSL_PKEY_PARAM_EC_PUB_Y);
    char *out = NULL;
    if (x != NULL && y != NULL) {
        const char *parts[] = {"{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"", x, "\",\"y\":\"", y,
                               "\"}"};
        out = concat(parts, sizeof parts / sizeof parts[0]);
    }
    free(x);
    free(y);
    return out;
}

/* b64url(SHA-256(text)). */
static char *sha256_b64url(const char *text)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL) != 1)
        return NULL;
    return acme_b64url(md, mdlen);
}

char *acme_thumbprint(EVP_PKEY *key)
{
    char *jwk = acme_jwk(key);
    if (jwk == NULL)
        return NULL;
    char *out = sha256_b64url(jwk);
    free(jwk);
    return out;
}

/* ES256 over input: the raw r||s JWS wants (RFC 7518 3.4), not OpenSSL's
 * DER ECDSA-Sig-Value. Returns 0 or -1. */
static int es256_sign(EVP_PKEY *key, const char *input, unsigned char out[2 * P256_BYTES])
{
    unsigned char der[128];
    size_t derlen = 0;
    int rc = -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -1;
    if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(ctx, NULL, &derlen, (const unsigned char *)input, strlen(input)) == 1 &&
        derlen <= sizeof der &&
        EVP_DigestSign(ctx, der, &derlen, (const unsigned char *)input, strlen(input)) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
        if (sig != NULL) {
            const BIGNUM *r = NULL, *s = NULL;
            ECDSA_SIG_get0(sig, &r, &s);
            if (BN_bn2binpad(r, out, P256_BYTES) == P256_BYTES &&
                BN_bn2binpad(s, out + P256_BYTES, P256_BYTES) == P256_BYTES)
                rc = 0;
            ECDSA_SIG_free(sig);
        }
    }
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* The protected header text of acme_jws, or NULL. */
static char *jws_header(EVP_PKEY *key, const char *kid, const char *nonce, const char *url)
{
    char *who = kid != NULL ? json_quote(kid) : acme_jwk(key);
    char *qnonce = json_quote(nonce);
    char *qurl = json_quote(url);
    char *out = NULL;
    if (who != NULL && qnonce != NULL && qurl != NULL) {
        const char *parts[] = {"{\"alg\":\"ES256\",\"",
                               kid != NULL ? "kid" : "jwk",
                               "\":",
                               who,
                               ",\"nonce\":",
                               qnonce,
                               ",\"url\":",
                               qurl,
                               "}"};
        out = concat(parts, sizeof parts / sizeof parts[0]);
    }
    free(who);
    free(qnonce);
    free(qurl);
    return out;
}

char *acme_jws(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload)
{
    if (!key_is_p256(key) || nonce == NULL || url == NULL || payload == NULL)
        return NULL;
    char *header = jws_header(key, kid, nonce, url);
    char *prot = header != NULL ? acme_b64url((const unsigned char *)header, strlen(header)) : NULL;
    char *body = acme_b64url((const unsigned char *)payload, strlen(payload));
    char *input = NULL, *sig = NULL, *out = NULL;
    unsigned char raw[2 * P256_BYTES];
    if (prot != NULL && body != NULL) {
        const char *parts[] = {prot, ".", body};
        input = concat(parts, 3);
    }
    if (input != NULL && es256_sign(key, input, raw) == 0)
        sig = acme_b64url(raw, sizeof raw);
    if (sig != NULL) {
        const char *parts[] = {"{\"protected\":\"",
                               prot,
                               "\",\"payload\":\"",
                               body,
                               "\",\"signature\":\"",
                               sig,
                               "\"}"};
        out = concat(parts, sizeof parts / sizeof parts[0]);
    }
    free(header);
    free(prot);
    free(body);
    free(input);
    free(sig);
    return out;
}

/* The subject (and issuer) name: CN = name when it fits one, else empty. */
static X509_NAME *subject_for(const char *name)
{
    X509_NAME *nm = X509_NAME_new();
    if (nm == NULL || strlen(name) > CN_MAX)
        return nm;
    if (X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1,
                                   0) != 1) {
        X509_NAME_free(nm);
        return NULL;
    }
    return nm;
}

/* A GENERAL_NAMES with one dNSName per name, or NULL. */
static GENERAL_NAMES *dns_names(const char *const *names, size_t n)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    for (size_t i = 0; gens != NULL && i < n; i++) {
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        if (gn == NULL || ia5 == NULL || ASN1_STRING_set(ia5, names[i], -1) != 1) {
            GENERAL_NAME_free(gn);
            ASN1_IA5STRING_free(ia5);
            GENERAL_NAMES_free(gens);
            return NULL;
        }
        GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
        if (sk_GENERAL_NAME_push(gens, gn) <= 0) {
            GENERAL_NAME_free(gn);
            GENERAL_NAMES_free(gens);
            return NULL;
        }
    }
    return gens;
}

/* The subjectAltName extension for names, or NULL. */
static X509_EXTENSION *san_extension(const char *const *names, size_t n)
{
    GENERAL_NAMES *gens = dns_names(names, n);
    if (gens == NULL)
        return NULL;
    X509_EXTENSION *ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, gens);
    GENERAL_NAMES_free(gens);
    return ext;
}

/* Adds subject and subjectAltName to req. Returns 0 or -1. */
static int csr_fill(X509_REQ *req, EVP_PKEY *key, const char *const *names, size_t n)
{
    int rc = -1;
    X509_NAME *subject = subject_for(names[0]);
    X509_EXTENSION *san = san_extension(names, n);
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    if (subject != NULL && san != NULL && exts != NULL && sk_X509_EXTENSION_push(exts, san) > 0) {
        san = NULL; /* now in exts */
        if (X509_REQ_set_version(req, X509_REQ_VERSION_1) == 1 &&
            X509_REQ_set_subject_name(req, subject) == 1 && X509_REQ_set_pubkey(req, key) == 1 &&
            X509_REQ_add_extensions(req, exts) == 1)
            rc = 0;
    }
    X509_NAME_free(subject);
    X509_EXTENSION_free(san);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return rc;
}

char *acme_csr(EVP_PKEY *key, const char *const *names, size_t n)
{
    if (key == NULL || !names_ok(names, n))
        return NULL;
    X509_REQ *req = X509_REQ_new();
    if (req == NULL)
        return NULL;
    char *out = NULL;
    unsigned char *der = NULL;
    int derlen = -1;
    if (csr_fill(req, key, names, n) == 0 && X509_REQ_sign(req, key, EVP_sha256()) > 0)
        derlen = i2d_X509_REQ(req, &der);
    if (derlen > 0)
        out = acme_b64url(der, (size_t)derlen);
    OPENSSL_free(der);
    X509_REQ_free(req);
    return out;
}

/* A random positive 128-bit serial number for x. Returns 0 or -1. */
static int set_random_serial(X509 *x)
{
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof bytes) != 1)
        return -1;
    bytes[0] = (unsigned char)((bytes[0] & 0x7f) | 0x40); /* positive, 16 bytes long */
    BIGNUM *bn = BN_bin2bn(bytes, sizeof bytes, NULL);
    int rc = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL ? 0 : -1;
    BN_free(bn);
    return rc;
}

/* Version, serial, subject = issuer, validity [now-1h, now-1h+days] and
 * public key of a self-signed x. Returns 0 or -1. */
static int cert_fill(X509 *x, EVP_PKEY *key, const char *cn, int days)
{
    time_t now = time(NULL);
    X509_NAME *subject = subject_for(cn);
    int ok = subject != NULL && X509_set_version(x, X509_VERSION_3) == 1 &&
             set_random_serial(x) == 0 && X509_set_subject_name(x, subject) == 1 &&
             X509_set_issuer_name(x, subject) == 1 &&
             X509_time_adj_ex(X509_getm_notBefore(x), 0, -3600, &now) != NULL &&
             X509_time_adj_ex(X509_getm_notAfter(x), days, -3600, &now) != NULL &&
             X509_set_pubkey(x, key) == 1;
    X509_NAME_free(subject);
    return ok ? 0 : -1;
}

/* A self-signed certificate for names with `extra` (may be NULL) added.
 * Returns it or NULL. */
static X509 *cert_make(EVP_PKEY *key, const char *const *names, size_t n, int days,
                       X509_EXTENSION *extra)
{
    if (key == NULL || !names_ok(names, n) || days < 1 || days > DAYS_MAX)
        return NULL;
    X509 *x = X509_new();
    X509_EXTENSION *san = san_extension(names, n);
    bool ok = x != NULL && san != NULL && cert_fill(x, key, names[0], days) == 0 &&
              X509_add_ext(x, san, -1) == 1 && (extra == NULL || X509_add_ext(x, extra, -1) == 1) &&
              X509_sign(x, key, EVP_sha256()) > 0;
    X509_EXTENSION_free(san);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* The critical id-pe-acmeIdentifier extension holding
 * OCTET STRING (SHA-256(key_authorization)) (RFC 8737 3), or NULL. */
static X509_EXTENSION *acme_identifier_extension(const char *key_authorization)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(key_authorization, strlen(key_authorization), md, &mdlen, EVP_sha256(), NULL) !=
        1)
        return NULL;
    ASN1_OBJECT *oid = OBJ_txt2obj(OID_ACME_IDENTIFIER, 1);
    ASN1_OCTET_STRING *inner = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
    unsigned char *der = NULL;
    int derlen = -1;
    X509_EXTENSION *ext = NULL;
    if (oid != NULL && inner != NULL && value != NULL &&
        ASN1_OCTET_STRING_set(inner, md, (int)mdlen) == 1)
        derlen = i2d_ASN1_OCTET_STRING(inner, &der);
    /* The extension's extnValue is the DER of that OCTET STRING. */
    if (derlen > 0 && ASN1_OCTET_STRING_set(value, der, derlen) == 1)
        ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, value);
    OPENSSL_free(der);
    ASN1_OCTET_STRING_free(value);
    ASN1_OCTET_STRING_free(inner);
    ASN1_OBJECT_free(oid);
    return ext;
}

X509 *acme_alpn_cert(EVP_PKEY *key, const char *name, const char *key_authorization)
{
    if (key_authorization == NULL || !name_ok(name))
        return NULL;
    X509_EXTENSION *ext = acme_identifier_extension(key_authorization);
    if (ext == NULL)
        return NULL;
    const char *names[] = {name};
    X509 *x = cert_make(key, names, 1, 7, ext);
    X509_EXTENSION_free(ext);
    return x;
}

X509 *acme_selfsigned_cert(EVP_PKEY *key, const char *const *names, size_t n, int days)
{
    return cert_make(key, names, n, days, NULL);
}

/* An ASN1_TIME as time_t (UTC). Returns 0 or -1. */
static int asn1_to_time(const ASN1_TIME *t, time_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    time_t v = timegm(&tm);
    if (v == (time_t)-1)
        return -1;
    *out = v;
    return 0;
}

int acme_cert_times(X509 *cert, time_t *not_before, time_t *not_after)
{
    if (cert == NULL || not_before == NULL || not_after == NULL)
        return -1;
    time_t nb, na;
    if (asn1_to_time(X509_get0_notBefore(cert), &nb) < 0 ||
        asn1_to_time(X509_get0_notAfter(cert), &na) < 0)
        return -1;
    *not_before = nb;
    *not_after = na;
    return 0;
}

/* True if the dNSName gn equals name, ignoring ASCII case. */
static bool dns_equal(const GENERAL_NAME *gn, const char *name)
{
    if (gn->type != GEN_DNS)
        return false;
    const ASN1_IA5STRING *s = gn->d.dNSName;
    size_t len = (size_t)ASN1_STRING_length(s);
    return len == strlen(name) &&
           strncasecmp((const char *)ASN1_STRING_get0_data(s), name, len) == 0;
}

/* True if some dNSName in gens equals name. */
static bool gens_have(const GENERAL_NAMES *gens, const char *name)
{
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++)
        if (dns_equal(sk_GENERAL_NAME_value(gens, i), name))
            return true;
    return false;
}

bool acme_cert_covers(X509 *cert, const char *const *names, size_t n)
{
    if (cert == NULL || names == NULL || n == 0)
        return false;
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (gens == NULL)
        return false;
    bool ok = true;
    for (size_t i = 0; ok && i < n; i++)
        ok = names[i] != NULL && gens_have(gens, names[i]);
    for (int i = 0; ok && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type != GEN_DNS)
            continue;
        bool found = false;
        for (size_t j = 0; !found && j < n; j++)
            found = dns_equal(gn, names[j]);
        ok = found;
    }
    GENERAL_NAMES_free(gens);
    return ok;
}
