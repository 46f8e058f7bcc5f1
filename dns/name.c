/* dns/name.c: domain names as text and as wire (RFC 1035 3.1). Pure. */
#include "dns_internal.h"

static uint8_t lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

/* Letters, digits, '-' and '_' (service labels such as _25._tcp, RFC 6698 3). */
static bool host_char(uint8_t c)
{
    c = lower(c);
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

int dns_name_from_text(const char *text, size_t len, uint8_t *out)
{
    if (len > 0 && text[len - 1] == '.')
        len--;
    if (len == 0 || len > DNS_NAME_MAX)
        return -1;
    size_t o = 0;     /* next octet of out */
    size_t label = 0; /* where the current label's length octet is */
    out[o++] = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)text[i];
        if (c == '.') {
            size_t n = o - label - 1;
            if (n == 0)
                return -1;
            out[label] = (uint8_t)n;
            label = o;
            out[o++] = 0;
            continue;
        }
        if (!host_char(c) || o - label - 1 >= 63)
            return -1;
        out[o++] = lower(c);
    }
    size_t n = o - label - 1;
    if (n == 0)
        return -1;
    out[label] = (uint8_t)n;
    out[o++] = 0; /* the root */
    RM_ASSERT(o <= DNS_NAME_WIRE_MAX);
    return (int)o;
}

int dns_name_copy_lower(const uint8_t *wire, size_t len, uint8_t *out)
{
    size_t i = 0;
    while (i < len) {
        uint8_t n = wire[i];
        if (n > 63 || i + 1 + n > len || i + 1 + n > DNS_NAME_WIRE_MAX)
            return -1;
        out[i] = n;
        for (size_t k = 1; k <= n; k++)
            out[i + k] = lower(wire[i + k]);
        i += 1u + n;
        if (n == 0)
            return i == len ? (int)i : -1;
    }
    return -1; /* no root label */
}

int dns_name_to_text(const uint8_t *wire, size_t len, char *out, size_t cap)
{
    size_t i = 0;
    size_t o = 0;
    while (i < len) {
        uint8_t n = wire[i++];
        if (n == 0)
            return i == len ? (int)o : -1;
        if (n > 63 || i + n > len)
            return -1;
        if (o > 0) {
            if (o + 1 > cap)
                return -1;
            out[o++] = '.';
        }
        if (o + n > cap)
            return -1;
        for (size_t k = 0; k < n; k++) {
            uint8_t c = wire[i + k];
            if (!host_char(c))
                return -1;
            out[o++] = (char)lower(c);
        }
        i += n;
    }
    return -1;
}

bool dns_name_eq(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen != blen)
        return false;
    /* Length octets are <= 63, below 'A', so folding them is harmless. */
    for (size_t i = 0; i < alen; i++)
        if (lower(a[i]) != lower(b[i]))
            return false;
    return true;
}

uint64_t dns_name_hash(const uint8_t *name, size_t len, uint64_t seed)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= lower(name[i]);
        h *= 0x100000001b3ull;
    }
    return h;
}
