/*
 * Test-report convention (parsed by the Python test-suite; one console
 * write per line):
 *   TEST <name> PASS
 *   TEST <name> FAIL <what was expected and what came>
 *   INFO <key> <value...>
 *   RESULT <passed> <failed>      then SCHEDOP_shutdown(poweroff)
 */
#include "runtime.h"

unsigned tests_passed, tests_failed;

void test_pass(const char *name)
{
    tests_passed++;
    printf("TEST %s PASS\n", name);
}

static void vfail(const char *name, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* Keep the report on one line. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    tests_failed++;
    printf("TEST %s FAIL %s\n", name, msg);
}

void test_fail(const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(name, fmt, ap);
    va_end(ap);
}

bool check(const char *name, bool cond, const char *fmt, ...)
{
    if (cond) {
        test_pass(name);
        return true;
    }
    va_list ap;
    va_start(ap, fmt);
    vfail(name, fmt, ap);
    va_end(ap);
    return false;
}

bool check_eq(const char *name, long got, long expected)
{
    return check(name, got == expected, "expected %ld (%#lx) got %ld (%#lx)",
                 expected, expected, got, got);
}

bool check_range(const char *name, long got, long lo, long hi)
{
    return check(name, got >= lo && got <= hi, "expected %ld..%ld got %ld (%#lx)",
                 lo, hi, got, got);
}

void info(const char *key, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    printf("INFO %s %s\n", key, msg);
}

NORETURN void finish(void)
{
    printf("RESULT %u %u\n", tests_passed, tests_failed);
    shutdown(SHUTDOWN_poweroff);
}
