/*
 * Console output and a small printf: %d %i %u %x %X %p %s %c %% with the
 * l / ll / z length modifiers, field width, '-' and '0' flags, and precision
 * for %s. Every printf() call is one console write, so one line = one write.
 */
#include "runtime.h"

void console_write(const char *s, size_t len)
{
    if (boot.xen) {
        if (!hvc_console_write(s, len))
            HYPERVISOR_console_io(CONSOLEIO_write, (unsigned)len, s);
    } else {
        /* No Xen (e.g. bare QEMU with -debugcon stdio): port 0xe9. */
        for (size_t i = 0; i < len; i++)
            outb(0xe9, (uint8_t)s[i]);
    }
}

void puts_raw(const char *s) { console_write(s, strlen(s)); }

struct out { char *buf; size_t size, pos; };

static void emit(struct out *o, char c)
{
    if (o->pos + 1 < o->size)
        o->buf[o->pos] = c;
    o->pos++;
}

static void emit_num(struct out *o, unsigned long long v, unsigned base, bool upper,
                     bool neg, int width, bool zero, bool left, const char *prefix)
{
    char tmp[32];
    int n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    int plen = (int)strlen(prefix) + (neg ? 1 : 0);
    int pad = width - n - plen;
    if (!left && !zero)
        while (pad-- > 0) emit(o, ' ');
    if (neg) emit(o, '-');
    for (const char *p = prefix; *p; p++) emit(o, *p);
    if (!left && zero)
        while (pad-- > 0) emit(o, '0');
    while (n) emit(o, tmp[--n]);
    if (left)
        while (pad-- > 0) emit(o, ' ');
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') {
            emit(&o, *f);
            continue;
        }
        f++;
        bool zero = false, left = false, alt = false;
        for (;; f++) {
            if (*f == '0') zero = true;
            else if (*f == '-') left = true;
            else if (*f == '#') alt = true;
            else break;
        }
        int width = 0, prec = -1;
        if (*f == '*') { width = va_arg(ap, int); f++; }
        while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
        if (*f == '.') {
            f++;
            prec = 0;
            if (*f == '*') { prec = va_arg(ap, int); f++; }
            while (*f >= '0' && *f <= '9') prec = prec * 10 + (*f++ - '0');
        }
        int lng = 0;
        while (*f == 'l') { lng++; f++; }
        if (*f == 'z') { lng = 1; f++; }
        switch (*f) {
        case 'd': case 'i': {
            long long v = lng >= 2 ? va_arg(ap, long long) : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
            unsigned long long u = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
            emit_num(&o, u, 10, false, v < 0, width, zero, left, "");
            break;
        }
        case 'u': case 'x': case 'X': {
            unsigned long long v = lng >= 2 ? va_arg(ap, unsigned long long)
                                 : lng == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
            unsigned base = *f == 'u' ? 10 : 16;
            emit_num(&o, v, base, *f == 'X', false, width, zero, left, alt && base == 16 ? "0x" : "");
            break;
        }
        case 'p':
            emit_num(&o, (uintptr_t)va_arg(ap, void *), 16, false, false, width, zero, left, "0x");
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            int len = (int)strnlen(s, prec >= 0 ? (size_t)prec : (size_t)-1);
            int pad = width - len;
            if (!left) while (pad-- > 0) emit(&o, ' ');
            for (int i = 0; i < len; i++) emit(&o, s[i]);
            if (left) while (pad-- > 0) emit(&o, ' ');
            break;
        }
        case 'c':
            emit(&o, (char)va_arg(ap, int));
            break;
        case '%':
            emit(&o, '%');
            break;
        case '\0':
            f--;
            break;
        default:
            emit(&o, '%');
            emit(&o, *f);
        }
    }
    if (size)
        buf[o.pos < size ? o.pos : size - 1] = '\0';
    return (int)o.pos;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int printf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    size_t len = (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1;
    console_write(buf, len);
    return n;
}
