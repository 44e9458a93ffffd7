/* String/memory helpers and the kernel command-line parser. */
#include "runtime.h"

void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--) *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp < sp)
        while (n--) *dp++ = *sp++;
    else
        while (n--) dp[n] = sp[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] - y[i];
    return 0;
}

size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
size_t strnlen(const char *s, size_t max) { size_t n = 0; while (n < max && s[n]) n++; return n; }

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) { a++; b++; }
    return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i] || !a[i])
            return (uint8_t)a[i] - (uint8_t)b[i];
    }
    return 0;
}

char *strchr(const char *s, int c)
{
    for (; *s; s++)
        if (*s == (char)c)
            return (char *)s;
    return c ? NULL : (char *)s;
}

unsigned long strtoul(const char *s, const char **end, int base)
{
    unsigned long v = 0;
    if ((base == 0 || base == 16) && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        base = 16;
    } else if (base == 0) {
        base = 10;
    }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        if (d >= base) break;
        v = v * base + d;
    }
    if (end) *end = s;
    return v;
}

/* Words are separated by spaces; a word is "key=value" or "key". */
const char *cmdline_get(const char *key)
{
    static char value[256];
    const char *p = boot.cmdline ? boot.cmdline : "";
    size_t klen = strlen(key);

    while (*p) {
        while (*p == ' ') p++;
        const char *w = p;
        while (*p && *p != ' ') p++;
        size_t wlen = (size_t)(p - w);
        if (wlen >= klen && strncmp(w, key, klen) == 0 &&
            (wlen == klen || w[klen] == '=')) {
            size_t vlen = wlen == klen ? 0 : wlen - klen - 1;
            if (vlen >= sizeof(value)) vlen = sizeof(value) - 1;
            memcpy(value, w + klen + (wlen == klen ? 0 : 1), vlen);
            value[vlen] = '\0';
            return value;
        }
    }
    return NULL;
}

bool cmdline_has(const char *key) { return cmdline_get(key) != NULL; }

/* Unix seconds -> "YYYY-MM-DD HH:MM:SS" (UTC), integer-only civil date. */
void format_utc(uint64_t t, char *buf, size_t size)
{
    uint64_t days = t / 86400, rem = t % 86400;
    int64_t z = (int64_t)days + 719468;
    int64_t era = z / 146097;
    uint64_t doe = (uint64_t)(z - era * 146097);
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    uint64_t d = doy - (153 * mp + 2) / 5 + 1;
    uint64_t m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2)
        y++;
    snprintf(buf, size, "%04ld-%02lu-%02lu %02lu:%02lu:%02lu", (long)y, m, d,
             rem / 3600, (rem / 60) % 60, rem % 60);
}

/* "  123 ..." -> 123 and the rest; NULL if no number is there. */
const char *parse_uint(const char *s, unsigned long *v)
{
    while (*s == ' ')
        s++;
    if (*s < '0' || *s > '9')
        return NULL;
    const char *end;
    *v = strtoul(s, &end, 10);
    return end;
}
