#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "client_table.h"

#define NO_ENTRY         (-1)
#define IPV4_MAPPED_BITS 96

struct client_entry {
    uint8_t key[16];
    unsigned active; /* open connections */
    double tokens;   /* connections it may still open now */
    double last;     /* when tokens was last brought up to date */
    int next;        /* next entry in the same bucket, or in the free list */
    bool used;
};

struct client_table {
    struct client_entry *entries;
    size_t capacity;
    int *buckets; /* heads of the chains, nbuckets a power of two */
    size_t nbuckets;
    int free_list;
    size_t hand; /* where the eviction scan goes on from */
    unsigned max_per_client;
    unsigned rate;
    uint64_t seed;
    struct client_prefix *exceptions;
    size_t nexceptions;
};

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
/* 64:ff9b::/96 (RFC 6052): IPv4 clients through a NAT64/SIIT translator. */
static const uint8_t nat64_prefix[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};

/* The 16-byte form of an address; false for families other than IPv4/6. */
static bool full_address(const struct sockaddr *peer, uint8_t out[16])
{
    if (peer->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)peer;
        memcpy(out, v4_mapped_prefix, 12);
        memcpy(out + 12, &in->sin_addr, 4);
        return true;
    }
    if (peer->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr, 16);
        return true;
    }
    return false;
}

/* What is counted: an IPv4 address whole (also one translated into
 * 64:ff9b::/96, where every IPv4 client would otherwise share one /64), an
 * IPv6 address by its /64. */
static void counted_key(const uint8_t addr[16], uint8_t key[16])
{
    memcpy(key, addr, 16);
    if (memcmp(addr, v4_mapped_prefix, 12) != 0 && memcmp(addr, nat64_prefix, 12) != 0)
        memset(key + 8, 0, 8);
}

static bool in_prefix(const uint8_t addr[16], const struct client_prefix *p)
{
    unsigned whole = p->bits / 8, rest = p->bits % 8;
    if (memcmp(addr, p->addr, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (addr[whole] & mask) == (p->addr[whole] & mask);
}

static size_t bucket_of(const struct client_table *t, const uint8_t key[16])
{
    uint64_t h = 0xcbf29ce484222325ULL ^ t->seed; /* FNV-1a, seeded */
    for (int i = 0; i < 16; i++) {
        h ^= key[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 29;
    return (size_t)(h & (t->nbuckets - 1));
}

bool client_prefix_match(const struct client_prefix *prefixes, size_t n,
                         const struct sockaddr *peer)
{
    uint8_t addr[16];
    if (!full_address(peer, addr))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (in_prefix(addr, &prefixes[i]))
            return true;
    }
    return false;
}

struct client_table *client_table_new(size_t capacity, unsigned max_per_client, unsigned rate,
                                      const struct client_prefix *exceptions, size_t nexceptions)
{
    struct client_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->capacity = capacity ? capacity : 1;
    t->nbuckets = 1;
    while (t->nbuckets < t->capacity)
        t->nbuckets <<= 1;
    t->entries = calloc(t->capacity, sizeof *t->entries);
    t->buckets = malloc(t->nbuckets * sizeof *t->buckets);
    if (!t->entries || !t->buckets ||
        client_table_set_limits(t, max_per_client, rate, exceptions, nexceptions) < 0) {
        client_table_free(t);
        return NULL;
    }
    for (size_t i = 0; i < t->nbuckets; i++)
        t->buckets[i] = NO_ENTRY;
    for (size_t i = 0; i < t->capacity; i++)
        t->entries[i].next = i + 1 < t->capacity ? (int)(i + 1) : NO_ENTRY;
    t->free_list = 0;
    if (getrandom(&t->seed, sizeof t->seed, GRND_NONBLOCK) != (ssize_t)sizeof t->seed)
        t->seed = (uint64_t)(uintptr_t)t ^ 0x9e3779b97f4a7c15ULL;
    return t;
}

int client_table_set_limits(struct client_table *t, unsigned max_per_client, unsigned rate,
                            const struct client_prefix *exceptions, size_t nexceptions)
{
    struct client_prefix *copy = NULL;
    if (nexceptions) {
        copy = calloc(nexceptions, sizeof *copy);
        if (!copy)
            return -1;
        memcpy(copy, exceptions, nexceptions * sizeof *exceptions);
    }
    free(t->exceptions);
    t->exceptions = copy;
    t->nexceptions = nexceptions;
    t->max_per_client = max_per_client;
    t->rate = rate;
    return 0;
}

void client_table_free(struct client_table *t)
{
    if (!t)
        return;
    free(t->entries);
    free(t->buckets);
    free(t->exceptions);
    free(t);
}

static int find(const struct client_table *t, const uint8_t key[16])
{
    for (int i = t->buckets[bucket_of(t, key)]; i != NO_ENTRY; i = t->entries[i].next)
        if (memcmp(t->entries[i].key, key, 16) == 0)
            return i;
    return NO_ENTRY;
}

static void unlink_entry(struct client_table *t, int index)
{
    int *link = &t->buckets[bucket_of(t, t->entries[index].key)];
    while (*link != index)
        link = &t->entries[*link].next;
    *link = t->entries[index].next;
    t->entries[index].used = false;
}

/* Entries the eviction scan looks at before it settles for the oldest idle
 * one seen: a new address costs a bounded amount of work, not the table. */
#define EVICTION_SAMPLE 64

/* A free entry, or else an entry with no open connection: the first one
 * whose bucket has refilled (forgetting it changes nothing), or the oldest
 * of the idle ones among the next EVICTION_SAMPLE (a clock hand moves on
 * through the table). NO_ENTRY when every entry has connections open. */
static int take_entry(struct client_table *t, double now)
{
    if (t->free_list != NO_ENTRY) {
        int i = t->free_list;
        t->free_list = t->entries[i].next;
        return i;
    }
    int oldest = NO_ENTRY;
    for (size_t seen = 0; seen < t->capacity; seen++) {
        size_t i = t->hand;
        t->hand = (t->hand + 1) % t->capacity;
        const struct client_entry *e = &t->entries[i];
        if (e->active != 0)
            continue;
        if (!t->rate || e->tokens + (now - e->last) * t->rate >= t->rate) {
            oldest = (int)i;
            break;
        }
        if (oldest == NO_ENTRY || e->last < t->entries[oldest].last)
            oldest = (int)i;
        if (seen >= EVICTION_SAMPLE)
            break;
    }
    if (oldest != NO_ENTRY)
        unlink_entry(t, oldest);
    return oldest;
}

enum client_verdict client_table_admit(struct client_table *t, const struct sockaddr *peer,
                                       double now, int *slot)
{
    uint8_t addr[16], key[16];
    *slot = NO_ENTRY;
    if ((!t->max_per_client && !t->rate) || !full_address(peer, addr))
        return CLIENT_ADMITTED;
    for (size_t i = 0; i < t->nexceptions; i++)
        if (in_prefix(addr, &t->exceptions[i]))
            return CLIENT_ADMITTED;
    counted_key(addr, key);
    int i = find(t, key);
    if (i == NO_ENTRY) {
        i = take_entry(t, now);
        if (i == NO_ENTRY)
            return CLIENT_ADMITTED; /* more addresses than capacity: cannot count */
        struct client_entry *e = &t->entries[i];
        memcpy(e->key, key, 16);
        e->active = 0;
        e->tokens = t->rate;
        e->last = now;
        e->used = true;
        size_t b = bucket_of(t, key);
        e->next = t->buckets[b];
        t->buckets[b] = i;
    }
    struct client_entry *e = &t->entries[i];
    if (t->rate) {
        double elapsed = now > e->last ? now - e->last : 0;
        e->tokens += elapsed * t->rate;
        if (e->tokens > t->rate)
            e->tokens = t->rate;
    }
    e->last = now;
    if (t->max_per_client && e->active >= t->max_per_client)
        return CLIENT_TOO_MANY;
    if (t->rate && e->tokens < 1.0)
        return CLIENT_TOO_FAST;
    if (t->rate)
        e->tokens -= 1.0;
    e->active++;
    *slot = i;
    return CLIENT_ADMITTED;
}

void client_table_release(struct client_table *t, int slot)
{
    if (slot < 0 || (size_t)slot >= t->capacity)
        return;
    struct client_entry *e = &t->entries[slot];
    if (e->used && e->active > 0)
        e->active--;
}

unsigned client_table_count(const struct client_table *t, const struct sockaddr *peer)
{
    uint8_t addr[16], key[16];
    if (!full_address(peer, addr))
        return 0;
    counted_key(addr, key);
    int i = find(t, key);
    return i == NO_ENTRY ? 0 : t->entries[i].active;
}

int client_prefix_parse(const char *text, struct client_prefix *out)
{
    char host[64];
    const char *slash = strchr(text, '/');
    size_t n = slash ? (size_t)(slash - text) : strlen(text);
    if (n == 0 || n >= sizeof host)
        return -1;
    memcpy(host, text, n);
    host[n] = '\0';
    unsigned max_bits;
    struct in_addr v4;
    if (inet_pton(AF_INET, host, &v4) == 1) {
        memcpy(out->addr, v4_mapped_prefix, 12);
        memcpy(out->addr + 12, &v4, 4);
        max_bits = 32;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        max_bits = 128;
    } else {
        return -1;
    }
    unsigned bits = max_bits;
    if (slash) {
        char *end;
        unsigned long v = strtoul(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end != '\0' || v > max_bits)
            return -1;
        bits = (unsigned)v;
    }
    out->bits = max_bits == 32 ? IPV4_MAPPED_BITS + bits : bits;
    return 0;
}
