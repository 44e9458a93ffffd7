/*
 * cpu_triple: a deliberate triple fault (issue 10, item 1).
 *
 * The guest loads an empty IDT and executes ud2: #UD cannot be delivered (#GP for the IDT
 * limit), nor can that #GP (#DF), nor the #DF: the CPU shuts down. pyxen must end the domain
 * as a crash at once (`pyxen run` exit status 3), never spin until its timeout.
 *
 * Prints INFO cpu_triple_armed just before the fault; nothing after it may appear.
 */
#include "guest.h"

int guest_main(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) empty = { 0, 0 };

    info("cpu_triple_armed", "1");
    asm volatile("lidt %0\n\tud2" :: "m"(empty) : "memory");
    test_fail("cpu_triple.still_running", "the CPU went on after a triple fault");
    return 0;
}
